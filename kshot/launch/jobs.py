"""The two kinds of Kubernetes job a stage runs as, and the job object each is rendered to.

A :class:`JobKind` says where a backend's jobs live in the API (group, version, plural), which of
their status conditions mean success and failure, how their pods are found and which pod is node
rank 0. :func:`render_job` turns a launch into that backend's job object (through
:mod:`kshot.launch.pytorchjob` or :mod:`kshot.launch.trainjob`) and marks it with the hash by
which a retried launch recognises its own job. Both are facts about the jobs alone: this module
makes no API call, so a dry run (``kshot launch render``) needs no cluster client.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kshot.launch.pytorchjob import render_pytorchjob
from kshot.launch.spec import LaunchError, LaunchSpec
from kshot.launch.trainjob import (
    DEFAULT_TRAINER_VERSION,
    TRAINER_CONTAINER,
    TRAINER_JOB,
    render_trainjob,
)

__all__ = [
    "Backend",
    "JobKind",
    "JOB_KINDS",
    "LAUNCH_HASH_ANNOTATION",
    "DEFAULT_TIMEOUT_S",
    "render_job",
    "job_condition",
]

Backend = Literal["pytorchjob", "trainjob"]
# A hash of the rendered job: a job of the same name is adopted only when it carries the same one.
LAUNCH_HASH_ANNOTATION = "kshot/launch-hash"
# run_job's default timeout; render_job's too, so that a dry run shows the job a launch creates.
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class JobKind:
    """Where a backend's jobs live in the API and how to find their pods.

    Attributes:
        group: API group of the custom resource.
        version: its version.
        plural: its resource name.
        succeeded: the status condition type that means success.
        failed: the one that means failure.
        pod_label: label key whose value is the job name on all its pods.
        container: the container that runs torchrun.
        master_labels: labels that mark the pod of node rank 0.
        master_annotations: annotations that mark it too.
        suspend: where the job's ``suspend`` flag lies in its spec (Kueue sets it while the job
            waits in its queue).
    """

    group: str
    version: str
    plural: str
    succeeded: str
    failed: str
    pod_label: str
    container: str
    master_labels: Mapping[str, str]
    master_annotations: Mapping[str, str]
    suspend: tuple[str, ...]

    def pod_selector(self, name: str) -> str:
        """Label selector of all pods of job ``name``."""
        return f"{self.pod_label}={name}"

    def is_suspended(self, job: Mapping[str, Any]) -> bool:
        """Whether ``job`` is suspended: held, without pods, e.g. until Kueue admits it."""
        value: Any = job.get("spec") or {}
        for key in self.suspend:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value is True

    def is_master(self, pod: Any) -> bool:
        """Whether ``pod`` runs node rank 0, whose log the launcher streams."""
        labels = pod.metadata.labels or {}
        annotations = pod.metadata.annotations or {}
        return all(labels.get(k) == v for k, v in self.master_labels.items()) and all(
            annotations.get(k) == v for k, v in self.master_annotations.items()
        )


JOB_KINDS: dict[str, JobKind] = {
    # Training Operator v1: labels each pod with the job name and its replica type (lower case).
    "pytorchjob": JobKind(
        group="kubeflow.org",
        version="v1",
        plural="pytorchjobs",
        succeeded="Succeeded",
        failed="Failed",
        pod_label="training.kubeflow.org/job-name",
        container="pytorch",
        master_labels={"training.kubeflow.org/replica-type": "master"},
        master_annotations={},
        suspend=("runPolicy", "suspend"),
    ),
    # Trainer v2 runs a JobSet named after the TrainJob; JobSet labels its pods with that name,
    # their replicated job's name and the index of their Job within it.
    "trainjob": JobKind(
        group="trainer.kubeflow.org",
        version="v1alpha1",
        plural="trainjobs",
        succeeded="Complete",
        failed="Failed",
        pod_label="jobset.sigs.k8s.io/jobset-name",
        container=TRAINER_CONTAINER,
        # Node rank 0: the first Job of the trainer's replicated job, completion index 0.
        master_labels={
            "jobset.sigs.k8s.io/replicatedjob-name": TRAINER_JOB,
            "jobset.sigs.k8s.io/job-index": "0",
        },
        master_annotations={"batch.kubernetes.io/job-completion-index": "0"},
        suspend=("suspend",),
    ),
}


def render_job(
    spec: LaunchSpec,
    backend: Backend,
    *,
    service_account: str = "",
    backoff_limit: int = 2,
    pod_overrides: Mapping[str, Any] | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    trainer_version: str = DEFAULT_TRAINER_VERSION,
) -> dict[str, Any]:
    """The job object ``run_job`` creates for ``backend``, marked with its hash.

    Args:
        spec: the launch.
        backend: ``"pytorchjob"`` or ``"trainjob"``.
        service_account: the pods' service account; empty: from ``pod_overrides`` or the default.
        backoff_limit: PyTorchJob restarts before failing (TrainJob: the runtime decides).
        pod_overrides: :data:`kshot.launch.pods.POD_OVERRIDE_KEYS` of the pods.
        timeout_s: the launcher's timeout, the job's ``activeDeadlineSeconds`` (a TrainJob on
            Trainer v2.1 has none); None: no deadline.
        trainer_version: the Trainer release a TrainJob is rendered for
            (:data:`kshot.launch.trainjob.TRAINER_VERSIONS`).

    Returns:
        The PyTorchJob or TrainJob as a dict.

    Raises:
        LaunchError: on an unknown backend or anything the renderers refuse.
    """
    deadline = None if timeout_s is None else max(1, math.ceil(timeout_s))
    if backend == "pytorchjob":
        body = render_pytorchjob(
            spec,
            service_account=service_account,
            backoff_limit=backoff_limit,
            pod_overrides=pod_overrides,
            active_deadline_s=deadline,
        )
    elif backend == "trainjob":
        body = render_trainjob(
            spec,
            trainer_version=trainer_version,
            service_account=service_account,
            pod_overrides=pod_overrides,
            active_deadline_s=deadline,
        )
    else:
        raise LaunchError(f"backend {backend!r} is not one of {', '.join(JOB_KINDS)}")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    body["metadata"]["annotations"] = {LAUNCH_HASH_ANNOTATION: digest[:16]}
    return body


def job_condition(job: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    """The status condition of type ``condition_type`` that is true of ``job``; None if none is."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type and condition.get("status") == "True":
            return condition
    return None
