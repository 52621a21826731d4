"""A stage as a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``).

The job names the ``torch-distributed`` ClusterTrainingRuntime, whose Torch plugin gives the
trainer container ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT`` (and refuses a TrainJob that sets them): plain ``torchrun -m kshot.worker …``
reads them all. The runtime runs the trainer as the JobSet replicated job ``trainer-node`` with a
container ``trainer`` (the names in ``shared/kubeflow/torch-distributed.clustertrainingruntime.yaml``;
later Trainer releases call them ``node`` and ``node``); pod overrides target those names.

What ``v1alpha1`` cannot say, the runtime must: a TrainJob has no pod annotations, pod labels,
pod ``securityContext``, ``imagePullSecrets``, image pull policy, deadline or TTL. So

- set ``sidecar.istio.io/inject: "false"`` on the runtime's pod template
  (``spec.template.spec.replicatedJobs[*].template.spec.template.metadata.annotations``): in a
  Kubeflow profile namespace the Istio sidecar never exits and the job never completes;
- set ``runAsNonRoot`` there too (the image runs as uid 1000 anyway);
- attach image pull secrets to the pods' service account instead (a TrainJob refuses them);
- ``spec.labels`` (the KFP run id) reach the JobSet and its Jobs only, not the pods; the launcher
  finds the pods by the JobSet's own ``jobset.sigs.k8s.io/jobset-name`` label;
- the image's pull policy is the Kubernetes default: ``Always`` for ``latest`` or no tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kshot.launch.pytorchjob import (
    check_reserved_env,
    container_resources,
    escape_dollars,
    job_labels,
    job_name,
    shm_mount,
    shm_volume,
    validate_pod_overrides,
)
from kshot.launch.spec import LaunchError, LaunchSpec

__all__ = ["render_trainjob", "TORCH_RUNTIME", "TRAINER_JOB", "TRAINER_CONTAINER"]

TORCH_RUNTIME = "torch-distributed"
TRAINER_JOB = "trainer-node"
TRAINER_CONTAINER = "trainer"
# The Trainer validates TrainJob names as DNS-1035 labels: they must start with a letter.
_DNS_1035_FIRST = "abcdefghijklmnopqrstuvwxyz"


def render_trainjob(
    spec: LaunchSpec,
    *,
    service_account: str = "",
    pod_overrides: Mapping[str, Any] | None = None,
    runtime: str = TORCH_RUNTIME,
    trainer_job: str = TRAINER_JOB,
    trainer_container: str = TRAINER_CONTAINER,
) -> dict[str, Any]:
    """The ``TrainJob`` that runs ``spec``, exactly as the launcher creates it.

    Args:
        spec: the stage, its sizes and image.
        service_account: the trainer pods' service account (overrides ``pod_overrides``).
        pod_overrides: ``tolerations``, ``nodeSelector``, ``serviceAccountName`` for the pods,
            ``resources`` for the trainer container (not ``imagePullSecrets``).
        runtime: the ClusterTrainingRuntime to run on.
        trainer_job: the runtime's replicated job that runs the trainer.
        trainer_container: the trainer container in that job.

    Returns:
        The object as a dict, ready for ``CustomObjectsApi.create_namespaced_custom_object``.

    Raises:
        LaunchError: on a reserved env variable, a bad override, ``imagePullSecrets``, or a name
            that is not DNS-1035.
    """
    check_reserved_env(spec, frozenset(), "the Trainer's torch plugin")
    name = job_name(spec)
    if name[0] not in _DNS_1035_FIRST:
        raise LaunchError(f"TrainJob name {name!r} must start with a letter (DNS-1035)")
    overrides = validate_pod_overrides(pod_overrides)
    if "imagePullSecrets" in overrides:
        raise LaunchError(
            "imagePullSecrets: a TrainJob (v1alpha1) cannot set them on its pods; add them to "
            "the pods' service account (its imagePullSecrets) or to the training runtime instead"
        )
    if service_account:
        overrides["serviceAccountName"] = service_account
    labels = job_labels(spec)

    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["torchrun"],
        "args": ["-m", "kshot.worker", *(escape_dollars(arg) for arg in spec.worker_args())],
        "env": [
            {"name": key, "value": escape_dollars(value)}
            for key, value in {
                **spec.env,
                "KSHOT_STAGE": spec.stage,
                "KSHOT_JOB_NAME": name,
                "PYTHONUNBUFFERED": "1",
            }.items()
        ],
        "numNodes": spec.workers,
        "numProcPerNode": spec.nproc_per_worker,
    }
    resources = container_resources(spec, overrides)
    if resources:
        trainer["resourcesPerNode"] = resources
    pod_spec_override = {
        "targetJobs": [{"name": trainer_job}],
        **{key: value for key, value in overrides.items() if key != "resources"},
        "volumes": [shm_volume()],
        "containers": [{"name": trainer_container, "volumeMounts": [shm_mount()]}],
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {
                "name": runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
            },
            # The JobSet's and Jobs' labels: v1alpha1 has no way to label the pods.
            "labels": dict(labels),
            "trainer": trainer,
            "podSpecOverrides": [pod_spec_override],
        },
    }
