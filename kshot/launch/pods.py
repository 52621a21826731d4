"""The pods of a stage's job, as both job kinds render them: name, labels, container, security.

A PyTorchJob (:mod:`kshot.launch.pytorchjob`) and a TrainJob (:mod:`kshot.launch.trainjob`) wrap
the same pods in different objects; this module holds what those pods share: the job name, its
labels, the pod overrides (tolerations, node selector, service account, image pull secrets,
resource limits, extra volumes), the CPU and memory requests (config keys ``job_cpu``,
``job_memory``), the Kueue labels (``queue_name``, ``priority_class``), the container's
environment, the image pull policy, the security contexts, the scratch volumes and ``$`` escaping.

Every pod template opts out of Istio sidecar injection: in a Kubeflow profile namespace the sidecar
never exits, so a finished pod would never complete. Every pod passes the Pod Security Standards
"restricted" profile (non-root uid of the image, no privilege escalation, no capabilities, the
runtime's default seccomp profile) with a read-only root file system: ``/tmp``, the home directory
(caches of torch, triton, matplotlib) and ``/dev/shm`` are emptyDir volumes.

A job whose inputs or outputs lie in KFP's own store (``minio://``) gets what a pipeline step has
to reach it: the keys of KFP's Secret (``kshot.storage.s3.MINIO_SECRET``, optional, as on the steps)
and the endpoint the launching pod found (``KSHOT_MINIO_ENDPOINT``). A job on ``s3://`` gets the
launching pod's S3 endpoint, if it has one; its credentials come from the pods' identity.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from kshot.config import PRIORITY_LABEL, QUEUE_LABEL, is_quantity
from kshot.launch.spec import LaunchError, LaunchSpec

__all__ = [
    "job_name",
    "job_labels",
    "scheduling_labels",
    "validate_pod_overrides",
    "container_resources",
    "image_pull_policy",
    "escape_dollars",
    "container_env",
    "check_reserved_env",
    "pod_security_context",
    "container_security_context",
    "scratch_volumes",
    "pod_volumes",
    "container_mounts",
    "pod_settings",
    "scratch_mounts",
    "APP_LABEL",
    "STAGE_LABEL",
    "GPU_RESOURCE",
    "POD_OVERRIDE_KEYS",
    "ISTIO_INJECT_ANNOTATION",
    "RUN_AS_USER",
    "HOME_DIR",
    "SHM_SIZE_LIMIT",
    "SCRATCH_SIZE_LIMIT",
]

APP_LABEL = "app.kubernetes.io/name"
STAGE_LABEL = "kshot/stage"
GPU_RESOURCE = "nvidia.com/gpu"
# What a launch-defaults ConfigMap (or a caller) may set on the job's pods; ``resources`` holds the
# training container's limits (its CPU and memory requests are the spec's, from the config),
# ``volumes`` and ``volumeMounts`` extra pod volumes and where the training container mounts them
# (e.g. a dataset's PVC or CSI mount).
POD_OVERRIDE_KEYS = frozenset(
    {
        "tolerations",
        "nodeSelector",
        "serviceAccountName",
        "imagePullSecrets",
        "resources",
        "volumes",
        "volumeMounts",
    }
)
# Overrides that go into the training container or beside the scratch volumes, not on the pod.
_CONTAINER_KEYS = frozenset({"resources", "volumes", "volumeMounts"})
ISTIO_INJECT_ANNOTATION = "sidecar.istio.io/inject"
# The uid/gid and home directory of the user the images create (images/Dockerfile*).
RUN_AS_USER = 1000
HOME_DIR = "/home/kshot"
# Caps the memory-backed /dev/shm; its use counts against the pod's memory.
SHM_SIZE_LIMIT = "16Gi"
# Caps each disk-backed scratch volume (/tmp, the home directory's caches).
SCRATCH_SIZE_LIMIT = "8Gi"
_HASH_CHARS = 10
# The writable directories of a read-only root: name -> mount path. NCCL and DataLoader workers
# exchange tensors through /dev/shm, which defaults to 64 MiB in a pod.
_SCRATCH = {"dshm": "/dev/shm", "tmp": "/tmp", "home": HOME_DIR}


def job_name(spec: LaunchSpec) -> str:
    """The job's name: ``spec.name``, else ``kshot-<stage>-<hash of the spec>``.

    The hash covers everything that defines the run (config, URIs, sizes, image, labels such as
    the KFP run id), so a rerun of the same step gets the same name and a new run a new one.

    Args:
        spec: the launch.

    Returns:
        A DNS-1123 label of at most 63 characters.
    """
    if spec.name:
        return spec.name
    identity = {
        "stage": spec.stage,
        "config": spec.config,
        "inputs": spec.inputs,
        "outputs": spec.outputs,
        "workers": spec.workers,
        "gpus_per_worker": spec.gpus_per_worker,
        "image": spec.image,
        "namespace": spec.namespace,
        "labels": spec.labels,
        "env": spec.env,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"kshot-{spec.stage}-{digest[:_HASH_CHARS]}"


def job_labels(spec: LaunchSpec) -> dict[str, str]:
    """Labels of the job: the caller's (e.g. the KFP run id) plus app and stage.

    A PyTorchJob puts them on its pods too; a TrainJob only on its JobSet and Jobs.
    """
    return {**spec.labels, APP_LABEL: "kshot", STAGE_LABEL: spec.stage}


def scheduling_labels(spec: LaunchSpec) -> dict[str, str]:
    """Labels by which Kueue queues the job: its LocalQueue and WorkloadPriorityClass, where set.

    They go on the job object only: Kueue admits the job as one workload, and its pods are the
    job's, not separate workloads.
    """
    names = {QUEUE_LABEL: spec.queue_name, PRIORITY_LABEL: spec.priority_class}
    return {label: name for label, name in names.items() if name}


def escape_dollars(text: str) -> str:
    """Escape ``$`` so that Kubernetes' ``$(VAR)`` expansion of args and env keeps ``text``."""
    return text.replace("$", "$$")


