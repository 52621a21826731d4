"""A stage as a Kubeflow Trainer ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``), releases v2.1-v2.3.

The job runs on the ``torch-distributed`` runtime, whose Torch plugin gives the trainer container
``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT`` (and refuses a TrainJob that sets them): plain ``torchrun -m kshot.worker …``
reads them all. The released runtime names its replicated job *and* its container ``node``
(``constants.Node`` of the Trainer); the controller silently skips a patch aimed at another name,
so every per-job change here targets ``node``.

The releases differ in where per-job pod changes go (:data:`TRAINER_VERSIONS`):

- v2.1: ``spec.podTemplateOverrides`` — pod labels and annotations, service account, tolerations,
  node selector, image pull secrets, volumes and the containers' volume mounts; no security
  context. The pods' security context therefore comes from the runtime: v2.1 jobs name the
  namespaced TrainingRuntime ``kshot-torch-distributed`` that ``manifests/overlays/trainer-v2.1``
  installs (the released ``torch-distributed`` plus the "restricted" security context).
- v2.2 and v2.3: ``spec.runtimePatches`` (one patch, owned by :data:`PATCH_MANAGER`) — all of the
  above plus the pod's and the container's security context, so the stock ``torch-distributed``
  ClusterTrainingRuntime is enough; ``spec.activeDeadlineSeconds`` carries the launcher's timeout.
  ``spec.labels`` and ``spec.podTemplateOverrides`` no longer exist (the API server prunes them).

Every pod passes the Pod Security Standards "restricted" profile with a read-only root file system
(writable ``/tmp``, home and ``/dev/shm`` are emptyDir volumes) and skips Istio sidecar injection
(in a Kubeflow profile namespace the sidecar never exits and the job never completes). The pods get
the job's labels (the KFP run id among them); the launcher finds them by the labels JobSet sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from kshot.launch.pods import (
    ISTIO_INJECT_ANNOTATION,
    check_reserved_env,
    container_env,
    container_mounts,
    container_resources,
    container_security_context,
    escape_dollars,
    job_labels,
    job_name,
    pod_security_context,
    pod_settings,
    pod_volumes,
    scheduling_labels,
    validate_pod_overrides,
)
from kshot.launch.spec import LaunchError, LaunchSpec

__all__ = [
    "render_trainjob",
    "trainer_api",
    "TrainerAPI",
    "TRAINER_VERSIONS",
    "DEFAULT_TRAINER_VERSION",
    "TORCH_RUNTIME",
    "HARDENED_RUNTIME",
    "TRAINER_JOB",
    "TRAINER_CONTAINER",
    "PATCH_MANAGER",
]

TrainerAPI = Literal["podTemplateOverrides", "runtimePatches"]
# Where each supported Trainer release takes per-job pod changes (its TrainJob CRD's spec field).
TRAINER_VERSIONS: dict[str, TrainerAPI] = {
    "v2.1": "podTemplateOverrides",
    "v2.2": "runtimePatches",
    "v2.3": "runtimePatches",
}
DEFAULT_TRAINER_VERSION = "v2.3"
# The released ClusterTrainingRuntime, and the namespaced TrainingRuntime that v2.1 jobs need.
TORCH_RUNTIME = "torch-distributed"
HARDENED_RUNTIME = "kshot-torch-distributed"
# The released runtime's replicated job and container (the Trainer's constants.Node).
TRAINER_JOB = "node"
TRAINER_CONTAINER = "node"
# Owner of the job's runtime patch (a list-map key of spec.runtimePatches).
PATCH_MANAGER = "kshot.launch"
# The Trainer validates TrainJob names as DNS-1035 labels: they must start with a letter.
_DNS_1035_FIRST = "abcdefghijklmnopqrstuvwxyz"


def trainer_api(version: str) -> TrainerAPI:
    """The TrainJob field that takes per-job pod changes in Trainer ``version``.

    Args:
        version: one of :data:`TRAINER_VERSIONS` (``"v2.3"``; a leading ``v`` may be left out).

    Raises:
        LaunchError: for a release this launcher does not render for.
    """
    key = version if version.startswith("v") else f"v{version}"
    if key not in TRAINER_VERSIONS:
        raise LaunchError(
            f"Kubeflow Trainer version {version!r} is not supported; supported: "
            f"{', '.join(TRAINER_VERSIONS)} (v2.0 took spec.podSpecOverrides: upgrade the Trainer)"
        )
    return TRAINER_VERSIONS[key]


def render_trainjob(
    spec: LaunchSpec,
    *,
    trainer_version: str = DEFAULT_TRAINER_VERSION,
    service_account: str = "",
    pod_overrides: Mapping[str, Any] | None = None,
    active_deadline_s: int | None = None,
) -> dict[str, Any]:
    """The ``TrainJob`` that runs ``spec`` on Trainer ``trainer_version``, as the launcher creates it.

    Args:
        spec: the stage, its sizes and image.
        trainer_version: the cluster's Trainer release (:data:`TRAINER_VERSIONS`).
        service_account: the trainer pods' service account (overrides ``pod_overrides``).
        pod_overrides: ``tolerations``, ``nodeSelector``, ``serviceAccountName``,
            ``imagePullSecrets``, ``volumes`` for the pods, ``resources`` and ``volumeMounts``
            for the trainer container.
        active_deadline_s: the launcher's timeout, the job's ``activeDeadlineSeconds`` (v2.2+;
            v2.1 has no deadline); None: no deadline.

    Returns:
        The object as a dict, ready for ``CustomObjectsApi.create_namespaced_custom_object``.

    Raises:
        LaunchError: on an unsupported version, a reserved env variable, a bad override or a
            name that is not DNS-1035.
    """
    api = trainer_api(trainer_version)
    check_reserved_env(spec, frozenset(), "the Trainer's torch plugin")
    if active_deadline_s is not None and active_deadline_s < 1:
        raise LaunchError(f"active_deadline_s = {active_deadline_s} must be >= 1")
    name = job_name(spec)
    if name[0] not in _DNS_1035_FIRST:
        raise LaunchError(f"TrainJob name {name!r} must start with a letter (DNS-1035)")
    overrides = validate_pod_overrides(pod_overrides)
    if service_account:
        overrides["serviceAccountName"] = service_account
    labels = job_labels(spec)

    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["torchrun"],
        "args": ["-m", "kshot.worker", *(escape_dollars(arg) for arg in spec.worker_args())],
        "env": container_env(
            spec, {"KSHOT_STAGE": spec.stage, "KSHOT_JOB_NAME": name, "PYTHONUNBUFFERED": "1"}
        ),
        "numNodes": spec.workers,
        "numProcPerNode": spec.nproc_per_worker,
    }
    resources = container_resources(spec, overrides)
    if resources:
        trainer["resourcesPerNode"] = resources
    pod_metadata = {"labels": dict(labels), "annotations": {ISTIO_INJECT_ANNOTATION: "false"}}
    pod_spec: dict[str, Any] = {**pod_settings(overrides), "volumes": pod_volumes(overrides)}
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "volumeMounts": container_mounts(overrides),
    }
    job_spec: dict[str, Any] = {"trainer": trainer}
    if api == "podTemplateOverrides":
        runtime_ref = {"name": HARDENED_RUNTIME, "kind": "TrainingRuntime"}
        job_spec["podTemplateOverrides"] = [
            {
                "targetJobs": [{"name": TRAINER_JOB}],
                "metadata": pod_metadata,
                "spec": {**pod_spec, "containers": [container]},
            }
        ]
    else:
        runtime_ref = {"name": TORCH_RUNTIME, "kind": "ClusterTrainingRuntime"}
        pod_spec["securityContext"] = pod_security_context()
        container["securityContext"] = container_security_context()
        pod_template = {"metadata": pod_metadata, "spec": {**pod_spec, "containers": [container]}}
        job_spec["runtimePatches"] = [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {
                            "replicatedJobs": [
                                {
                                    "name": TRAINER_JOB,
                                    "template": {"spec": {"template": pod_template}},
                                }
                            ]
                        },
                    }
                },
            }
        ]
        if active_deadline_s is not None:
            job_spec["activeDeadlineSeconds"] = active_deadline_s
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": {**labels, **scheduling_labels(spec)},
        },
        "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", **runtime_ref}, **job_spec},
    }
