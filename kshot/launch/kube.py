"""Run a stage as a PyTorchJob or TrainJob on Kubernetes: create it, follow it, clean it up.

:func:`run_job` validates everything first (so bad input leaves nothing behind), creates the job
through ``CustomObjectsApi`` in ``spec.namespace``, polls its status conditions, streams the master
pod's log, and turns every way a job can end badly into a :class:`LaunchError` that says why: the
job's failure condition with the pods' waiting/terminated reasons and the last log lines, pods
never scheduled, pods never started, the overall timeout, a forbidden namespace. The job is then
deleted per ``delete_policy`` — and always when the wait is cancelled (Ctrl-C, or SIGTERM as when
Kubeflow Pipelines stops a run), so a cancelled step leaves no GPUs busy.

A retried KFP step renders the same job name: a job of that very launch (same
:data:`LAUNCH_HASH_ANNOTATION`) that is still running or has succeeded is adopted and watched as if
just created; a failed one is replaced. A launcher killed outright leaves its job behind: the
PyTorchJob's ``activeDeadlineSeconds`` (the launcher's timeout) and ``ttlSecondsAfterFinished``
let the operator stop and remove it. Every API call has a request timeout; 429, 5xx and connection
errors are retried with exponential backoff (within the overall timeout), so one flaky response
does not kill a week of training.

Pod placement (GPU tolerations, node selector, service account) comes from the caller or from the
``kshot-launch-defaults`` ConfigMap in the namespace, which ``manifests/`` installs and its GPU
overlay patches. Without the ConfigMap the launch is refused (the pods would otherwise run as the
namespace's default service account, without GPU tolerations); ``launch_defaults=None`` opts out.

A TrainJob is rendered for the cluster's Trainer release, unless the caller names it: read from the
TrainJob schema (which spec field takes per-job pod changes) of the CRD (``apiextensions.k8s.io``)
or, where reading CRDs is forbidden, of the API server's OpenAPI v3 document.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import yaml
from google.api_core.exceptions import RetryError
from google.api_core.retry import Retry
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from kshot.launch.pytorchjob import render_pytorchjob, validate_pod_overrides
from kshot.launch.spec import LaunchError, LaunchSpec
from kshot.launch.trainjob import (
    DEFAULT_TRAINER_VERSION,
    TRAINER_CONTAINER,
    TRAINER_JOB,
    TRAINER_VERSIONS,
    render_trainjob,
    trainer_api,
)

__all__ = [
    "run_job",
    "render_job",
    "load_launch_defaults",
    "default_api_client",
    "detect_trainer_version",
    "JobKind",
    "JOB_KINDS",
    "Backend",
    "DeletePolicy",
    "JobCancelled",
    "LaunchDefaultsUnavailable",
    "LAUNCH_DEFAULTS_CONFIGMAP",
    "LAUNCH_HASH_ANNOTATION",
    "TRAINJOB_CRD",
]

Backend = Literal["pytorchjob", "trainjob"]
DeletePolicy = Literal["always", "on-success", "never"]
LAUNCH_DEFAULTS_CONFIGMAP = "kshot-launch-defaults"
# A hash of the rendered job: a job of the same name is adopted only when it carries the same one.
LAUNCH_HASH_ANNOTATION = "kshot/launch-hash"
TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"
_DELETE_POLICIES = ("always", "on-success", "never")
# run_job's default timeout; render_job's too, so that a dry run shows the job a launch creates.
_DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0
_LOG_TAIL_LINES = 30
_DRAIN_TIMEOUT_S = 5.0
# (connect, read) seconds of one API call; the client ignores a lone float.
_REQUEST_TIMEOUT = (10.0, 30.0)
# A followed log may stay silent for long; after this the stream reconnects (seen lines skipped).
_LOG_FOLLOW_TIMEOUT = (10.0, 300.0)
# Backoff of retried API calls (google.api_core's Retry, as kshot.storage's requests, jittered
# below these bounds): first delay, largest delay, longest outage tolerated.
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0
_MAX_OUTAGE_S = 900.0
# How long the final delete keeps retrying (a cancelled pod has a short grace period).
_CLEANUP_S = 20.0
# How long a failed job being replaced may take to go away.
_GONE_TIMEOUT_S = 120.0
# A job of the same name that keeps reappearing is not ours to fight over.
_CREATE_ATTEMPTS = 3
_T = TypeVar("_T")


class JobCancelled(LaunchError):
    """The wait was cancelled (SIGTERM); the job has been deleted."""


class LaunchDefaultsUnavailable(LaunchError):
    """The launch-defaults ConfigMap could not be read: missing, forbidden, or no cluster."""


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
    timeout_s: float | None = _DEFAULT_TIMEOUT_S,
    trainer_version: str = DEFAULT_TRAINER_VERSION,
) -> dict[str, Any]:
    """The job object ``run_job`` creates for ``backend``, marked with its hash.

    Args:
        spec: the launch.
        backend: ``"pytorchjob"`` or ``"trainjob"``.
        service_account: the pods' service account; empty: from ``pod_overrides`` or the default.
        backoff_limit: PyTorchJob restarts before failing (TrainJob: the runtime decides).
        pod_overrides: :data:`kshot.launch.pytorchjob.POD_OVERRIDE_KEYS` of the pods.
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


