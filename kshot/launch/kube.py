"""Run a stage as a PyTorchJob or TrainJob on Kubernetes: create it, follow it, clean it up.

:func:`run_job` validates everything first (so bad input leaves nothing behind), reads what it
needs from the cluster (:mod:`kshot.launch.cluster`), renders the job (:mod:`kshot.launch.jobs`),
creates it through ``CustomObjectsApi`` in ``spec.namespace``, and watches it to its end
(:mod:`kshot.launch.watch`), which reports every way a job can end badly as a
:class:`~kshot.launch.spec.LaunchError` that says why. The job is then deleted per
``delete_policy`` — and always when the wait is cancelled (Ctrl-C, or SIGTERM as when Kubeflow
Pipelines stops a run), so a cancelled step leaves no GPUs busy. This module is that lifecycle:
create or adopt, wait, delete.

A retried KFP step renders the same job name: a job of that very launch (same
:data:`~kshot.launch.jobs.LAUNCH_HASH_ANNOTATION`) that is still running or has succeeded is
adopted and watched as if just created; a failed one is replaced. A launcher killed outright leaves
its job behind: the PyTorchJob's ``activeDeadlineSeconds`` (the launcher's timeout) and
``ttlSecondsAfterFinished`` let the operator stop and remove it. Every API call has a request
timeout and is retried on 429, 5xx and connection errors (:mod:`kshot.launch.kube_api`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kshot.launch.cluster import (
    LAUNCH_DEFAULTS_CONFIGMAP,
    default_api_client,
    detect_trainer_version,
    load_launch_defaults,
)
from kshot.launch.jobs import (
    DEFAULT_TIMEOUT_S,
    JOB_KINDS,
    LAUNCH_HASH_ANNOTATION,
    Backend,
    JobKind,
    job_condition,
    render_job,
)
from kshot.launch.kube_api import REQUEST_TIMEOUT, api_failure, get_job, retrying
from kshot.launch.spec import LaunchError, LaunchSpec
from kshot.launch.trainjob import DEFAULT_TRAINER_VERSION, trainer_api
from kshot.launch.watch import JobWatcher

__all__ = ["run_job", "DeletePolicy", "JobCancelled"]

DeletePolicy = Literal["always", "on-success", "never"]
_DELETE_POLICIES = ("always", "on-success", "never")
# How long the final delete keeps retrying (a cancelled pod has a short grace period).
_CLEANUP_S = 20.0
# How long a failed job being replaced may take to go away.
_GONE_TIMEOUT_S = 120.0
# A job of the same name that keeps reappearing is not ours to fight over.
_CREATE_ATTEMPTS = 3


class JobCancelled(LaunchError):
    """The wait was cancelled (SIGTERM); the job has been deleted."""


def run_job(
    spec: LaunchSpec,
    backend: Backend = "pytorchjob",
    *,
    api_client: client.ApiClient | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
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
        pod_overrides: :data:`kshot.launch.pods.POD_OVERRIDE_KEYS`; None: read the
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
    watcher = JobWatcher(api_client, kind, spec.namespace, name, log, poll_s)
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
            retrying(
                lambda: objects.create_namespaced_custom_object(
                    kind.group,
                    kind.version,
                    namespace,
                    kind.plural,
                    body,
                    _request_timeout=REQUEST_TIMEOUT,
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
        existing = get_job(objects, kind, namespace, name, deadline, log)
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
        elif not job_condition(existing, kind.failed):
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
    return api_failure(error, f"create {kind.plural}.{kind.group}", namespace)


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
    while get_job(objects, kind, namespace, name, deadline, log) is not None:
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
        retrying(
            lambda: objects.delete_namespaced_custom_object(
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
                propagation_policy=propagation,
                _request_timeout=REQUEST_TIMEOUT,
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