def container_env(spec: LaunchSpec, own: Mapping[str, str]) -> list[dict[str, Any]]:
    """The training container's environment: ``spec.env`` and the launcher's ``own`` variables;
    for a job that reaches ``s3://`` URIs (artifacts, or a URI in its config such as the dataset)
    the S3 endpoint this process has (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, for MinIO or
    SeaweedFS), and for ``minio://`` URIs the endpoint of KFP's store and its keys from KFP's
    Secret (unless ``spec.env`` sets them). An endpoint on this machine's loopback (a
    ``kubectl port-forward``) means nothing in a pod and is not passed on.

    Args:
        spec: the launch.
        own: variables the launcher sets on every job (the stage, the job's name); they win.

    Returns:
        Kubernetes ``EnvVar`` objects, values ``$``-escaped.
    """
    from kshot.storage import s3  # not at the top: it loads boto3, which `kshot --help` need not
    from kshot.storage.uri import remote_scheme

    uris = [*spec.inputs.values(), *spec.outputs.values()]
    uris += [value for value in spec.config.values() if isinstance(value, str)]
    schemes = {remote_scheme(uri) for uri in uris}
    endpoints = {s3.MINIO_ENDPOINT_ENV: s3.minio_endpoint()} if "minio" in schemes else {}
    if "s3" in schemes:
        endpoints.update({name: os.environ.get(name, "") for name in s3.S3_ENDPOINT_ENVS})
    store = {name: url for name, url in endpoints.items() if url and not _on_loopback(url)}
    values = {**store, **spec.env, **own}
    env: list[dict[str, Any]] = [
        {"name": name, "value": escape_dollars(value)} for name, value in values.items()
    ]
    if "minio" in schemes:
        env += [
            {
                "name": name,
                "valueFrom": {
                    "secretKeyRef": {"name": s3.MINIO_SECRET, "key": key, "optional": True}
                },
            }
            for key, name in s3.MINIO_SECRET_KEYS.items()
            if name not in values
        ]
    return env


