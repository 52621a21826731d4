"""The local backend: a stage as ``torchrun --standalone`` subprocesses on this machine.

This is what the local pipeline run uses, so the embedded default exercises the same worker entry
point, process group and gradient all-reduce as a PyTorchJob on a cluster (gloo on the CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable

from kshot.launch.spec import LaunchError, LaunchSpec

__all__ = ["run_local", "local_command", "torchrun_command", "die_with_parent"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when the thread that started it ends, however
    it ends (even by SIGKILL), and end it now if ``parent_pid`` has already gone. Elsewhere: no-op.

    The local backend sets it on ``torchrun`` (before its exec), and every worker sets it for
    itself (:mod:`kshot.worker`), so that killing a stage's top process ends the whole tree before
    an orphan could write another checkpoint.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node=NPROC -m MODULE ARGS…`` with this Python."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *args,
    ]


def local_command(spec: LaunchSpec) -> list[str]:
    """The command line the local backend runs for ``spec``."""
    return torchrun_command(
        spec.workers * spec.nproc_per_worker, "kshot.worker", spec.worker_args()
    )


def run_local(spec: LaunchSpec, log: Callable[[str], None] = print) -> None:
    """Run ``spec`` to completion, streaming its output into ``log``.

    Raises:
        LaunchError: the processes failed; the message holds the exit code and the last lines.
    """
    env = {**os.environ, **spec.env, "KSHOT_STAGE": spec.stage}
    # Several workers: each gets an equal share of the machine's cores as intra-op threads (at
    # least one), so that together they do not oversubscribe the CPU.
    if spec.workers > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.workers)))
    tail: deque[str] = deque(maxlen=30)
    launcher = os.getpid()
    with subprocess.Popen(
        local_command(spec),
        env=env,
        preexec_fn=lambda: die_with_parent(launcher),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                log(line)
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait(timeout=30)
            raise
    if code:
        last = "\n".join(tail)
        raise LaunchError(
            f"stage {spec.stage!r} failed locally (exit code {code}); last lines:\n{last}"
        )
