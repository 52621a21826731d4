"""One writer per output: a second writer is refused naming the holder; a killed writer's lease
ends (local: with its process; gs:// and s3://: when it stops being renewed) and a rerun resumes
its work.

The object-store cases run on each store of ``tests.object_stores.remote`` behind
``tests.gcs.FlakyProxy`` with no faults: the GCS emulator's proxy answers ``ifGenerationMatch``
as GCS does (the emulator alone ignores it); moto answers S3's ``If-None-Match`` and ``If-Match``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kshot import lease, storage
from kshot.config import load_config
from kshot.stages import run_stage
from kshot.storage import s3 as s3_store
from kshot.train import checkpoint as ckpt
from tests.conftest import TINY, spy_on_resume
from tests.gcs import FlakyProxy
from tests.object_stores import Remote

# Long enough that the first writer is still training when the second one comes.
LONG = {**TINY, "epochs": 8, "warmup_epochs": 8, "checkpoint_every_steps": 5}
TTL_S = 2.0


def _start_writer(out: str, split: str, config: Path) -> subprocess.Popen[bytes]:
    """`kshot stage warmup` writing ``out``, in its own session; returns once it has written a
    checkpoint (so it holds the lease and has work to resume)."""
    config.write_text(yaml.safe_dump(LONG))
    command = [sys.executable, "-m", "kshot.cli", "stage", "warmup", "--config", str(config)]
    command += ["--input", f"split={split}", "--output", f"checkpoint={out}"]
    proc = subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
            pytest.fail(f"the first writer exited ({proc.returncode}):\n{err}")
        if ckpt.list_checkpoints(out):
            return proc
        time.sleep(0.05)
    _kill(proc)
    pytest.fail(f"the first writer wrote no checkpoint to {out} in time")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stderr:
        proc.stderr.close()


def _second_writer_refused_then_rerun_resumes(
    out: str, split: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> float:
    """The shared scenario; returns how long the rerun after the kill waited for the lease."""
    cfg = load_config(LONG)
    proc = _start_writer(out, split, tmp_path / "long.yaml")
    try:
        with pytest.raises(lease.LeaseHeld) as refused:
            run_stage("warmup", cfg, {"split": split}, {"checkpoint": out})
        message = str(refused.value)
        assert f"pid {proc.pid}" in message and os.uname().nodename in message, message
        assert out in message and "started" in message
    finally:
        _kill(proc)
    left = ckpt.list_checkpoints(out)
    assert left, "the killed writer left its checkpoints"

    resumed = spy_on_resume(monkeypatch)
    started = time.monotonic()
    # the same run; how often it checkpoints is an execution setting, outside its identity
    rerun = cfg.replace(checkpoint_every_steps=0)
    result = run_stage("warmup", rerun, {"split": split}, {"checkpoint": out})
    waited = time.monotonic() - started
    assert resumed == [left[-1]]  # it continued the killed writer's newest checkpoint
    assert result["epoch"] == LONG["warmup_epochs"]
    return waited


def test_two_writers_on_one_local_output(
    digits_split: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second writer into a local output is refused, naming the first's host, pid and start;
    SIGKILL frees the lock file at once and the rerun resumes the killed writer's checkpoint."""
    out = str(tmp_path / "warm")
    _second_writer_refused_then_rerun_resumes(out, digits_split, tmp_path, monkeypatch)
    assert not Path(lease.lease_uri(out)).exists()  # released when the stage ended