def _on_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_reserved_env(spec: LaunchSpec, reserved: frozenset[str], owner: str) -> None:
    """Refuse environment variables that the operator sets itself, and torchrun's ``PET_*``.

    Args:
        spec: the launch whose ``env`` is checked.
        reserved: names the operator sets.
        owner: who sets them, for the message.

    Raises:
        LaunchError: naming the clashing variables.
    """
    clashes = sorted(name for name in spec.env if name in reserved or name.startswith("PET_"))
    if clashes:
        raise LaunchError(
            f"env {', '.join(clashes)}: set by {owner} for torchrun; remove them from the launch"
        )


def validate_pod_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check pod overrides (:data:`POD_OVERRIDE_KEYS`) before anything reaches the cluster.

    Args:
        overrides: as read from the ``kshot-launch-defaults`` ConfigMap or given by the caller.

    Returns:
        A plain dict with only the keys that are set.

    Raises:
        LaunchError: on an unknown key or a value of the wrong shape.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - POD_OVERRIDE_KEYS)
    if unknown:
        allowed = ", ".join(sorted(POD_OVERRIDE_KEYS))
        raise LaunchError(f"pod overrides {', '.join(unknown)} unknown; allowed: {allowed}")
    tolerations = overrides.get("tolerations", [])
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        raise LaunchError(f"tolerations must be a list of objects, got {tolerations!r}")
    node_selector = overrides.get("nodeSelector", {})
    if not isinstance(node_selector, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in node_selector.items()
    ):
        raise LaunchError(f"nodeSelector must map strings to strings, got {node_selector!r}")
    service_account = overrides.get("serviceAccountName", "")
    if not isinstance(service_account, str):
        raise LaunchError(f"serviceAccountName must be a string, got {service_account!r}")
    pull_secrets = overrides.get("imagePullSecrets", [])
    if not isinstance(pull_secrets, list) or not all(
        isinstance(secret, dict) and set(secret) == {"name"} and isinstance(secret["name"], str)
        for secret in pull_secrets
    ):
        raise LaunchError(f"imagePullSecrets must be a list of {{name: ...}}, got {pull_secrets!r}")
    _check_resources(overrides.get("resources", {}))
    _check_volumes(overrides.get("volumes", []), overrides.get("volumeMounts", []))
    return {key: value for key, value in overrides.items() if value}


def _check_volumes(volumes: Any, mounts: Any) -> None:
    """Refuse extra volumes or mounts that are not named objects, clash with the scratch volumes,
    or mount a volume the pod does not have."""
    for key, items in (("volumes", volumes), ("volumeMounts", mounts)):
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in items
        ):
            raise LaunchError(f"{key} must be a list of objects with a name, got {items!r}")
    names = [volume["name"] for volume in volumes]
    taken = sorted(set(names) & set(_SCRATCH)) or sorted({n for n in names if names.count(n) > 1})
    if taken:
        raise LaunchError(
            f"volumes {', '.join(taken)}: names taken (the job's own volumes are "
            f"{', '.join(_SCRATCH)})"
        )
    for mount in mounts:
        if mount["name"] not in names:
            raise LaunchError(f"volumeMounts {mount['name']!r} names no volume of volumes {names}")
        path = mount.get("mountPath")
        if not isinstance(path, str) or not path.startswith("/") or path in _SCRATCH.values():
            raise LaunchError(
                f"volumeMounts {mount['name']!r}: mountPath {path!r} must be an absolute path "
                f"other than {', '.join(_SCRATCH.values())}"
            )