def load_launch_defaults(
    api_client: client.ApiClient, namespace: str, name: str = LAUNCH_DEFAULTS_CONFIGMAP
) -> dict[str, Any]:
    """Pod overrides from the ConfigMap ``name`` in ``namespace``.

    Each data key (``tolerations``, ``nodeSelector``, ``serviceAccountName``, ``resources``,
    ``imagePullSecrets``, ``volumes``, ``volumeMounts``) holds YAML.

    Args:
        api_client: the cluster.
        namespace: where the jobs run.
        name: the ConfigMap.

    Returns:
        The validated overrides.

    Raises:
        LaunchDefaultsUnavailable: the ConfigMap is missing (with how to install it), reading it
            is forbidden or the API server cannot be reached.
        LaunchError: its content is malformed.
    """
    try:
        config_map = client.CoreV1Api(api_client).read_namespaced_config_map(
            name, namespace, _request_timeout=_REQUEST_TIMEOUT
        )
    except ApiException as error:
        if error.status == 404:
            raise LaunchDefaultsUnavailable(
                f"ConfigMap {namespace}/{name} is missing: without it the job's pods would run "
                "as the namespace's default service account, without GPU tolerations. Install "
                f"it with `kubectl apply -k manifests/overlays/gpu` (or manifests/base) with "
                f"namespace {namespace!r}, or launch without defaults on purpose "
                "(launch_defaults=None)"
            ) from error
        raise LaunchDefaultsUnavailable(
            _api_failure(error, f"read ConfigMap {name}", namespace)
        ) from error
    except (HTTPError, OSError) as error:
        raise LaunchDefaultsUnavailable(
            f"could not read ConfigMap {namespace}/{name}: the Kubernetes API server is "
            f"unreachable ({error})"
        ) from error
    try:
        overrides = {key: yaml.safe_load(text) for key, text in (config_map.data or {}).items()}
    except yaml.YAMLError as error:
        raise LaunchError(f"ConfigMap {namespace}/{name} holds invalid YAML: {error}") from error
    try:
        return validate_pod_overrides(overrides)
    except LaunchError as error:
        raise LaunchError(f"ConfigMap {namespace}/{name}: {error}") from error