def test_two_writers_on_one_remote_output(
    flaky_remote: FlakyProxy,
    remote: Remote,
    digits_split: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on an object store: the lease object's holder renews it, so the second writer is refused;
    once SIGKILL stops the renewals the lease expires after its time to live and the rerun takes
    it over and resumes."""
    monkeypatch.setenv(lease.LEASE_TTL_ENV, str(TTL_S))
    split = storage.join(remote.bucket, "split.json")
    storage.write_bytes(split, Path(digits_split).read_bytes())
    out = storage.join(remote.bucket, "run", "warm")
    waited = _second_writer_refused_then_rerun_resumes(out, split, tmp_path, monkeypatch)
    assert waited >= TTL_S  # it waited for the dead writer's lease to expire
    assert storage.read_versioned(lease.lease_uri(out)) is None  # released when the stage ended
    assert flaky_remote.refused_preconditions >= 1  # the takeover and renewals were conditional


def test_a_live_remote_lease_is_refused_and_a_stale_one_taken_over(
    flaky_remote: FlakyProxy, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one process: while a holder renews, another is refused within a renewal period; a
    lease object nobody renews is taken over after one time to live, not before."""
    monkeypatch.setenv(lease.LEASE_TTL_ENV, str(TTL_S))
    out = storage.join(remote.bucket, "out.json")
    assert lease.lease_uri(out).startswith(f"{remote.bucket}/.kshot-leases/")
    with lease.hold([out], "split"):
        started = time.monotonic()
        with pytest.raises(lease.LeaseHeld, match=f"pid {os.getpid()}"), lease.hold([out], "x"):
            pass
        assert time.monotonic() - started < TTL_S
    storage.create_if_absent(lease.lease_uri(out), b'{"host": "gone", "pid": 1}')
    started = time.monotonic()
    with lease.hold([out], "split"):
        assert time.monotonic() - started >= TTL_S
    assert storage.read_versioned(lease.lease_uri(out)) is None


@pytest.fixture(params=["handled", "ignored"])
def sigint(request: pytest.FixtureRequest) -> Iterator[object]:
    """SIGINT as Python handles it, or ignored, as in a process that a shell started with
    ``cmd &``; the handler in place is restored after the test."""
    handler = signal.default_int_handler if request.param == "handled" else signal.SIG_IGN
    previous = signal.signal(signal.SIGINT, handler)
    yield handler
    signal.signal(signal.SIGINT, previous)


def test_a_holder_that_loses_its_lease_stops(
    flaky_remote: FlakyProxy, remote: Remote, monkeypatch: pytest.MonkeyPatch, sigint: object
) -> None:
    """When another writer has taken the lease over (here: replaced the object, as a takeover
    after expiry does), the holder's next renewal fails its generation check and the holder's
    main thread is interrupted instead of writing on, also where SIGINT was ignored; the
    process's own SIGINT handling is as it was afterwards."""
    monkeypatch.setenv(lease.LEASE_TTL_ENV, str(TTL_S))
    out = storage.join(remote.bucket, "lost.json")
    with pytest.raises(KeyboardInterrupt), lease.hold([out], "split"):
        found = storage.read_versioned(lease.lease_uri(out))
        assert found is not None
        storage.replace_if_generation(lease.lease_uri(out), b'{"host": "other"}', found[1])
        deadline = time.monotonic() + 3 * TTL_S
        while time.monotonic() < deadline:
            time.sleep(0.01)
        pytest.fail("the holder kept its lease after losing it")
    assert storage.read_versioned(lease.lease_uri(out))[0] == b'{"host": "other"}'
    assert signal.getsignal(signal.SIGINT) is sigint


def test_a_store_that_ignores_conditional_writes_is_named_when_the_lease_is_taken(
    minio_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that ignores If-None-Match / If-Match (older MinIO releases) cannot keep a second
    writer out: the writer is warned, naming the output. One that honours them (the test server)
    gets no warning; neither leaves its probe or lease behind."""
    out = storage.join(minio_bucket, "run", "warm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lease.hold([out], "warmup"):
            pass
    put_if = s3_store.MINIO_STORE._put_if
    monkeypatch.setattr(
        s3_store.MINIO_STORE,
        "_put_if",
        lambda uri, action, data, condition: put_if(uri, action, data, {}),  # headers ignored
    )
    monkeypatch.setattr(lease, "_CONDITIONS_HONOURED", {})
    with (
        pytest.warns(UserWarning, match=re.escape(out) + ": the store ignores conditional writes"),
        lease.hold([out], "warmup"),
    ):
        pass
    assert storage.list_uris(storage.join(minio_bucket, ".kshot-leases")) == []
