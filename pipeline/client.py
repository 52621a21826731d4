"""Upload and run the pipelines on a Kubeflow Pipelines host through ``kfp.Client``.

The host is ``--host``, else kfp's ``$KF_PIPELINES_ENDPOINT``. Authentication is what a Kubeflow
user has at hand: a bearer token (``--existing-token``, else ``$KF_PIPELINES_TOKEN``, e.g. from
``gcloud auth print-access-token`` or ``kubectl create token``, else the token file kfp reads in a
pod: ``$KF_PIPELINES_SA_TOKEN_PATH``, by default ``/var/run/secrets/kubeflow/pipelines/token``
where it exists), and the profile namespace of a multi-user deployment. The token goes only to an ``https://`` host:
sending it in clear text to ``http://`` needs ``allow_insecure_token`` (``--allow-insecure-token``
or ``$KSHOT_ALLOW_INSECURE_TOKEN=1``, e.g. for ``kubectl port-forward`` to localhost). A host that cannot be reached or that refuses
a request gives one :class:`PipelineHostError` line with the URL and the cause.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kfp
import kfp_server_api
from urllib3.exceptions import HTTPError, MaxRetryError

from kshot.pipeline import ENDPOINT_ENV, SA_TOKEN_PATH, SA_TOKEN_PATH_ENV, TOKEN_ENV

__all__ = [
    "TOKEN_ENV",
    "INSECURE_TOKEN_ENV",
    "PipelineHostError",
    "Uploaded",
    "PipelineHost",
    "connect",
    "find_pipeline",
    "find_version",
    "upload",
    "latest_version_id",
    "submit_run",
]

INSECURE_TOKEN_ENV = "KSHOT_ALLOW_INSECURE_TOKEN"
_BODY_CHARS = 300
_HEALTHZ = "/apis/v2beta1/healthz"
_HEALTH_TIMEOUT_S = 30.0


class PipelineHostError(ValueError):
    """The Kubeflow Pipelines host could not be reached or refused a request."""


@dataclass(frozen=True)
class Uploaded:
    """Where an upload landed.

    Attributes:
        pipeline_id: the pipeline's id.
        version_id: the id of the version just uploaded.
        version_name: its name.
        new_pipeline: whether the pipeline was created (else a version was added).
    """

    pipeline_id: str
    version_id: str
    version_name: str
    new_pipeline: bool


def _cause(error: Exception) -> str:
    """One line saying why a request failed."""
    if isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, kfp_server_api.ApiException):
        body = " ".join(str(error.body or "").split())[:_BODY_CHARS]
        return f"HTTP {error.status} {error.reason}" + (f": {body}" if body else "")
    return " ".join(str(error).split())


@contextlib.contextmanager
def _requests(host: str, action: str) -> Iterator[None]:
    """Turn a failed request into a :class:`PipelineHostError` naming ``host`` and ``action``."""
    try:
        yield
    except (HTTPError, kfp_server_api.ApiException) as error:
        raise PipelineHostError(
            f"Kubeflow Pipelines at {host}: could not {action}: {_cause(error)}"
        ) from error


@dataclass(frozen=True)
class PipelineHost:
    """A Kubeflow Pipelines API endpoint and a client logged in to it.

    Attributes:
        url: the endpoint, as given.
        client: the ``kfp.Client``.
        namespace: the user's profile namespace ('' on a single-user deployment).
    """

    url: str
    client: kfp.Client
    namespace: str = ""


def connect(
    host: str,
    existing_token: str | None = None,
    namespace: str = "",
    allow_insecure_token: bool = False,
) -> PipelineHost:
    """A client of the Kubeflow Pipelines API at ``host``.

    Args:
        host: the API endpoint, e.g. ``https://kubeflow.example.com/pipeline`` (https when
            no scheme is given); '' for ``$KF_PIPELINES_ENDPOINT``.
        existing_token: bearer token; default ``$KF_PIPELINES_TOKEN``, else the file named by
            ``$KF_PIPELINES_SA_TOKEN_PATH`` or at kfp's default path (none when neither exists).
        namespace: the user's profile namespace (multi-user Kubeflow); '' for single-user.
        allow_insecure_token: send the token to an ``http://`` host too (also when
            ``$KSHOT_ALLOW_INSECURE_TOKEN`` is ``1``).

    Raises:
        PipelineHostError: no host; the host cannot be reached or refuses the health check; a
            token would go to an ``http://`` host without ``allow_insecure_token``, or the token
            file cannot be read (before any request).
    """
    host = host or os.environ.get(ENDPOINT_ENV, "").strip()
    if not host:
        raise PipelineHostError(
            f"no Kubeflow Pipelines host: give --host URL or set ${ENDPOINT_ENV}"
        )
    if "://" not in host:
        host = f"https://{host}"  # as kfp.Client assumes
    token = existing_token or os.environ.get(TOKEN_ENV) or _token_file()
    allow_insecure_token = allow_insecure_token or os.environ.get(INSECURE_TOKEN_ENV) == "1"
    if token and not host.lower().startswith("https://") and not allow_insecure_token:
        raise PipelineHostError(
            f"Kubeflow Pipelines at {host}: refusing to send the bearer token over an "
            "unencrypted connection; use an https:// host, or pass --allow-insecure-token if "
            "the connection is private (e.g. kubectl port-forward to localhost)"
        )
    _check_health(host, token)
    options: dict[str, Any] = {"host": host, "existing_token": token}
    if namespace:
        options["namespace"] = namespace
    with _requests(host, "connect"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This client only works with", FutureWarning)
        return PipelineHost(host, kfp.Client(**options), namespace)


def _token_file() -> str | None:
    """The token in the file kfp reads in a pod: ``$KF_PIPELINES_SA_TOKEN_PATH`` (which must be
    readable), else :data:`kshot.pipeline.SA_TOKEN_PATH` where it exists; None otherwise."""
    named = os.environ.get(SA_TOKEN_PATH_ENV, "").strip()
    path = named or SA_TOKEN_PATH
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError as error:
        if not named:
            return None
        raise PipelineHostError(
            f"${SA_TOKEN_PATH_ENV} names {named!r}, which cannot be read: {error.strerror}"
        ) from error


def _check_health(host: str, token: str | None) -> None:
    """One request to the health endpoint, so that a bad host or token fails at once.

    (``kfp.Client`` retries a failed health check five times, five seconds apart.)
    """
    request = urllib.request.Request(f"{host.rstrip('/')}{_HEALTHZ}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=_HEALTH_TIMEOUT_S):
            return
    except urllib.error.HTTPError as error:
        body = " ".join(error.read().decode(errors="replace").split())[:_BODY_CHARS]
        cause = f"HTTP {error.code} {error.reason}" + (f": {body}" if body else "")
    except urllib.error.URLError as error:
        cause = " ".join(str(error.reason).split())
    except OSError as error:
        cause = " ".join(str(error).split())
    raise PipelineHostError(f"Kubeflow Pipelines at {host}: could not connect: {cause}")


def upload(
    host: PipelineHost, package_path: str, name: str, version: str = "", description: str = ""
) -> Uploaded:
    """Upload a compiled pipeline: a new pipeline, or a new version of the one named ``name``.

    KFP names a new pipeline's first version after the pipeline; when ``version`` is given, the
    same file is then uploaded as the version of that name too, so that a run can name it.

    Args:
        host: from :func:`connect`; a namespaced host uploads into the profile namespace.
        package_path: the compiled pipeline YAML.
        name: the pipeline's display name.
        version: the version's name; '' for the pipeline's name (a new pipeline) or a UTC
            timestamp (a new version).
        description: shown in the UI.
    """
    pipeline_id = find_pipeline(host, name)
    new_pipeline = pipeline_id is None
    if pipeline_id is None:
        with _requests(host.url, f"upload pipeline {name!r}"):
            pipeline = host.client.upload_pipeline(
                package_path,
                pipeline_name=name,
                description=description or None,
                namespace=host.namespace or None,
            )
        pipeline_id = pipeline.pipeline_id
        if not version or version == name:
            return Uploaded(pipeline_id, latest_version_id(host, pipeline_id), name, True)
    version = version or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    with _requests(host.url, f"upload version {version!r} of pipeline {name!r}"):
        created = host.client.upload_pipeline_version(
            package_path,
            pipeline_version_name=version,
            pipeline_id=pipeline_id,
            description=description or None,
        )
    return Uploaded(pipeline_id, created.pipeline_version_id, version, new_pipeline)


def find_pipeline(host: PipelineHost, name: str, shared_too: bool = False) -> str | None:
    """The id of the pipeline named ``name`` in the host's namespace, None when there is none.

    ``kfp.Client.get_pipeline_id`` lists shared pipelines only, so it misses one uploaded into a
    profile namespace; this asks for the namespace's own.

    Args:
        host: from :func:`connect`.
        name: the pipeline's display name.
        shared_too: when the namespace holds none, look among the shared pipelines too (a run may
            use them; an upload must not add versions to them).

    Raises:
        PipelineHostError: the request failed, or several pipelines have that name.
    """
    namespaces = [host.namespace or None]
    if shared_too and host.namespace:
        namespaces.append(None)
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
    for namespace in namespaces:
        with _requests(host.url, f"look up pipeline {name!r}"):
            listed = host.client.list_pipelines(
                page_size=2, filter=json.dumps({"predicates": [predicate]}), namespace=namespace
            )
        found = listed.pipelines or []
        if len(found) > 1:
            where = f"namespace {namespace!r}" if namespace else "the shared pipelines"
            raise PipelineHostError(
                f"Kubeflow Pipelines at {host.url}: several pipelines are named {name!r} in "
                f"{where}: give --pipeline-id"
            )
        if found:
            return found[0].pipeline_id
    return None


def find_version(host: PipelineHost, pipeline_id: str, name: str) -> str:
    """The id of the version named ``name`` of pipeline ``pipeline_id``.

    Raises:
        PipelineHostError: the request failed, or the pipeline has no version of that name (or
            several).
    """
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
    with _requests(host.url, f"look up version {name!r} of pipeline {pipeline_id}"):
        listed = host.client.list_pipeline_versions(
            pipeline_id, page_size=2, filter=json.dumps({"predicates": [predicate]})
        )
    found = listed.pipeline_versions or []
    if len(found) != 1:
        why = "no version" if not found else "several versions"
        raise PipelineHostError(
            f"Kubeflow Pipelines at {host.url}: pipeline {pipeline_id} has {why} named {name!r}; "
            "give --version-id"
        )
    return found[0].pipeline_version_id


def latest_version_id(host: PipelineHost, pipeline_id: str) -> str:
    """The id of the newest version of pipeline ``pipeline_id``."""
    with _requests(host.url, f"list the versions of pipeline {pipeline_id}"):
        listed = host.client.list_pipeline_versions(
            pipeline_id, page_size=1, sort_by="created_at desc"
        )
    if not listed.pipeline_versions:
        raise PipelineHostError(
            f"Kubeflow Pipelines at {host.url}: pipeline {pipeline_id} has no version"
        )
    return listed.pipeline_versions[0].pipeline_version_id


def submit_run(
    host: PipelineHost,
    experiment: str,
    run_name: str,
    arguments: Mapping[str, Any],
    package_path: str | None = None,
    pipeline_id: str | None = None,
    version_id: str | None = None,
    service_account: str = "",
    pipeline_root: str = "",
) -> str:
    """Start a run of a compiled package, or of an uploaded pipeline version.

    Args:
        host: from :func:`connect`; a namespaced host runs in the profile namespace.
        experiment: the experiment's name (created when missing).
        run_name: the run's display name.
        arguments: pipeline parameters.
        package_path: a compiled pipeline YAML; or:
        pipeline_id: an uploaded pipeline, with
        version_id: its version (default: the newest).
        service_account: the Kubernetes service account of the run's pods ('' for the default).
        pipeline_root: where the run's artifacts go ('' for the pipeline's or the host's default).

    Returns:
        The run's id.
    """
    if pipeline_id and not version_id:
        version_id = latest_version_id(host, pipeline_id)
    with _requests(host.url, f"create experiment {experiment!r}"):
        found = host.client.create_experiment(experiment, namespace=host.namespace or None)
    with _requests(host.url, f"create run {run_name!r}"):
        run = host.client.run_pipeline(
            experiment_id=found.experiment_id,
            job_name=run_name,
            pipeline_package_path=package_path,
            params=dict(arguments),
            pipeline_id=pipeline_id or None,
            version_id=version_id or None,
            service_account=service_account or None,
            pipeline_root=pipeline_root or None,
        )
    return run.run_id