def detect_trainer_version(api_client: client.ApiClient) -> str:
    """The Trainer release a TrainJob must be rendered for, from the cluster's TrainJob schema.

    Reads the CRD (``apiextensions.k8s.io/v1``); where that is forbidden, as for a Kubeflow
    profile's ``default-editor``, the same schema as the API server publishes it in its OpenAPI v3
    document (readable by every authenticated user). ``spec.runtimePatches`` means v2.2 or later
    (rendered as v2.3), ``spec.podTemplateOverrides`` v2.1.

    Args:
        api_client: the cluster.

    Returns:
        A key of :data:`kshot.launch.trainjob.TRAINER_VERSIONS`.

    Raises:
        LaunchError: when the Trainer is not installed, its schema cannot be read, or it is of a
            release this launcher does not render for.
    """
    try:
        spec_fields = _trainjob_spec_fields_from_crd(api_client)
    except ApiException as error:
        if error.status == 404:
            raise LaunchError(
                f"the cluster has no CustomResourceDefinition {TRAINJOB_CRD}: install the "
                "Kubeflow Trainer (v2.1 or later) or use the pytorchjob backend"
            ) from error
        if error.status != 403:
            raise LaunchError(
                f"could not read CustomResourceDefinition {TRAINJOB_CRD}: {error.status} "
                f"{error.reason}; name the Trainer version instead (--trainer-version)"
            ) from error
        spec_fields = _trainjob_spec_fields_from_openapi(api_client)
    for release, api in sorted(TRAINER_VERSIONS.items(), reverse=True):
        if api in spec_fields:
            return release
    raise LaunchError(
        f"the cluster's TrainJob has neither spec.runtimePatches nor spec.podTemplateOverrides "
        f"(spec fields: {', '.join(sorted(spec_fields)) or 'none'}): a Trainer release before "
        f"v2.1; supported: {', '.join(TRAINER_VERSIONS)}"
    )


def _trainjob_spec_fields_from_crd(api_client: client.ApiClient) -> set[str]:
    # Read as plain JSON: the client's models would rebuild the whole schema as objects.
    response = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
        TRAINJOB_CRD, _preload_content=False, _request_timeout=_REQUEST_TIMEOUT
    )
    crd = json.loads(response.data)
    fields: set[str] = set()
    for version in crd["spec"]["versions"]:
        if version.get("served") and version["name"] == JOB_KINDS["trainjob"].version:
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
            spec_schema = (schema.get("properties") or {}).get("spec") or {}
            fields |= set(spec_schema.get("properties") or {})
    return fields


def _trainjob_spec_fields_from_openapi(api_client: client.ApiClient) -> set[str]:
    kind = JOB_KINDS["trainjob"]
    path = f"/openapi/v3/apis/{kind.group}/{kind.version}"
    try:
        document, _, _ = api_client.call_api(
            path,
            "GET",
            header_params={"Accept": "application/json"},
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=False,
            _request_timeout=_REQUEST_TIMEOUT,
        )
    except ApiException as error:
        raise LaunchError(
            f"could not read the TrainJob schema (CustomResourceDefinition {TRAINJOB_CRD}: "
            f"forbidden; {path}: {error.status} {error.reason}); name the Trainer version "
            "instead (--trainer-version)"
        ) from error
    for schema in ((document or {}).get("components") or {}).get("schemas", {}).values():
        kinds = schema.get("x-kubernetes-group-version-kind") or []
        if any(k.get("group") == kind.group and k.get("kind") == "TrainJob" for k in kinds):
            return set(((schema.get("properties") or {}).get("spec") or {}).get("properties", {}))
    return set()


