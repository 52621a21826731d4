"""No orphans: killing a stage's top process ends its torchrun and workers before they write.

`kshot stage warmup --workers 2` runs `torchrun`, which runs two workers. A SIGKILL of the top
process alone (not its group, as a crashed pod's main process or an OOM kill would go) must end
the whole tree at once, so that no checkpoint appears after the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kshot.train import checkpoint as ckpt
from tests.conftest import TINY

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree from /proc (Linux)"
)


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, …
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.exists() else {}


def test_killing_the_top_process_ends_torchrun_and_its_workers(
    digits_split: str, tmp_path: Path
) -> None:
    """SIGKILL of the top `kshot stage warmup --workers 2` process: within two seconds torchrun
    and both workers are gone, and the checkpoint folder does not change afterwards."""
    config = tmp_path / "long.yaml"
    config.write_text(
        yaml.safe_dump({**TINY, "epochs": 40, "warmup_epochs": 40, "checkpoint_every_steps": 2})
    )
    out = tmp_path / "warm"
    command = [sys.executable, "-m", "kshot.cli", "stage", "warmup", "--workers", "2"]
    command += ["--config", str(config), "--input", f"split={digits_split}"]
    command += ["--output", f"checkpoint={out}"]
    top = subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # only for cleaning up below: the test kills the top pid alone
    )
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not ckpt.list_checkpoints(str(out)):
            assert top.poll() is None, f"the stage exited ({top.returncode}) before the kill"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        tree = _descendants(top.pid)
        assert len(tree) >= 3, f"torchrun and two workers expected below the top, got {tree}"

        os.kill(top.pid, signal.SIGKILL)
        top.wait(timeout=30)
        gone_by = time.monotonic() + 2.0
        while _alive(tree) and time.monotonic() < gone_by:
            time.sleep(0.02)
        assert not _alive(tree), f"still running 2 s after the kill: {_alive(tree)}"
        after_kill = _files(out)
        time.sleep(3.0)
        assert _files(out) == after_kill
    finally:
        for pid in _alive(tree | {top.pid}):
            os.kill(pid, signal.SIGKILL)
        top.wait(timeout=30)
