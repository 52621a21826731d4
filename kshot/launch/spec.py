"""What to launch: one pipeline stage as a (possibly distributed) job, independent of the backend."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from kshot.stages import HEAVY_STAGES, STAGES

__all__ = ["LaunchSpec", "LaunchError"]

# A DNS-1123 label: what Kubernetes accepts as a job name and a namespace.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class LaunchError(RuntimeError):
    """A launch could not be made or its job failed; the message says which and why."""


@dataclass(frozen=True)
class LaunchSpec:
    """One stage run as a job of ``workers`` processes/pods with ``gpus_per_worker`` GPUs each.

    Attributes:
        stage: one of :data:`kshot.stages.STAGES`.
        config: the run configuration as a plain dict (``Config.to_dict()``).
        inputs: artifact name → URI the stage reads.
        outputs: artifact name → URI the stage writes.
        workers: processes (local backend) or pods (PyTorchJob / TrainJob).
        gpus_per_worker: GPUs per pod; also ``nprocPerNode`` (0: one CPU process per pod).
        image: container image of the worker pods.
        namespace: Kubernetes namespace of the job.
        name: job name (a DNS-1123 label); derived from the stage when empty.
        labels: labels put on the job and its pods (e.g. the KFP run id).
        env: extra environment variables of the worker processes.
    """

    stage: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    gpus_per_worker: int = 0
    image: str = "ghcr.io/kshot-nas/kshot:latest"
    namespace: str = "default"
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise LaunchError(f"unknown stage {self.stage!r}; stages are {', '.join(STAGES)}")
        if self.workers < 1:
            raise LaunchError(f"workers = {self.workers}: a job needs at least one worker")
        if self.gpus_per_worker < 0:
            raise LaunchError(f"gpus_per_worker = {self.gpus_per_worker} must be >= 0")
        if self.name and not _DNS_LABEL.match(self.name):
            raise LaunchError(f"job name {self.name!r} is not a DNS-1123 label")
        if not _DNS_LABEL.match(self.namespace):
            raise LaunchError(f"namespace {self.namespace!r} is not a DNS-1123 label")

    @property
    def heavy(self) -> bool:
        """Whether the stage trains or scores networks (and so runs distributed)."""
        return self.stage in HEAVY_STAGES

    @property
    def nproc_per_worker(self) -> int:
        """Processes per worker: one per GPU, or one on CPU."""
        return max(1, self.gpus_per_worker)

    def worker_args(self) -> list[str]:
        """Arguments after ``python -m kshot.worker``: the stage, its config and artifact URIs."""
        args = [self.stage, "--config-json", json.dumps(self.config, sort_keys=True)]
        for flag, uris in (("--input", self.inputs), ("--output", self.outputs)):
            for key, uri in sorted(uris.items()):
                args += [flag, f"{key}={uri}"]
        return args