def run_job(
    spec: LaunchSpec,
    backend: Backend = "pytorchjob",
    *,
    api_client: client.ApiClient | None = None,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
    poll_s: float = 10.0,
    delete_policy: DeletePolicy = "always",
    log: Callable[[str], None] = print,
    schedule_timeout_s: float = 1800.0,
    service_account: str = "",
    backoff_limit: int = 2,
    pod_overrides: Mapping[str, Any] | None = None,
    launch_defaults: str | None = LAUNCH_DEFAULTS_CONFIGMAP,
    trainer_version: str | None = None,
) -> dict[str, Any]:
    """Create the job for ``spec``, wait until it ends, stream its log, clean up.

    Args:
        spec: the stage to run and where.
        backend: ``"pytorchjob"`` (Training Operator) or ``"trainjob"`` (Trainer v2).
        api_client: the cluster; default: in-cluster config, else the kubeconfig.
        timeout_s: longest wait for the job to end; also the PyTorchJob's deadline.
        poll_s: seconds between status polls.
        delete_policy: delete the job at the end ``"always"``, ``"on-success"`` or ``"never"``
            (a cancelled wait always deletes it).
        log: receives the master pod's log lines and the launcher's own messages.
        schedule_timeout_s: longest wait for the first pod to run.
        service_account: the pods' service account (overrides the launch defaults).
        backoff_limit: PyTorchJob restarts before the job fails.
        pod_overrides: :data:`kshot.launch.pytorchjob.POD_OVERRIDE_KEYS`; None: read the
            ``launch_defaults`` ConfigMap.
        launch_defaults: the ConfigMap of pod overrides, which must exist; None: none, on purpose.
        trainer_version: the Trainer release of a TrainJob; None: read from the cluster's CRD.

    Returns:
        The job object as last read, with its final status.

    Raises:
        LaunchError: on bad input (before any request), a refused create, a job of the same name
            from another launch, a failed, unschedulable or timed-out job, an API server that
            stays unreachable; :class:`JobCancelled` when SIGTERM stops the wait.
    """
    if backend not in JOB_KINDS:
        raise LaunchError(f"backend {backend!r} is not one of {', '.join(JOB_KINDS)}")
    if delete_policy not in _DELETE_POLICIES:
        raise LaunchError(f"delete_policy {delete_policy!r} is not one of {_DELETE_POLICIES}")
    for label, value in (
        ("timeout_s", timeout_s),
        ("poll_s", poll_s),
        ("schedule_timeout_s", schedule_timeout_s),
    ):
        if not value > 0:
            raise LaunchError(f"{label} = {value} must be > 0")
    if trainer_version is not None:
        trainer_api(trainer_version)
    render_options = {
        "service_account": service_account,
        "backoff_limit": backoff_limit,
        "timeout_s": timeout_s,
        "trainer_version": trainer_version or DEFAULT_TRAINER_VERSION,
    }
    body = render_job(spec, backend, pod_overrides=pod_overrides, **render_options)

    api_client = api_client or default_api_client()
    if backend == "trainjob" and trainer_version is None:
        render_options["trainer_version"] = detect_trainer_version(api_client)
        body = render_job(spec, backend, pod_overrides=pod_overrides, **render_options)
    if pod_overrides is None and launch_defaults:
        defaults = load_launch_defaults(api_client, spec.namespace, launch_defaults)
        body = render_job(spec, backend, pod_overrides=defaults, **render_options)
    kind = JOB_KINDS[backend]
    name = body["metadata"]["name"]
    title = f"{body['kind']} {spec.namespace}/{name}"
    watcher = _JobWatcher(api_client, kind, spec.namespace, name, log, poll_s)
    created = cancelled = succeeded = False
    ownership = {"ours": False}
    restore_sigterm = _raise_on_sigterm(title)
    try:
        adopted = _create_or_adopt(
            api_client, kind, body, time.monotonic() + timeout_s, log, poll_s, ownership
        )
        created = True
        log(f"{'adopted the existing' if adopted else 'created'} {title}")
        job = watcher.wait(timeout_s, schedule_timeout_s)
        succeeded = True
        return job
    except (KeyboardInterrupt, JobCancelled):
        cancelled = True
        raise
    finally:
        restore_sigterm()
        watcher.stop_log(drain=not cancelled)
        # A cancel while the create was in flight may have left the job: delete it too.
        if (cancelled and ownership["ours"]) or (
            created and (delete_policy == "always" or (succeeded and delete_policy == "on-success"))
        ):
            _delete(api_client, kind, spec.namespace, name, log)
        elif created:
            log(f"kept {title} (delete_policy={delete_policy})")


def default_api_client() -> client.ApiClient:
    """The cluster's client: in-cluster config, else the kubeconfig.

    Raises:
        LaunchError: neither is there.
    """
    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            # $KUBECONFIG as it is now (the client reads it once, when imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (ConfigException, OSError) as error:
            raise LaunchError(
                f"no cluster credentials: neither in-cluster config nor a kubeconfig ({error})"
            ) from error
    return client.ApiClient()


def _api_failure(error: ApiException, action: str, namespace: str) -> str:
    if error.status == 403:
        return (
            f"forbidden to {action} in namespace {namespace!r}: {error.reason}. The pipeline's "
            "service account needs the kshot-launcher Role there: apply manifests/base (or its "
            f"gpu overlay) with namespace {namespace!r}; it binds the Role to kshot-launcher, "
            "to default-editor (a Kubeflow profile's pipeline runner) and to pipeline-runner "
            "(standalone Kubeflow Pipelines')."
        )
    return f"could not {action} in namespace {namespace!r}: {error.status} {error.reason}"


