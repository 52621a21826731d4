"""A stage as a Kubeflow Training Operator ``PyTorchJob`` (``kubeflow.org/v1``).

One ``Master`` pod and ``workers - 1`` ``Worker`` pods each run
``torchrun --master_addr=$(MASTER_ADDR) --master_port=$(MASTER_PORT) -m kshot.worker STAGE …``.
The operator gives every container ``MASTER_ADDR``/``MASTER_PORT`` (the master's service),
``PET_NNODES`` (replicas), ``PET_NODE_RANK`` and ``PET_NPROC_PER_NODE`` (``spec.nprocPerNode``);
torchrun reads the ``PET_*`` variables itself but takes the rendezvous address only from
``PET_MASTER_ADDR`` or ``--master_addr``, which the operator does not set, hence the two flags.

``restartPolicy: ExitCode`` retries only exit codes 128-255 (a container killed by a signal:
OOM kill, eviction); torchrun exits 1 whenever a worker process fails, so an error of the training
itself (a bad config, a crash) fails the job at once instead of rerunning it ``backoffLimit`` times.

The pods themselves (container, environment, security, volumes, overrides) are the ones a TrainJob
runs too: :mod:`kshot.launch.pods`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kshot.launch.pods import (
    ISTIO_INJECT_ANNOTATION,
    check_reserved_env,
    container_env,
    container_mounts,
    container_resources,
    container_security_context,
    escape_dollars,
    image_pull_policy,
    job_labels,
    job_name,
    pod_security_context,
    pod_settings,
    pod_volumes,
    scheduling_labels,
    validate_pod_overrides,
)
from kshot.launch.spec import LaunchError, LaunchSpec

__all__ = ["render_pytorchjob", "CLEAN_POD_POLICIES", "TTL_AFTER_FINISHED_S"]

CLEAN_POD_POLICIES = ("None", "Running", "All")
# Lets the operator remove a finished job that no launcher deleted (one killed mid-wait).
TTL_AFTER_FINISHED_S = 24 * 3600

# The operator requires this container name and finds the rendezvous port by this port name.
_CONTAINER_NAME = "pytorch"
_PORT_NAME = "pytorchjob-port"
_MASTER_PORT = 23456
# Set by the operator on every pod; a value from the caller would fight it.
_OPERATOR_ENV = frozenset({"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED"})


def render_pytorchjob(
    spec: LaunchSpec,
    *,
    service_account: str = "",
    backoff_limit: int = 2,
    clean_pod_policy: str = "None",
    pod_overrides: Mapping[str, Any] | None = None,
    active_deadline_s: int | None = None,
) -> dict[str, Any]:
    """The ``PyTorchJob`` that runs ``spec``, exactly as the launcher creates it.

    Args:
        spec: the stage, its sizes and image.
        service_account: the pods' service account (overrides ``pod_overrides``); empty: the
            namespace default.
        backoff_limit: pod restarts (``restartPolicy: ExitCode``: after a signal) before the job
            fails.
        clean_pod_policy: which pods the operator deletes when the job ends; the default ``None``
            keeps them, so their logs stay readable until the launcher deletes the job.
        pod_overrides: :data:`~kshot.launch.pods.POD_OVERRIDE_KEYS` for every pod.
        active_deadline_s: the launcher's timeout, so the operator stops a job whose launcher
            died; None: no deadline.

    Returns:
        The object as a dict, ready for ``CustomObjectsApi.create_namespaced_custom_object``.

    Raises:
        LaunchError: on a reserved env variable, a bad override or run policy.
    """
    if backoff_limit < 0:
        raise LaunchError(f"backoff_limit = {backoff_limit} must be >= 0")
    if active_deadline_s is not None and active_deadline_s < 1:
        raise LaunchError(f"active_deadline_s = {active_deadline_s} must be >= 1")
    if clean_pod_policy not in CLEAN_POD_POLICIES:
        raise LaunchError(
            f"clean_pod_policy {clean_pod_policy!r} is not one of {', '.join(CLEAN_POD_POLICIES)}"
        )
    check_reserved_env(spec, _OPERATOR_ENV, "the Training Operator")
    overrides = validate_pod_overrides(pod_overrides)
    if service_account:
        overrides["serviceAccountName"] = service_account
    name = job_name(spec)
    labels = job_labels(spec)

    container: dict[str, Any] = {
        "name": _CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": image_pull_policy(spec.image),
        "command": ["torchrun"],
        "args": [
            "--master_addr=$(MASTER_ADDR)",
            "--master_port=$(MASTER_PORT)",
            "-m",
            "kshot.worker",
            *(escape_dollars(arg) for arg in spec.worker_args()),
        ],
        "env": container_env(spec, {"KSHOT_STAGE": spec.stage, "KSHOT_JOB_NAME": name}),
        "ports": [{"name": _PORT_NAME, "containerPort": _MASTER_PORT, "protocol": "TCP"}],
        "volumeMounts": container_mounts(overrides),
        "securityContext": container_security_context(),
    }
    resources = container_resources(spec, overrides)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": pod_volumes(overrides),
        "securityContext": pod_security_context(),
        **pod_settings(overrides),
    }
    metadata = {"labels": labels, "annotations": {ISTIO_INJECT_ANNOTATION: "false"}}

    def replica(replicas: int) -> dict[str, Any]:
        return {
            "replicas": replicas,
            "restartPolicy": "ExitCode",
            "template": {"metadata": copy.deepcopy(metadata), "spec": copy.deepcopy(pod_spec)},
        }

    run_policy: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "cleanPodPolicy": clean_pod_policy,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
    }
    if active_deadline_s is not None:
        run_policy["activeDeadlineSeconds"] = active_deadline_s
    replica_specs = {"Master": replica(1)}
    if spec.workers > 1:
        replica_specs["Worker"] = replica(spec.workers - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": {**labels, **scheduling_labels(spec)},
        },
        "spec": {
            # The CRD types nprocPerNode as a string (it also accepts auto, cpu, gpu).
            "nprocPerNode": str(spec.nproc_per_worker),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }
