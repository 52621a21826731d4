"""What to launch: one pipeline stage as a (possibly distributed) job, whatever the backend."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from kshot.config import is_positive_quantity
from kshot.stages import HEAVY_STAGES, STAGES

__all__ = ["LaunchSpec", "LaunchError", "is_image_reference"]

# A DNS-1123 label: what Kubernetes accepts as a job name and a namespace.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL_MAX = 63
# An image reference as the OCI distribution grammar (and Docker) define it:
# [registry[:port]/]path[:tag][@digest], path components lower case.
_HOST_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_REGISTRY = rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]+)?/)"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"^{_REGISTRY}?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_IMAGE_NAME_MAX = 255
# A label value (and the name part of a key); a key may carry a DNS-subdomain prefix.
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_SUBDOMAIN_MAX = 253
# What Kubernetes accepts as an environment variable name.
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


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
        labels: labels put on the job (e.g. the KFP run id); a PyTorchJob passes them on to
            its pods, a TrainJob only to its JobSet and Jobs (``v1alpha1`` has no pod labels).
        env: extra environment variables of the worker processes.
        overwrite: the stage removes its outputs first and starts over
            (:mod:`kshot.stages.guard`).
        cpu: CPU request of each pod (config key ``job_cpu``); '' for none.
        memory: memory request of each pod (config key ``job_memory``); '' for none.
        queue_name: the Kueue LocalQueue of the job (config key ``queue_name``); '' for none.
        priority_class: its Kueue WorkloadPriorityClass (config key ``priority_class``).
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
    overwrite: bool = False
    cpu: str = ""
    memory: str = ""
    queue_name: str = ""
    priority_class: str = ""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise LaunchError(f"unknown stage {self.stage!r}; stages are {', '.join(STAGES)}")
        if self.workers < 1:
            raise LaunchError(f"workers = {self.workers}: a job needs at least one worker")
        if self.gpus_per_worker < 0:
            raise LaunchError(f"gpus_per_worker = {self.gpus_per_worker} must be >= 0")
        if self.name and not _is_dns_label(self.name):
            raise LaunchError(f"job name {self.name!r} is not a DNS-1123 label")
        if not _is_dns_label(self.namespace):
            raise LaunchError(f"namespace {self.namespace!r} is not a DNS-1123 label")
        if not is_image_reference(self.image):
            raise LaunchError(
                f"image {self.image!r} is not a valid image reference "
                "([registry[:port]/]name[:tag][@digest], name in lower case)"
            )
        for key, value in self.labels.items():
            if not _is_label_key(key):
                raise LaunchError(f"label key {key!r} is not a valid Kubernetes label key")
            if len(value) > _DNS_LABEL_MAX or not _LABEL_VALUE.match(value):
                raise LaunchError(f"label {key}={value!r}: not a valid Kubernetes label value")
        for env_name in self.env:
            if not _ENV_NAME.match(env_name):
                raise LaunchError(f"environment variable name {env_name!r} is not valid")
        for what, amount in (("cpu", self.cpu), ("memory", self.memory)):
            if amount and not is_positive_quantity(amount):
                raise LaunchError(f"{what} request {amount!r} is not a positive quantity")
        for what, name in (
            ("queue_name", self.queue_name),
            ("priority_class", self.priority_class),
        ):
            if name and (len(name) > _DNS_LABEL_MAX or not _LABEL_VALUE.match(name)):
                raise LaunchError(f"{what} {name!r}: not a valid Kubernetes label value")
        if self.priority_class and not self.queue_name:
            raise LaunchError(
                f"priority_class {self.priority_class!r} orders jobs in a Kueue queue: give "
                "queue_name too"
            )

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
        return [*args, "--overwrite"] if self.overwrite else args


def is_image_reference(image: str) -> bool:
    """Whether ``image`` is a valid container image reference (registry, path, tag, digest).

    Args:
        image: e.g. ``"ghcr.io/org/kshot:0.1.0"`` or ``"pytorch/pytorch@sha256:…"``.

    Returns:
        True when a container runtime would accept it as a reference.
    """
    without_digest = image.split("@", 1)[0]
    head, _, last = without_digest.rpartition("/")
    name = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    return bool(_IMAGE_REFERENCE.match(image)) and len(name) <= _IMAGE_NAME_MAX


def _is_dns_label(value: str) -> bool:
    return len(value) <= _DNS_LABEL_MAX and bool(_DNS_LABEL.match(value))


def _is_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > _DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(name) and len(name) <= _DNS_LABEL_MAX and bool(_LABEL_VALUE.match(name))