def _is_transient(error: ApiException) -> bool:
    return error.status == 429 or (error.status or 0) >= 500


def _is_retryable(error: Exception) -> bool:
    """What a later attempt may not meet: 429, 5xx and connection errors."""
    if isinstance(error, ApiException):
        return _is_transient(error)
    return isinstance(error, (HTTPError, OSError))


def _retrying(call: Callable[[], _T], what: str, deadline: float, log: Callable[[str], None]) -> _T:
    """``call()`` under a ``google.api_core`` :class:`~google.api_core.retry.Retry`: exponential
    backoff on 429, 5xx and connection errors, each logged as it is retried.

    Retries stop at ``deadline`` and after :data:`_MAX_OUTAGE_S`; then a transient
    ``ApiException`` is raised as it came, a connection error as a :class:`LaunchError`. Other API
    errors (403, 404, 409, …) are the caller's to explain, at once.
    """
    bound = [_RETRY_FIRST_S]  # Retry's next delay is drawn below this bound

    def on_error(error: Exception) -> None:
        reason = (
            f"{error.status} {error.reason}"
            if isinstance(error, ApiException)
            else type(error).__name__
        )
        log(f"could not {what} ({reason}); retrying in up to {bound[0]:g} s")
        bound[0] = min(2 * bound[0], _RETRY_MAX_S)

    now = time.monotonic()
    retry = Retry(
        predicate=_is_retryable,
        initial=_RETRY_FIRST_S,
        maximum=_RETRY_MAX_S,
        multiplier=2.0,
        timeout=max(0.0, min(deadline, now + _MAX_OUTAGE_S) - now),
        on_error=on_error,
    )
    try:
        return retry(call)()
    except RetryError as error:
        if isinstance(error.cause, ApiException):
            raise error.cause from None
        raise LaunchError(
            f"could not {what}: the Kubernetes API server is unreachable ({error.cause})"
        ) from error.cause


