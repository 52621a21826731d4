"""Launching a stage as a job: locally (torchrun) or on Kubernetes (PyTorchJob, TrainJob).

:func:`launch` is the one interface the pipeline's components call; the backend is a setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kshot.launch.spec import LaunchError, LaunchSpec

__all__ = ["BACKENDS", "LaunchError", "LaunchSpec", "launch"]

BACKENDS: tuple[str, ...] = ("local", "pytorchjob", "trainjob")


def launch(
    spec: LaunchSpec, backend: str = "local", log: Callable[[str], None] = print, **options: Any
) -> None:
    """Run ``spec`` with ``backend`` and wait for it; raise :class:`LaunchError` if it fails.

    Args:
        spec: the stage, its config, artifact URIs and resources.
        backend: ``local`` (torchrun subprocesses), ``pytorchjob`` or ``trainjob``.
        log: receives the job's log lines.
        **options: backend options (for Kubernetes: see :func:`kshot.launch.kube.run_job`).
    """
    if backend == "local":
        from kshot.launch.local import run_local

        if options:
            raise LaunchError(f"the local backend takes no options, got {sorted(options)}")
        run_local(spec, log=log)
        return
    if backend in ("pytorchjob", "trainjob"):
        from kshot.launch.kube import run_job

        run_job(spec, backend, log=log, **options)
        return
    raise LaunchError(f"unknown launch backend {backend!r}; backends are {', '.join(BACKENDS)}")