def pod_volumes(overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The scratch volumes, then the ``volumes`` override."""
    return scratch_volumes() + copy.deepcopy(list(overrides.get("volumes", [])))


def container_mounts(overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The scratch mounts, then the ``volumeMounts`` override."""
    return scratch_mounts() + copy.deepcopy(list(overrides.get("volumeMounts", [])))


def pod_settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that are pod spec fields as they are (tolerations, node selector, ...)."""
    return {key: value for key, value in overrides.items() if key not in _CONTAINER_KEYS}


def _check_resources(resources: Any) -> None:
    """Refuse a ``resources`` override that is not ``{requests|limits: {name: quantity}}``."""
    if not isinstance(resources, dict) or not set(resources) <= {"requests", "limits"}:
        raise LaunchError(f"resources must map requests/limits to quantities, got {resources!r}")
    for part, amounts in resources.items():
        if not isinstance(amounts, dict):
            raise LaunchError(f"resources.{part} must map names to quantities, got {amounts!r}")
        for resource, amount in amounts.items():
            if resource == GPU_RESOURCE:
                raise LaunchError(
                    f"resources.{part} sets {GPU_RESOURCE}: the launch's gpus_per_worker does"
                )
            if isinstance(amount, bool) or not is_quantity(str(amount)):
                raise LaunchError(f"resources.{part}.{resource} = {amount!r} is not a quantity")


def container_resources(spec: LaunchSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The training container's resources: the spec's CPU and memory requests and GPUs, and the
    limits (or other resources) of the ``resources`` override.

    Raises:
        LaunchError: the override requests CPU or memory other than the spec (the config keys
            ``job_cpu`` / ``job_memory`` set them), or limits one below the spec's request.
    """
    resources = copy.deepcopy(dict(overrides.get("resources", {})))
    requests = resources.setdefault("requests", {})
    for resource, amount, key in (
        ("cpu", spec.cpu, "job_cpu"),
        ("memory", spec.memory, "job_memory"),
    ):
        if not amount:
            continue
        given = requests.get(resource)
        if given is not None and str(given) != amount:
            raise LaunchError(
                f"resources.requests.{resource} = {given!r} of the pod overrides (the "
                f"kshot-launch-defaults ConfigMap) disagrees with config key {key} = {amount!r}: "
                f"the config key sets it; remove it from the overrides"
            )
        requests[resource] = amount
        limit = resources.get("limits", {}).get(resource)
        if limit is not None and _quantity(limit) < _quantity(amount):
            raise LaunchError(
                f"resources.limits.{resource} = {limit!r} of the pod overrides is below config "
                f"key {key} = {amount!r}: Kubernetes refuses a request above its limit"
            )
    if not requests:
        del resources["requests"]
    if spec.gpus_per_worker > 0:
        resources.setdefault("limits", {})[GPU_RESOURCE] = spec.gpus_per_worker
    return resources


def _quantity(amount: Any) -> Any:
    from kubernetes.utils import parse_quantity  # not at the top: `kshot --help` need not load it

    return parse_quantity(str(amount))


def image_pull_policy(image: str) -> str:
    """``Always`` for a moving tag (``latest`` or none), else ``IfNotPresent``.

    As Kubernetes defaults it, so a node never runs a stale copy of ``:latest``.
    """
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def pod_security_context() -> dict[str, Any]:
    """The pods' security context: the image's non-root uid, the runtime's seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The training container's: no privilege escalation, no capabilities, a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def scratch_volumes() -> list[dict[str, Any]]:
    """emptyDir volumes for what a read-only root leaves writable; ``/dev/shm`` in memory."""
    return [
        {
            "name": name,
            "emptyDir": (
                {"medium": "Memory", "sizeLimit": SHM_SIZE_LIMIT}
                if path == "/dev/shm"
                else {"sizeLimit": SCRATCH_SIZE_LIMIT}
            ),
        }
        for name, path in _SCRATCH.items()
    ]


def scratch_mounts() -> list[dict[str, str]]:
    """The mounts of :func:`scratch_volumes`."""
    return [{"name": name, "mountPath": path} for name, path in _SCRATCH.items()]