def _get_job(
    objects: client.CustomObjectsApi,
    kind: JobKind,
    namespace: str,
    name: str,
    deadline: float,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """The job as it is now; None when it does not exist."""
    try:
        return _retrying(
            lambda: objects.get_namespaced_custom_object(
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
                _request_timeout=_REQUEST_TIMEOUT,
            ),
            f"get {kind.plural} {namespace}/{name}",
            deadline,
            log,
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise LaunchError(_api_failure(error, f"get {kind.plural}", namespace)) from error


def _create_or_adopt(
    api_client: client.ApiClient,
    kind: JobKind,
    body: dict[str, Any],
    deadline: float,
    log: Callable[[str], None],
    poll_s: float,
    ownership: dict[str, bool],
) -> bool:
    """Create the job, or adopt the one a previous attempt of this launch left; True if adopted.

    A retried step renders the same name and hash: its job still running or already succeeded is
    watched as if just created; a failed one, or one already being deleted, is waited out (its pods
    too) and created anew. A job of that name with another hash was made by someone else and is
    left alone. ``ownership["ours"]`` says at every moment whether the job of that name, if any, is
    this launch's: what a cancel may delete.
    """
    objects = client.CustomObjectsApi(api_client)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    title = f"{body['kind']} {namespace}/{name}"
    for _ in range(_CREATE_ATTEMPTS):
        ownership["ours"] = True  # a create in flight may land
        try:
            _retrying(
                lambda: objects.create_namespaced_custom_object(
                    kind.group,
                    kind.version,
                    namespace,
                    kind.plural,
                    body,
                    _request_timeout=_REQUEST_TIMEOUT,
                ),
                f"create {title}",
                deadline,
                log,
            )
            return False
        except ApiException as error:
            ownership["ours"] = False
            if error.status != 409:
                raise LaunchError(_create_failure(error, kind, namespace)) from error
        existing = _get_job(objects, kind, namespace, name, deadline, log)
        if existing is None:  # deleted since the clash: create it again
            continue
        theirs = (existing["metadata"].get("annotations") or {}).get(LAUNCH_HASH_ANNOTATION)
        if theirs != body["metadata"]["annotations"][LAUNCH_HASH_ANNOTATION]:
            raise LaunchError(
                f"{title} already exists and was not made by this launch (its "
                f"{LAUNCH_HASH_ANNOTATION} is {theirs!r}); delete it or give the launch another "
                "name"
            )
        ownership["ours"] = True
        if existing["metadata"].get("deletionTimestamp"):
            log(f"{title} from an earlier attempt is being deleted: waiting to create it anew")
        elif not _condition(existing, kind.failed):
            return True
        else:
            log(f"{title} from an earlier attempt failed: replacing it")
            # Foreground: the job goes only after its pods, which the new job's would be mistaken for
            if not _delete(api_client, kind, namespace, name, log, propagation="Foreground"):
                raise LaunchError(f"could not replace the failed {title}: delete it by hand")
        _wait_gone(objects, kind, namespace, name, deadline, log, poll_s)
    raise LaunchError(f"could not create {title}: a job of that name kept reappearing")


def _create_failure(error: ApiException, kind: JobKind, namespace: str) -> str:
    if error.status == 404:
        return (
            f"the API has no {kind.plural}.{kind.group}/{kind.version} (or no namespace "
            f"{namespace!r}): is the Kubeflow operator installed?"
        )
    return _api_failure(error, f"create {kind.plural}.{kind.group}", namespace)


def _wait_gone(
    objects: client.CustomObjectsApi,
    kind: JobKind,
    namespace: str,
    name: str,
    deadline: float,
    log: Callable[[str], None],
    poll_s: float,
) -> None:
    """Wait until a deleted job no longer exists, so that its name can be reused."""
    give_up = min(deadline, time.monotonic() + _GONE_TIMEOUT_S)
    while _get_job(objects, kind, namespace, name, deadline, log) is not None:
        if time.monotonic() > give_up:
            raise LaunchError(
                f"{kind.plural} {namespace}/{name} still exists {_GONE_TIMEOUT_S:g} s after its "
                "deletion (a finalizer?)"
            )
        time.sleep(poll_s)


def _delete(
    api_client: client.ApiClient,
    kind: JobKind,
    namespace: str,
    name: str,
    log: Callable[[str], None],
    propagation: Literal["Background", "Foreground"] = "Background",
) -> bool:
    """Delete the job (retrying briefly); False, after saying why, when that failed."""
    objects = client.CustomObjectsApi(api_client)
    title = f"{kind.plural} {namespace}/{name}"
    try:
        _retrying(
            lambda: objects.delete_namespaced_custom_object(
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
                propagation_policy=propagation,
                _request_timeout=_REQUEST_TIMEOUT,
            ),
            f"delete {title}",
            time.monotonic() + _CLEANUP_S,
            log,
        )
    except ApiException as error:
        if error.status != 404:
            log(f"could not delete {title}: {error.status} {error.reason}")
            return False
    except LaunchError as error:
        log(str(error))
        return False
    log(f"deleted {title}")
    return True


def _raise_on_sigterm(job: str) -> Callable[[], None]:
    """Make SIGTERM raise :class:`JobCancelled` (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def cancel(signum: int, frame: Any) -> None:
        raise JobCancelled(f"cancelled by SIGTERM while waiting for {job}; the job was deleted")

    previous = signal.signal(signal.SIGTERM, cancel)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _condition(job: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type and condition.get("status") == "True":
            return condition
    return None


def _pod_states(pods: list[Any]) -> list[str]:
    """One line per pod: phase, unschedulable reason, each container's waiting/terminated state."""
    lines = []
    for pod in pods:
        parts = [pod.status.phase or "Unknown"]
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                parts.append(f"not scheduled: {condition.reason}: {condition.message}")
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        )
        for status in statuses:
            state = status.state
            if state and state.waiting:
                parts.append(f"{status.name} waiting: {state.waiting.reason}")
                if state.waiting.message:
                    parts[-1] += f": {state.waiting.message}"
            if state and state.terminated and state.terminated.exit_code:
                terminated = state.terminated
                parts.append(
                    f"{status.name} terminated: {terminated.reason} "
                    f"(exit code {terminated.exit_code})"
                )
                if terminated.message:
                    parts[-1] += f": {terminated.message.strip()}"
            last = status.last_state.terminated if status.last_state else None
            if last and last.exit_code:
                parts.append(
                    f"{status.name} previously terminated: {last.reason} (exit code "
                    f"{last.exit_code}), restarts: {status.restart_count}"
                )
        lines.append(f"{pod.metadata.name}: " + "; ".join(parts))
    return lines


def _has_started(pod: Any) -> bool:
    return pod.status.phase in ("Running", "Succeeded", "Failed")


class _JobWatcher:
    """Polls one job and its pods; follows the master pod's log in a thread."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kind: JobKind,
        namespace: str,
        name: str,
        log: Callable[[str], None],
        poll_s: float,
    ) -> None:
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._kind = kind
        self._namespace = namespace
        self._name = name
        self._log = log
        self._poll_s = poll_s
        self._master: Any = None
        self._deadline = math.inf
        self._stop = threading.Event()
        self._lines_logged = 0
        self._muted = False
        self._follower = threading.Thread(target=self._follow_master_log, daemon=True)

    @property
    def _title(self) -> str:
        return f"{self._kind.plural} {self._namespace}/{self._name}"

    def wait(self, timeout_s: float, schedule_timeout_s: float) -> dict[str, Any]:
        """Poll until the job succeeds; raise :class:`LaunchError` on every other end.

        A suspended job (queued by Kueue) is waited for within ``timeout_s`` only: the time its
        pods have to start (``schedule_timeout_s``) runs from its admission.
        """
        start = time.monotonic()
        self._deadline = start + timeout_s
        started = queued = False
        admitted = start
        self._follower.start()
        while True:
            job = self._read_job()
            pods = self._list_pods()
            self._master = next((pod for pod in pods if self._kind.is_master(pod)), self._master)
            if _condition(job, self._kind.succeeded):
                self._log(f"{self._title} succeeded")
                return job
            failed = _condition(job, self._kind.failed)
            if failed:
                raise LaunchError(self._failure_report(failed, pods))
            if self._kind.is_suspended(job):
                if not queued:
                    self._log(f"{self._title} is suspended: waiting for its queue to admit it")
                queued, admitted = True, time.monotonic()
            elif queued:
                self._log(f"{self._title} was admitted")
                queued = False
            started = started or any(_has_started(pod) for pod in pods)
            waited = time.monotonic() - start
            if not started and not queued:
                self._check_not_stuck(pods, time.monotonic() - admitted, schedule_timeout_s)
            if waited > timeout_s:
                raise LaunchError(
                    f"{self._title} timed out: not finished after {timeout_s:g} s\n"
                    + self._describe(pods)
                )
            time.sleep(self._poll_s)

    def stop_log(self, *, drain: bool) -> None:
        """Stop following the log; with ``drain``, first wait briefly for its last lines."""
        self._stop.set()
        if drain and self._follower.is_alive():
            self._follower.join(timeout=_DRAIN_TIMEOUT_S)
        # A follower still blocked on a running container's stream ends when the pod goes.
        self._muted = True

    def _read_job(self) -> dict[str, Any]:
        job = _get_job(
            self._objects, self._kind, self._namespace, self._name, self._deadline, self._log
        )
        if job is None:
            raise LaunchError(f"{self._title} disappeared: deleted by someone else?")
        return job

    def _list_pods(self) -> list[Any]:
        try:
            return _retrying(
                lambda: (
                    self._core.list_namespaced_pod(
                        self._namespace,
                        label_selector=self._kind.pod_selector(self._name),
                        _request_timeout=_REQUEST_TIMEOUT,
                    ).items
                ),
                f"list the pods of {self._title}",
                self._deadline,
                self._log,
            )
        except ApiException as error:
            raise LaunchError(_api_failure(error, "list pods", self._namespace)) from error

    def _check_not_stuck(self, pods: list[Any], waited: float, schedule_timeout_s: float) -> None:
        if waited <= schedule_timeout_s:
            return
        if not pods:
            raise LaunchError(
                f"{self._title}: no pods after {schedule_timeout_s:g} s; is the operator running, "
                "and may it create pods (quota, service account)?"
            )
        unscheduled = [
            pod
            for pod in pods
            if any(
                c.type == "PodScheduled" and c.status == "False"
                for c in pod.status.conditions or []
            )
        ]
        if unscheduled:
            raise LaunchError(
                f"{self._title} never scheduled: {len(unscheduled)} pod(s) Pending after "
                f"{schedule_timeout_s:g} s (not enough GPUs, or tolerations/nodeSelector?)\n"
                + self._describe(pods)
            )
        raise LaunchError(
            f"{self._title} never started: pods not running after {schedule_timeout_s:g} s\n"
            + self._describe(pods)
        )

    def _failure_report(self, condition: dict[str, Any], pods: list[Any]) -> str:
        return (
            f"{self._title} failed: {condition.get('reason', '')}: "
            f"{condition.get('message', '')}\n" + self._describe(pods)
        )

    def _describe(self, pods: list[Any]) -> str:
        lines = ["pods:", *(f"  {line}" for line in _pod_states(pods))] if pods else ["no pods"]
        if self._master is not None:
            lines.append(f"last log lines of {self._master.metadata.name}:")
            lines += [f"  {line}" for line in self._log_tail(self._master.metadata.name)]
        return "\n".join(lines)

    def _log_tail(self, pod_name: str) -> list[str]:
        """The last log lines; those of the previous container when a restart left none yet."""
        lines: list[str] = []
        for previous in (False, True):
            try:
                text = self._core.read_namespaced_pod_log(
                    pod_name,
                    self._namespace,
                    container=self._kind.container,
                    tail_lines=_LOG_TAIL_LINES,
                    previous=previous,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            except ApiException as error:
                lines = [f"(log unavailable: {error.status} {error.reason})"]
                continue
            except (HTTPError, OSError) as error:
                lines = [f"(log unavailable: {error})"]
                continue
            lines = text.splitlines()
            if lines:
                return lines
        return lines or ["(empty)"]

    def _follow_master_log(self) -> None:
        """Send the master's log lines to ``log`` as they come, once each, across reconnects.

        A new container run starts counting lines anew: a restart in place (restart count) or a
        pod recreated under the same name (``restartPolicy: ExitCode``; a new uid).
        Once stopped, one last read without ``follow`` drains what the stream had not delivered.
        """
        container_run: tuple[str, str | None, int] | None = None
        while True:
            stopping = self._stop.is_set()
            master = self._master
            if master is not None and _has_started(master):
                restarts = sum(s.restart_count for s in master.status.container_statuses or [])
                run = (master.metadata.name, master.metadata.uid, restarts)
                if container_run != run:
                    container_run, self._lines_logged = run, 0
                # The pod going away or the connection dropping ends a round; the next reconnects.
                with contextlib.suppress(ApiException, OSError, ValueError, HTTPError):
                    self._stream_log(master.metadata.name, follow=not stopping)
            if stopping:
                return
            self._stop.wait(self._poll_s)

    def _stream_log(self, pod_name: str, *, follow: bool) -> None:
        """Log the pod's lines beyond the ``_lines_logged`` already logged."""
        response = self._core.read_namespaced_pod_log(
            pod_name,
            self._namespace,
            container=self._kind.container,
            follow=follow,
            _preload_content=False,
            _request_timeout=_LOG_FOLLOW_TIMEOUT if follow else _REQUEST_TIMEOUT,
        )
        line_number = 0
        pending = ""
        try:
            for chunk in response.stream(amt=None, decode_content=True):
                *complete, pending = (pending + chunk.decode("utf-8", errors="replace")).split("\n")
                for line in complete:
                    line_number += 1
                    self._log_once(line_number, line)
            if pending and not follow:
                self._log_once(line_number + 1, pending)
        finally:
            response.release_conn()

    def _log_once(self, line_number: int, line: str) -> None:
        if line_number > self._lines_logged and not self._muted:
            self._log(line)
            self._lines_logged = line_number
