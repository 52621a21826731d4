"""One Kubernetes API call made to survive a flaky API server, and explained when it is refused.

Every call of the launcher has a request timeout (:data:`REQUEST_TIMEOUT`); :func:`retrying` runs
it with exponential backoff on 429, 5xx and connection errors (within the launch's deadline), so
one flaky response does not kill a week of training; :func:`api_failure` turns a refusal into a
message that says what to fix (for a 403: which Role the service account lacks). The cluster
queries (:mod:`kshot.launch.cluster`), the job's lifecycle (:mod:`kshot.launch.kube`) and its
watcher (:mod:`kshot.launch.watch`) all call the API through these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core.exceptions import RetryError
from google.api_core.retry import Retry
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kshot.launch.jobs import JobKind
from kshot.launch.spec import LaunchError

__all__ = ["REQUEST_TIMEOUT", "api_failure", "retrying", "get_job"]

# (connect, read) seconds of one API call; the client ignores a lone float.
REQUEST_TIMEOUT = (10.0, 30.0)
# Backoff of retried API calls (google.api_core's Retry, as kshot.storage's requests, jittered
# below these bounds): first delay, largest delay, longest outage tolerated.
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0
_MAX_OUTAGE_S = 900.0
_T = TypeVar("_T")


def api_failure(error: ApiException, action: str, namespace: str) -> str:
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


def retrying(call: Callable[[], _T], what: str, deadline: float, log: Callable[[str], None]) -> _T:
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


def get_job(
    objects: client.CustomObjectsApi,
    kind: JobKind,
    namespace: str,
    name: str,
    deadline: float,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """The job as it is now; None when it does not exist."""
    try:
        return retrying(
            lambda: objects.get_namespaced_custom_object(
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
                _request_timeout=REQUEST_TIMEOUT,
            ),
            f"get {kind.plural} {namespace}/{name}",
            deadline,
            log,
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise LaunchError(api_failure(error, f"get {kind.plural}", namespace)) from error
