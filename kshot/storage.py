"""Artifact URIs: local paths, ``gs://``, ``s3://`` and ``minio://`` objects through one set of
functions.

Every stage and worker reads and writes through this module, so a run can live on a laptop disk, in
a Google Cloud Storage bucket or in an S3-compatible store (AWS S3, MinIO, SeaweedFS) without the
callers knowing which. ``minio://`` is Kubeflow Pipelines' own artifact store (its default pipeline
root, ``minio://mlpipeline/v2/artifacts``: MinIO, or SeaweedFS in newer releases), an S3-compatible
server found as KFP's launcher finds it. Each object store is one :class:`_ObjectStore` (``_Gcs``,
``_S3``); the public functions below are written once for all of them.

Guarantees:

* **Whole or nothing.** A local file is written under a temporary name in its own folder and renamed
  into place. An object is written to a local temporary file first and then uploaded in one upload:
  on GCS a single multipart request up to 8 MiB, a resumable upload in 8 MiB chunks above that; on
  S3 one ``PutObject`` up to 8 MiB, a multipart upload of 8 MiB parts above that. Both stores
  commit an object only when its upload completes, so readers see the previous version or the new
  one, never a part; an upload that fails or is abandoned creates nothing (an unfinished S3
  multipart upload is aborted).
* **Safe retries of writes.** Each upload carries a precondition on the object's version read just
  before: on GCS ``if_generation_match`` (0 when it must not exist yet), on S3 ``If-Match`` with
  its ETag (``If-None-Match: *`` when it must not exist yet). A retry therefore never replaces what
  another writer put there meanwhile. A retry whose first attempt did land fails the precondition;
  the write then counts as done if the object holds exactly these bytes (size and MD5; on S3 the
  MD5 travels in the object's ``kshot-md5`` metadata, since a multipart ETag is no MD5), and
  otherwise raises :class:`StorageError`: another writer replaced it (stages give each worker its
  own URIs, so that is a bug to see, not to paper over). An S3-compatible store that ignores these
  headers gets unconditional whole-object writes.
* **Streaming.** Uploads and downloads go through a local temporary file, so a large checkpoint is
  never held in memory twice. A download cut off part-way resumes from the bytes it has, of the
  same object version (GCS: the library's own; S3: ``Range`` and ``If-Match`` its ETag).
* **Retries.** Every request is retried on HTTP 408, 429, 5xx, throttling, dropped connections and
  timeouts (on GCS the library's ``DEFAULT_RETRY``; uploads under its conditional form, which
  retries only requests that carry a generation precondition), with exponential backoff bounded by
  ``KSHOT_STORAGE_RETRY_DEADLINE`` seconds (default 300) starting at
  ``KSHOT_STORAGE_RETRY_INITIAL_DELAY`` seconds (default 1). An S3 multipart upload retries each
  part on its own, so a fault costs one 8 MiB part, not the whole file. When the deadline passes,
  :class:`StorageError` names the URI and the last cause.
* **Conditional writes** for leases (:mod:`kshot.lease`): :func:`create_if_absent`,
  :func:`read_versioned`, :func:`replace_if_generation` and :func:`delete_if_generation` act on one
  small object only when its version is the one named, as the store decides on the server: GCS's
  ``ifGenerationMatch`` on the generation, S3's ``If-None-Match: *`` and ``If-Match: <ETag>`` on
  the ETag (:data:`Generation`, opaque to callers). They are the whole interface an object store
  needs for one writer per output. Local paths use lock files instead.
* **Clear errors.** A malformed URI raises :class:`ValueError`, a missing bucket or object
  :class:`FileNotFoundError`, a refused request or missing credentials :class:`PermissionError`,
  each naming the URI.

Credentials come from the environment. ``gs://``: Workload Identity / Application Default
Credentials; when ``STORAGE_EMULATOR_HOST`` is set, the client talks to that endpoint anonymously.
``s3://``: boto3's chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a web identity such
as EKS IRSA, a profile); ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) points it at MinIO,
SeaweedFS or another S3-compatible server, which boto3 then addresses path-style
(``http://host:9000/bucket/key``), as such servers expect. ``minio://``: the endpoint
:func:`minio_endpoint` (a ``minio-service`` of the pod's namespace, else KFP's store as its 2.17
launcher finds it by default, ``seaweedfs.kubeflow:9000``), the keys of KFP's Secret
:data:`MINIO_SECRET` in the environment variables of :data:`MINIO_SECRET_KEYS` (the pipeline's
steps and the jobs they launch get them from the Secret), else boto3's chain.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import google.auth.exceptions
import requests
import torch
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from google.cloud.storage import exceptions as gcs_exceptions
from google.cloud.storage.retry import (
    DEFAULT_RETRY,
    ConditionalRetryPolicy,
    is_generation_specified,
)

from kshot.uris import is_gcs, is_minio, is_remote, is_s3, parse_remote

__all__ = [
    "RETRY_DEADLINE_ENV",
    "RETRY_INITIAL_DELAY_ENV",
    "S3_ENDPOINT_ENVS",
    "MINIO_ENDPOINT_ENV",
    "MINIO_REGION_ENV",
    "MINIO_SECRET",
    "MINIO_SECRET_KEYS",
    "minio_endpoint",
    "StorageError",
    "UnsafeFileError",
    "is_gcs",
    "is_s3",
    "is_minio",
    "is_remote",
    "parse_gcs",
    "parse_remote",
    "check_uri",
    "check_writable",
    "join",
    "exists",
    "read_bytes",
    "read_range",
    "write_bytes",
    "read_text",
    "write_text",
    "read_json",
    "write_json",
    "save_torch",
    "load_torch",
    "open_write",
    "local_copy",
    "list_uris",
    "delete",
    "upload_dir",
    "download_dir",
    "digest",
    "Generation",
    "create_if_absent",
    "read_versioned",
    "replace_if_generation",
    "delete_if_generation",
]

RETRY_DEADLINE_ENV = "KSHOT_STORAGE_RETRY_DEADLINE"
RETRY_INITIAL_DELAY_ENV = "KSHOT_STORAGE_RETRY_INITIAL_DELAY"
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where ``s3://`` requests go, first set wins (boto3's own settings); unset: AWS S3."""
MINIO_ENDPOINT_ENV = "KSHOT_MINIO_ENDPOINT"
"""Where ``minio://`` requests go, when set (else :func:`minio_endpoint` finds KFP's store)."""
MINIO_REGION_ENV = "KSHOT_MINIO_REGION"
"""The region ``minio://`` requests are signed for (default ``us-east-1``, MinIO's own); the
``AWS_*`` region of the pod (EKS sets one) belongs to ``s3://``."""
MINIO_SECRET = "mlpipeline-minio-artifact"
"""KFP's Secret with its artifact store's keys, in every namespace that runs pipelines."""
MINIO_SECRET_KEYS = {"accesskey": "KSHOT_MINIO_ACCESS_KEY", "secretkey": "KSHOT_MINIO_SECRET_KEY"}
"""The data keys of :data:`MINIO_SECRET` → the environment variables that carry them into pods."""
# A minio-service of the pod's own namespace (the variables Kubernetes sets for a Service; older
# installs ran MinIO there), else the default endpoint of KFP 2.17's launcher: its SeaweedFS in the
# kubeflow namespace, on the S3 port it keeps for MinIO's clients.
_MINIO_SERVICE_ENVS = ("MINIO_SERVICE_SERVICE_HOST", "MINIO_SERVICE_SERVICE_PORT")
_MINIO_DEFAULT_ENDPOINT = "http://seaweedfs.kubeflow:9000"
_DEFAULT_RETRY_DEADLINE_S = 300.0
_DEFAULT_RETRY_INITIAL_DELAY_S = 1.0
_RETRY_MAX_DELAY_S = 30.0
_UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # a multiple of 256 KiB (GCS resumable), over 5 MiB (S3 part)
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024  # what a download cut off part-way loses at most (S3)
_EMULATOR_PROJECT = "kshot-emulator"
_PARTIAL_SUFFIX = ".partial"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# The object stores by URI scheme, with the form their URIs take. A URI whose scheme is not here, or
# one of these without "//" after the colon, is refused rather than taken for a local file name.
_REMOTE_FORMS = {"gs": "gs://bucket/key", "s3": "s3://bucket/key", "minio": "minio://bucket/key"}
_S3_MD5_METADATA = "kshot-md5"

_T = TypeVar("_T")


class StorageError(OSError):
    """A storage request that failed for good (retries exhausted or a non-retryable answer)."""


# --------------------------------------------------------------------------------------- URIs


def minio_endpoint() -> str:
    """The URL of KFP's artifact store: ``$KSHOT_MINIO_ENDPOINT``; else the ``minio-service`` of
    this pod's namespace; else ``http://seaweedfs.kubeflow:9000``, where KFP 2.17's launcher finds
    its store by default. (A ``kfp-launcher`` ConfigMap that points KFP elsewhere needs the same
    endpoint in ``KSHOT_MINIO_ENDPOINT``.)"""
    if os.environ.get(MINIO_ENDPOINT_ENV):
        return os.environ[MINIO_ENDPOINT_ENV]
    host, port = (os.environ.get(name) for name in _MINIO_SERVICE_ENVS)
    if host and port:
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return _MINIO_DEFAULT_ENDPOINT


def parse_gcs(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/key`` into ``("bucket", "key")``, as :func:`parse_remote` does.

    Raises:
        ValueError: ``uri`` is not ``gs://``, has no bucket, or the bucket name breaks GCS rules.
    """
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    return parse_remote(uri)


def _store(uri: str) -> _ObjectStore | None:
    """The object store of a ``gs://``, ``s3://`` or ``minio://`` URI, None for local paths;
    refuses empty URIs, other schemes and malformed ones (``gs:/bucket/x``, ``s3:bucket``), which
    would otherwise become local files."""
    if not uri:
        raise ValueError(
            "empty URI: expected a local path, gs://bucket/key, s3://bucket/key or "
            "minio://bucket/key"
        )
    if is_gcs(uri):
        return _GCS
    if is_s3(uri):
        return _S3_STORE
    if is_minio(uri):
        return _MINIO_STORE
    scheme = _SCHEME_RE.match(uri)
    if scheme is None:
        return None
    name, rest = scheme.group(1), uri[scheme.end() :]
    supported = ", ".join(_REMOTE_FORMS.values())
    if rest.startswith("//"):
        raise ValueError(
            f"unsupported URI scheme {name!r} in {uri!r}: use a local path, {supported}"
        )
    if name in _REMOTE_FORMS or rest.startswith("/"):
        raise ValueError(
            f"malformed URI {uri!r}: the scheme {name + ':'!r} must be followed by '//' "
            f"(e.g. {name}://bucket/key); use a local path, {supported}"
        )
    return None


def check_uri(uri: str) -> None:
    """Raise :class:`ValueError` for an empty or malformed URI (no request is made)."""
    if _store(uri):
        parse_remote(uri)


def check_writable(uri: str, folder: bool = False) -> None:
    """Fail before any work when nothing could ever be written at ``uri``, or when ``uri`` is of
    the other kind than the artifact: a file (``folder=False``) or a folder of files.

    Raises:
        ValueError: ``uri`` is malformed, a local path runs through a regular file, a file URI
            names a bucket, ends in ``/`` or is an existing folder, or a folder URI is a file.
        FileNotFoundError: the bucket of a ``gs://`` or ``s3://`` URI does not exist.
        PermissionError: the nearest existing local folder is not writable.
    """
    expected = "a folder" if folder else "a file"
    store = _store(uri)
    if store:
        bucket, key = parse_remote(uri) if folder else _object_ref(uri)
        if not store.bucket_exists(uri, bucket):
            raise FileNotFoundError(_missing_bucket(uri, bucket))
        if folder and key.strip("/") and store.object_exists(uri.rstrip("/")):
            raise ValueError(f"{uri} is an object (a file), but {expected} is expected here")
        if not folder and store.list_keys(uri):
            raise ValueError(
                f"{uri} is a folder (objects lie under it), but {expected} is expected"
            )
        return
    path = Path(uri).absolute()
    if not folder and (uri.endswith("/") or path.is_dir()):
        raise ValueError(f"{uri} is a folder, but {expected} is expected here")
    if folder and path.is_file():
        raise ValueError(f"{uri} is a file, but {expected} is expected here")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != path and not ancestor.is_dir():
        raise ValueError(f"cannot write {uri}: {ancestor} is a file, not a folder")
    if not os.access(ancestor if ancestor.is_dir() else ancestor.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {uri}: {ancestor} is not writable")


def _object_ref(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of a URI that must name one object (not a bucket or a folder)."""
    bucket, key = parse_remote(uri)
    if not key or key.endswith("/"):
        scheme = uri.partition("://")[0]
        raise ValueError(
            f"URI {uri!r} names a bucket or folder, not an object: expected {scheme}://bucket/key"
        )
    return bucket, key


def _folder_prefix(key: str) -> str:
    """The listing prefix of everything inside folder ``key`` (``""`` for the whole bucket)."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


def _bucket_uri(uri: str, bucket: str) -> str:
    return f"{uri.partition('://')[0]}://{bucket}"


def join(uri: str, *parts: str) -> str:
    """``join("gs://b/run", "ckpt", "e1.pt")`` → ``"gs://b/run/ckpt/e1.pt"``; paths likewise."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


# ------------------------------------------------------------------------- retries & errors


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a number of seconds"
        ) from None
    if not seconds > 0:
        raise ValueError(
            f"environment variable {name}={raw!r} must be a positive number of seconds"
        )
    return seconds


def _retry_deadline() -> float:
    return _env_seconds(RETRY_DEADLINE_ENV, _DEFAULT_RETRY_DEADLINE_S)


def _retry_policy() -> Retry:
    """GCS's ``DEFAULT_RETRY`` with this module's deadline and delays (other stores swap in their
    own predicate of what to retry)."""
    deadline = _retry_deadline()
    initial = min(_env_seconds(RETRY_INITIAL_DELAY_ENV, _DEFAULT_RETRY_INITIAL_DELAY_S), deadline)
    return DEFAULT_RETRY.with_timeout(deadline).with_delay(
        initial=initial, maximum=max(initial, _RETRY_MAX_DELAY_S), multiplier=2.0
    )


def _gave_up(action: str, uri: str, err: api_exceptions.RetryError) -> StorageError:
    return StorageError(
        f"{action} {uri} failed: still failing after retrying for {_retry_deadline():g} s "
        f"(set {RETRY_DEADLINE_ENV} to wait longer); last error: {err.cause!r}"
    )


def _missing_bucket(uri: str, bucket: str) -> str:
    return f"{uri}: bucket {_bucket_uri(uri, bucket)} does not exist (or these credentials cannot see it)"


def _not_found_message(uri: str, store: _ObjectStore) -> str:
    bucket, _ = parse_remote(uri)
    try:
        bucket_exists = store.bucket_exists(uri, bucket)
    except OSError:
        return f"{uri} does not exist"
    return f"{uri} does not exist" if bucket_exists else _missing_bucket(uri, bucket)


def _changed_by_another_writer(uri: str, expected: str, now: str) -> StorageError:
    return StorageError(
        f"writing {uri}: another writer changed it during this write ({expected} expected, now "
        f"{now}); left as it is. Give each writer its own URI"
    )


def _md5_base64(local_file: Path) -> str:
    """The MD5 of ``local_file`` as GCS reports it (base64), read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with local_file.open("rb") as f:
        while chunk := f.read(_UPLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


class _ObjectStore:
    """The requests the public functions need from one object store.

    Every method takes the URI it works on for its errors, retries as the module's notes say, and
    raises this module's errors (``FileNotFoundError``, ``PermissionError``, ``StorageError``).
    """

    def bucket_exists(self, uri: str, bucket: str) -> bool:
        raise NotImplementedError

    def object_exists(self, uri: str) -> bool:
        raise NotImplementedError

    def list_keys(self, uri: str) -> list[str]:
        """Object keys inside the folder ``uri`` (the whole bucket for ``scheme://bucket``),
        sorted."""
        raise NotImplementedError

    def read_bytes(self, uri: str) -> bytes:
        raise NotImplementedError

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the object at ``uri`` (one ranged GET)."""
        raise NotImplementedError

    def download(self, uri: str, f: IO[bytes]) -> None:
        """Stream the object at ``uri`` into the open file ``f`` (written from its start)."""
        raise NotImplementedError

    def upload(self, local_file: Path, uri: str) -> None:
        """Upload ``local_file`` to ``uri`` under a precondition (see the module's notes).

        Raises:
            StorageError: another writer replaced the object during this write.
        """
        raise NotImplementedError

    def delete_object(self, uri: str) -> None:
        """Delete the object at ``uri``; one already gone counts as deleted."""
        raise NotImplementedError


# ---------------------------------------------------------------------- Google Cloud Storage

_NO_GCS_CREDENTIALS = (
    "no usable Google Cloud credentials ({err}). On GKE give the pod's service account Workload "
    "Identity (manifests/); elsewhere run `gcloud auth application-default login` or set "
    "GOOGLE_APPLICATION_CREDENTIALS; STORAGE_EMULATOR_HOST points gs:// at an emulator"
)


class _Gcs(_ObjectStore):
    """``gs://`` through google-cloud-storage, whose requests retry under :func:`_retry_policy`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, str | None], gcs.Client] | None = None

    def client(self) -> gcs.Client:
        """One client per process and endpoint (a forked worker or a new emulator gets a fresh
        one)."""
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
        identity = (os.getpid(), endpoint)
        with self._lock:
            if self._cached is None or self._cached[0] != identity:
                if endpoint:
                    project = os.environ.get("GOOGLE_CLOUD_PROJECT", _EMULATOR_PROJECT)
                    client = gcs.Client(project=project, credentials=AnonymousCredentials())
                else:
                    try:
                        client = gcs.Client()
                    except google.auth.exceptions.GoogleAuthError as err:
                        raise PermissionError(_NO_GCS_CREDENTIALS.format(err=err)) from err
                self._cached = (identity, client)
            return self._cached[1]

    def call(self, uri: str, action: str, operation: Callable[[Retry], _T]) -> _T:
        """Run ``operation(retry_policy)`` and turn library errors into errors that name
        ``uri``."""
        try:
            return operation(_retry_policy())
        except api_exceptions.NotFound as err:
            raise FileNotFoundError(_not_found_message(uri, self)) from err
        except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as err:
            raise PermissionError(f"{action} {uri}: permission denied: {err.message}") from err
        except google.auth.exceptions.GoogleAuthError as err:
            raise PermissionError(
                f"{action} {uri}: " + _NO_GCS_CREDENTIALS.format(err=err)
            ) from err
        except api_exceptions.RetryError as err:
            raise _gave_up(action, uri, err) from err
        except (
            api_exceptions.GoogleAPIError,
            gcs_exceptions.InvalidResponse,
            gcs_exceptions.DataCorruption,
            requests.RequestException,
        ) as err:
            raise StorageError(f"{action} {uri} failed: {err!r}") from err

    def bucket_exists(self, uri: str, bucket: str) -> bool:
        return self.call(
            uri,
            "checking the bucket of",
            lambda retry: self.client().bucket(bucket).exists(retry=retry),
        )

    def _blob(self, uri: str, **kwargs: Any) -> gcs.Blob:
        bucket, key = _object_ref(uri)
        return self.client().bucket(bucket).blob(key, **kwargs)

    def object_exists(self, uri: str) -> bool:
        blob = self._blob(uri)
        return self.call(uri, "checking", lambda retry: blob.exists(retry=retry))

    def list_keys(self, uri: str) -> list[str]:
        bucket, key = parse_remote(uri)
        prefix = _folder_prefix(key)

        def list_all(retry: Retry) -> list[str]:
            blobs = self.client().list_blobs(bucket, prefix=prefix, retry=retry)
            return sorted(blob.name for blob in blobs if not blob.name.endswith("/"))

        return self.call(uri, "listing", list_all)

    def read_bytes(self, uri: str) -> bytes:
        blob = self._blob(uri)
        return self.call(uri, "reading", lambda retry: blob.download_as_bytes(retry=retry))

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        blob = self._blob(uri)
        end = start + length - 1  # inclusive
        return self.call(
            uri,
            "reading",
            lambda retry: blob.download_as_bytes(start=start, end=end, retry=retry, checksum=None),
        )

    def download(self, uri: str, f: IO[bytes]) -> None:
        blob = self._blob(uri)
        self.call(uri, "downloading", lambda retry: blob.download_to_file(f, retry=retry))

    def upload(self, local_file: Path, uri: str) -> None:
        bucket_name, key = _object_ref(uri)
        bucket = self.client().bucket(bucket_name)
        blob = bucket.blob(key, chunk_size=_UPLOAD_CHUNK_BYTES)

        def upload(retry: Retry) -> None:
            current = bucket.get_blob(key, retry=retry)
            generation = current.generation if current is not None else 0
            try:
                blob.upload_from_filename(
                    str(local_file),
                    if_generation_match=generation,
                    retry=ConditionalRetryPolicy(retry, is_generation_specified, ["query_params"]),
                )
            except api_exceptions.PreconditionFailed as error:
                found = bucket.get_blob(key, retry=retry)
                if not (
                    found is not None
                    and found.size == local_file.stat().st_size
                    and found.md5_hash == _md5_base64(local_file)
                ):
                    now = f"generation {found.generation}" if found is not None else "deleted"
                    raise _changed_by_another_writer(
                        uri, f"generation {generation}", now
                    ) from error

        self.call(uri, "uploading to", upload)

    def delete_object(self, uri: str) -> None:
        blob = self._blob(uri)
        # Gone by now (a retry whose first attempt landed, or another deleter): the goal is reached.
        with contextlib.suppress(FileNotFoundError):
            self.call(uri, "deleting", lambda retry: blob.delete(retry=retry))


# ------------------------------------------------------------------------ S3-compatible stores

_NO_S3_CREDENTIALS = (
    "no usable S3 credentials ({err}). Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for MinIO "
    "or SeaweedFS: its access key and secret key), give the pod a web identity (EKS IRSA) or "
    "name a profile in AWS_PROFILE; AWS_ENDPOINT_URL_S3 points s3:// at a server other than AWS"
)
_S3_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_S3_RETRYABLE_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "Throttling",
        "ThrottlingException",
        "SlowDown",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
    }
)
_S3_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_S3_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


def _s3_status(err: botocore.exceptions.ClientError) -> int | None:
    return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _s3_code(err: botocore.exceptions.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _s3_retryable(err: Exception) -> bool:
    """Whether an S3 request that raised ``err`` may succeed when sent again."""
    if isinstance(
        err,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.IncompleteReadError,
    ):
        return True
    if isinstance(err, botocore.exceptions.ClientError):
        return _s3_status(err) in _S3_RETRYABLE_STATUS or _s3_code(err) in _S3_RETRYABLE_CODES
    return False


def _s3_missing(err: botocore.exceptions.ClientError) -> bool:
    return _s3_status(err) == 404 or _s3_code(err) in _S3_NOT_FOUND_CODES


class _PreconditionFailed(Exception):
    """An S3 upload's ``If-Match`` / ``If-None-Match`` did not hold (HTTP 412), or the multipart
    upload it completes is gone: the object may hold this write's bytes or another writer's."""


class _S3(_ObjectStore):
    """An S3-compatible store through boto3; botocore sends each request once and :meth:`call`
    retries.

    Args:
        connection: the client's arguments (``endpoint_url``, keys, region), read from the
            environment at each request.
        no_credentials: what to tell a caller without credentials (``{err}``: boto's words).
    """

    def __init__(self, connection: Callable[[], dict[str, str]], no_credentials: str) -> None:
        self._connection = connection
        self._no_credentials = no_credentials
        self._lock = threading.Lock()
        self._cached: tuple[tuple[Any, ...], Any] | None = None

    def client(self) -> Any:
        """One client per process and connection (boto3 clients are thread-safe, sessions not)."""
        connection = self._connection()
        identity = (os.getpid(), *sorted(connection.items()))
        with self._lock:
            if self._cached is None or self._cached[0] != identity:
                # retried by call(), under the deadline
                config = botocore.config.Config(retries={"total_max_attempts": 1})
                client = boto3.session.Session().client("s3", config=config, **connection)
                self._cached = (identity, client)
            return self._cached[1]

    def call(self, uri: str, action: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation()`` under the retry policy and turn boto errors into errors that name
        ``uri``."""
        retry = _retry_policy().with_predicate(_s3_retryable)
        try:
            return retry(operation)()
        except botocore.exceptions.ClientError as err:
            message = err.response.get("Error", {}).get("Message") or _s3_code(err)
            if _s3_missing(err):
                raise FileNotFoundError(_not_found_message(uri, self)) from err
            if _s3_status(err) == 403 or _s3_code(err) in _S3_DENIED_CODES:
                raise PermissionError(f"{action} {uri}: permission denied: {message}") from err
            raise StorageError(f"{action} {uri} failed: {_s3_code(err)}: {message}") from err
        except (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
        ) as err:
            raise PermissionError(
                f"{action} {uri}: " + self._no_credentials.format(err=err)
            ) from err
        except api_exceptions.RetryError as err:
            raise _gave_up(action, uri, err) from err
        except botocore.exceptions.BotoCoreError as err:
            raise StorageError(f"{action} {uri} failed: {err!r}") from err

    def bucket_exists(self, uri: str, bucket: str) -> bool:
        def head() -> bool:
            try:
                self.client().head_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as err:
                if _s3_missing(err):
                    return False
                raise
            return True

        return self.call(uri, "checking the bucket of", head)

    def _head(self, uri: str) -> dict[str, Any] | None:
        """The object's ``HeadObject`` answer, None when there is none."""
        bucket, key = _object_ref(uri)

        def head() -> dict[str, Any] | None:
            try:
                return self.client().head_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as err:
                if _s3_missing(err):
                    return None
                raise

        return self.call(uri, "checking", head)

    def object_exists(self, uri: str) -> bool:
        return self._head(uri) is not None

    def list_keys(self, uri: str) -> list[str]:
        bucket, key = parse_remote(uri)
        prefix = _folder_prefix(key)

        def list_all() -> list[str]:
            pages = (
                self.client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix)
            )
            keys = (item["Key"] for page in pages for item in page.get("Contents", []))
            return sorted(k for k in keys if not k.endswith("/"))

        return self.call(uri, "listing", list_all)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = _object_ref(uri)
        return self.call(
            uri,
            "reading",
            lambda: self.client().get_object(Bucket=bucket, Key=key)["Body"].read(),
        )

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        bucket, key = _object_ref(uri)
        span = f"bytes={start}-{start + length - 1}"
        return self.call(
            uri,
            "reading",
            lambda: self.client().get_object(Bucket=bucket, Key=key, Range=span)["Body"].read(),
        )

    def download(self, uri: str, f: IO[bytes]) -> None:
        """A retry after a cut-off answer asks for the bytes still missing only (``Range``), and
        only of the version it started on (``If-Match`` its ETag); if the object was replaced
        meanwhile, the download starts over on the new version."""
        bucket, key = _object_ref(uri)
        started_on: list[str] = []  # the ETag of the version being downloaded

        def fetch() -> None:
            body = None
            if f.tell() and started_on:
                try:
                    body = self.client().get_object(
                        Bucket=bucket, Key=key, Range=f"bytes={f.tell()}-", IfMatch=started_on[0]
                    )["Body"]
                except botocore.exceptions.ClientError as err:
                    if not self._refused(err):
                        raise
            if body is None:
                f.seek(0)
                f.truncate()
                answer = self.client().get_object(Bucket=bucket, Key=key)
                started_on[:] = [answer["ETag"]]
                body = answer["Body"]
            for chunk in body.iter_chunks(_DOWNLOAD_CHUNK_BYTES):
                f.write(chunk)

        self.call(uri, "downloading", fetch)

    def upload(self, local_file: Path, uri: str) -> None:
        current = self._head(uri)
        condition = {"IfMatch": current["ETag"]} if current else {"IfNoneMatch": "*"}
        md5 = _md5_base64(local_file)
        size = local_file.stat().st_size
        try:
            if size <= _UPLOAD_CHUNK_BYTES:
                self._put(local_file, uri, md5, condition)
            else:
                self._multipart(local_file, uri, md5, condition)
        except _PreconditionFailed as error:
            found = self._head(uri)
            if not (
                found is not None
                and found["ContentLength"] == size
                and found.get("Metadata", {}).get(_S3_MD5_METADATA) == md5
            ):
                expected = f"ETag {current['ETag']}" if current else "no object"
                now = f"ETag {found['ETag']}" if found is not None else "deleted"
                raise _changed_by_another_writer(uri, expected, now) from error

    @staticmethod
    def _refused(err: botocore.exceptions.ClientError) -> bool:
        return _s3_status(err) == 412 or _s3_code(err) == "PreconditionFailed"

    # Conditional writes of small objects (see the module functions of that name); the object's
    # ETag stands for its generation.

    def _put_if(self, uri: str, action: str, data: bytes, condition: dict[str, str]) -> str | None:
        """``PutObject`` under ``condition``; the new ETag, or None when the store refused it (an
        ``If-Match`` on an object deleted meanwhile is answered ``NoSuchKey``)."""
        bucket, key = _object_ref(uri)

        def put() -> str | None:
            try:
                answer = self.client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
            except botocore.exceptions.ClientError as err:
                if self._refused(err) or ("IfMatch" in condition and _s3_code(err) == "NoSuchKey"):
                    return None
                raise
            return str(answer["ETag"])

        return self.call(uri, action, put)

    def create_if_absent(self, uri: str, data: bytes) -> str | None:
        return self._put_if(uri, "creating", data, {"IfNoneMatch": "*"})

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        bucket, key = _object_ref(uri)

        def read() -> tuple[bytes, str] | None:
            try:
                answer = self.client().get_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as err:
                if _s3_missing(err):
                    return None
                raise
            return answer["Body"].read(), str(answer["ETag"])

        return self.call(uri, "reading", read)

    def replace_if_generation(self, uri: str, data: bytes, etag: str) -> str | None:
        return self._put_if(uri, "replacing", data, {"IfMatch": etag})

    def delete_if_generation(self, uri: str, etag: str) -> bool:
        bucket, key = _object_ref(uri)

        def remove() -> bool:
            try:
                self.client().delete_object(Bucket=bucket, Key=key, IfMatch=etag)
            except botocore.exceptions.ClientError as err:
                if self._refused(err) or _s3_missing(err):
                    return False
                raise
            return True

        return self.call(uri, "deleting", remove)

    def _put(self, local_file: Path, uri: str, md5: str, condition: dict[str, str]) -> None:
        bucket, key = _object_ref(uri)

        def put() -> None:
            try:
                with local_file.open("rb") as body:
                    self.client().put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=body,
                        Metadata={_S3_MD5_METADATA: md5},
                        **condition,
                    )
            except botocore.exceptions.ClientError as err:
                if self._refused(err):
                    raise _PreconditionFailed from err
                raise

        self.call(uri, "uploading to", put)

    def _multipart(self, local_file: Path, uri: str, md5: str, condition: dict[str, str]) -> None:
        """Upload in :data:`_UPLOAD_CHUNK_BYTES` parts, each retried on its own; the object
        appears when the last request, which carries ``condition``, completes the upload."""
        bucket, key = _object_ref(uri)
        client = self.client()
        upload_id = self.call(
            uri,
            "starting the upload to",
            lambda: client.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata={_S3_MD5_METADATA: md5}
            )["UploadId"],
        )
        try:
            parts = []
            with local_file.open("rb") as f:
                while chunk := f.read(_UPLOAD_CHUNK_BYTES):
                    number = len(parts) + 1
                    answer = self.call(
                        uri,
                        f"uploading part {number} to",
                        lambda chunk=chunk, number=number: client.upload_part(
                            Bucket=bucket,
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=chunk,
                        ),
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})

            def complete() -> None:
                try:
                    client.complete_multipart_upload(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        **condition,
                    )
                except botocore.exceptions.ClientError as err:
                    # NoSuchUpload: a retry whose first attempt completed it, or someone aborted it
                    if self._refused(err) or _s3_code(err) == "NoSuchUpload":
                        raise _PreconditionFailed from err
                    raise

            self.call(uri, "uploading to", complete)
        except BaseException:
            # Parts of an upload never completed are billed until aborted; a completed one is
            # gone already. One attempt: the caller is failing anyway.
            with contextlib.suppress(
                botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError
            ):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def delete_object(self, uri: str) -> None:
        bucket, key = _object_ref(uri)
        # S3 answers a delete of a missing key with success, so a retried delete is safe.
        self.call(uri, "deleting", lambda: self.client().delete_object(Bucket=bucket, Key=key))


_GCS = _Gcs()


def _s3_connection() -> dict[str, str]:
    """``s3://``: boto3's own settings, with the endpoint of :data:`S3_ENDPOINT_ENVS`."""
    endpoint = next((os.environ[name] for name in S3_ENDPOINT_ENVS if os.environ.get(name)), None)
    return {"endpoint_url": endpoint} if endpoint else {}


def _minio_connection() -> dict[str, str]:
    """``minio://``: KFP's store at :func:`minio_endpoint`, with the keys of its Secret when the
    pod has them (:data:`MINIO_SECRET_KEYS`), else boto3's chain."""
    connection = {
        "endpoint_url": minio_endpoint(),
        "region_name": os.environ.get(MINIO_REGION_ENV) or "us-east-1",
    }
    access_key, secret_key = (os.environ.get(env) for env in MINIO_SECRET_KEYS.values())
    if access_key and secret_key:
        connection.update(aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    return connection


_S3_STORE = _S3(_s3_connection, _NO_S3_CREDENTIALS)
_MINIO_STORE = _S3(
    _minio_connection,
    "no usable credentials for KFP's artifact store ({err}). The pipeline's steps and jobs read "
    f"them from the Secret {MINIO_SECRET!r} of their namespace (keys "
    f"{', '.join(MINIO_SECRET_KEYS)}) into {', '.join(MINIO_SECRET_KEYS.values())}; elsewhere set "
    "those variables, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
)


# ---------------------------------------------------------------------------- reads & writes


_umask_lock = threading.Lock()


def _umask() -> int:
    """The process's umask (read from /proc where Linux offers it; else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _no_space(error: BaseException) -> OSError | None:
    """The "no space left" error behind ``error``, if any (``torch.save`` wraps it in a
    ``RuntimeError`` that only says ``unexpected pos``)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _raise_if_no_space(error: BaseException, target: str, tmp: str) -> None:
    cause = _no_space(error)
    if cause is not None:
        raise OSError(
            cause.errno,
            f"writing {target}: no space left on device (while writing {tmp}); "
            "nothing was written there, the previous content is kept",
        ) from error


@contextlib.contextmanager
def _local_atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path`` that is renamed to ``path`` when the block ends cleanly.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s 0600, so that other readers of the artifact (a pod of another user) can read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_no_space(error, str(path), tmp)
        raise


def _download_file(store: _ObjectStore, uri: str, local_file: Path) -> None:
    """Stream the object at ``uri`` into ``local_file``, which appears only once complete."""
    _object_ref(uri)
    with _local_atomic_file(local_file) as f:
        store.download(uri, f)


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """A binary file object whose content appears at ``uri`` only when the block ends cleanly.

    For ``gs://`` and ``s3://`` the bytes go to a local temporary file that is uploaded when the
    block ends; if the block raises, nothing is uploaded and an existing object is left untouched.

    Raises:
        ValueError: ``uri`` is malformed or names a bucket or folder.
        FileNotFoundError: the bucket does not exist.
        OSError: the disk is full ("no space left on device", naming ``uri`` and the file).
        StorageError: the upload still failed when the retry deadline passed, or another writer
            changed the object meanwhile.
    """
    store = _store(uri)
    if not store:
        with _local_atomic_file(Path(uri)) as f:
            yield f
        return
    _object_ref(uri)
    fd, tmp = tempfile.mkstemp(prefix="kshot-upload-", suffix=_PARTIAL_SUFFIX)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
        except BaseException as error:
            _raise_if_no_space(error, uri, tmp)
            raise
        store.upload(Path(tmp), uri)
    finally:
        os.unlink(tmp)


def exists(uri: str) -> bool:
    """Whether a file or a non-empty folder exists at ``uri`` (for ``gs://bucket``: the bucket).

    Raises:
        FileNotFoundError: the bucket of a ``gs://bucket/key`` or ``s3://bucket/key`` URI does
            not exist.
    """
    store = _store(uri)
    if not store:
        return Path(uri).exists()
    bucket, key = parse_remote(uri)
    if not key.strip("/"):
        return store.bucket_exists(uri, bucket)
    if not key.endswith("/") and store.object_exists(uri):
        return True
    return bool(store.list_keys(uri))


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``.

    Raises:
        FileNotFoundError: the file, object or bucket does not exist.
    """
    store = _store(uri)
    if not store:
        return Path(uri).read_bytes()
    _object_ref(uri)
    return store.read_bytes(uri)


def read_range(uri: str, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of the file at ``uri``: one ranged request to a store.

    Raises:
        FileNotFoundError: the file, object or bucket does not exist.
        StorageError: fewer bytes came back (the file is shorter than ``start + length``).
    """
    if start < 0 or length < 1:
        raise ValueError(
            f"read_range({uri!r}): start {start} must be >= 0 and length {length} >= 1"
        )
    store = _store(uri)
    if not store:
        with open(uri, "rb") as f:
            f.seek(start)
            data = f.read(length)
    else:
        _object_ref(uri)
        data = store.read_range(uri, start, length)
    if len(data) != length:
        raise StorageError(
            f"reading bytes {start}-{start + length - 1} of {uri}: got {len(data)} bytes, "
            f"expected {length} (the file is shorter or changed)"
        )
    return data


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole or not at all."""
    with open_write(uri) as f:
        f.write(data)


def read_text(uri: str) -> str:
    """The UTF-8 text of the file at ``uri``."""
    return read_bytes(uri).decode()


def write_text(uri: str, text: str) -> None:
    """Write ``text`` as UTF-8 to ``uri`` whole or not at all."""
    write_bytes(uri, text.encode())


def read_json(uri: str) -> Any:
    """The JSON document at ``uri``.

    Raises:
        ValueError: the file is not valid JSON (naming ``uri``).
    """
    try:
        return json.loads(read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{uri} is not valid JSON: {err}") from None


def write_json(uri: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``uri`` whole or not at all.

    A NaN or infinite number (a correlation of constant values, a loss never measured) becomes
    ``null``, with a warning naming where it was: strict JSON has no token for it.
    """
    missing: list[str] = []

    def finite(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            missing.append(where or "the document")
            return None
        if isinstance(value, dict):
            return {k: finite(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    clean = finite(obj, "")
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        warnings.warn(
            f"{uri}: {shown} {'is' if len(missing) == 1 else 'are'} not a finite number "
            "(NaN or infinite), written as null",
            stacklevel=2,
        )
    write_text(uri, json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n")


class UnsafeFileError(ValueError):
    """A torch file that holds more than tensors and plain data (code would run on loading)."""


def save_torch(obj: Any, uri: str) -> None:
    """``torch.save`` to ``uri``, streamed through a temporary file, whole or not at all.

    ``obj`` must hold only what :func:`load_torch` reads back: tensors, numbers, strings, and
    lists, tuples and dicts of them.
    """
    with open_write(uri) as f:
        torch.save(obj, f)


def load_torch(uri: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` from ``uri`` (an object is streamed to a
    temporary file first): tensors, numbers, strings, and lists, tuples and dicts of them.

    Raises:
        UnsafeFileError: the file holds anything else, a pickled callable for one; it is refused
            without being run (whoever can write the store could otherwise run code in every
            process that loads it).
    """
    with local_copy(uri) as path:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights_only" not in str(e).lower() and "weights only" not in str(e).lower():
                raise
            paragraphs = [p.strip() for p in str(e).split("\n\n") if p.strip()]
            raise UnsafeFileError(
                f"refusing to load {uri}: it holds more than tensors and plain data, which "
                f"loading would run as code ({paragraphs[min(1, len(paragraphs) - 1)]})"
            ) from None


# ----------------------------------------------------------------------------- folders


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding the file or folder at ``uri`` (the path itself for local URIs).

    An object is downloaded to a temporary folder, a ``gs://`` or ``s3://`` prefix with every
    object under it; the temporary copy is removed when the block ends.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    store = _store(uri)
    if not store:
        path = Path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        yield path
        return
    bucket, key = parse_remote(uri)
    with tempfile.TemporaryDirectory(prefix="kshot-copy-") as tmp:
        name = PurePosixPath(key).name or bucket
        target = Path(tmp) / name
        if key and not key.endswith("/") and store.object_exists(uri):
            _download_file(store, uri, target)
        else:
            download_dir(uri, target)
        yield target


def list_uris(prefix_uri: str) -> list[str]:
    """URIs of every file inside the folder ``prefix_uri``, recursively, sorted.

    ``gs://b/run`` lists ``gs://b/run/...`` (not ``gs://b/run2/...``); ``gs://b`` lists the bucket;
    ``s3://`` likewise. A folder that does not exist lists as empty. Local temporary files of
    unfinished writes are left out.

    Raises:
        FileNotFoundError: the bucket does not exist.
    """
    store = _store(prefix_uri)
    if not store:
        root = Path(prefix_uri)
        if not root.is_dir():
            return []
        return sorted(
            join(prefix_uri, path.relative_to(root).as_posix())
            for path in root.rglob("*")
            if path.is_file() and not _is_partial(path)
        )
    bucket, _ = parse_remote(prefix_uri)
    bucket_uri = _bucket_uri(prefix_uri, bucket)
    return [f"{bucket_uri}/{key}" for key in store.list_keys(prefix_uri)]


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(_PARTIAL_SUFFIX)


def delete(uri: str) -> None:
    """Delete the file at ``uri``, or, if ``uri`` is a folder, everything inside it.

    Raises:
        ValueError: ``uri`` is a whole bucket (``gs://bucket``); buckets are never emptied here.
        FileNotFoundError: nothing exists at ``uri``.
    """
    store = _store(uri)
    if not store:
        path = Path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            raise FileNotFoundError(f"{uri} does not exist")
        return
    bucket, key = parse_remote(uri)
    if not key.strip("/"):
        raise ValueError(f"refusing to delete {uri!r}: name an object or folder inside the bucket")
    if not key.endswith("/") and store.object_exists(uri):
        store.delete_object(uri)
        return
    uris = list_uris(uri)
    if not uris:
        raise FileNotFoundError(f"{uri} does not exist")
    for object_uri in uris:
        store.delete_object(object_uri)


def upload_dir(local_path: str | Path, uri: str) -> None:
    """Copy every file under the local folder ``local_path`` to the folder ``uri``.

    Each file lands whole or not at all; the folder as a whole is not atomic (write a marker file
    last when readers need to know the copy is complete).

    Raises:
        NotADirectoryError: ``local_path`` is not a folder.
    """
    root = Path(local_path)
    if not root.is_dir():
        raise NotADirectoryError(f"{local_path} is not a folder")
    store = _store(uri)
    if store:
        parse_remote(uri)
    for path in sorted(root.rglob("*")):
        if not path.is_file() or _is_partial(path):
            continue
        destination = join(uri, path.relative_to(root).as_posix())
        if store:
            store.upload(path, destination)
        else:
            with _local_atomic_file(Path(destination)) as f, path.open("rb") as source:
                shutil.copyfileobj(source, f)


def download_dir(uri: str, local_path: str | Path) -> None:
    """Copy every file inside the folder ``uri`` into the local folder ``local_path``.

    Raises:
        FileNotFoundError: the folder is empty or missing, or its bucket does not exist.
        ValueError: an object name would land outside ``local_path`` (``..`` segments).
    """
    store = _store(uri)
    if not store:
        if not list_uris(uri):
            raise FileNotFoundError(f"{uri} does not exist or holds no files")
        upload_dir(uri, str(local_path))
        return
    bucket, key = parse_remote(uri)
    uris = list_uris(uri)
    if not uris:
        raise FileNotFoundError(f"{uri} does not exist or holds no objects")
    root = Path(local_path).resolve()
    folder = f"{_bucket_uri(uri, bucket)}/{_folder_prefix(key)}"
    for object_uri in uris:
        target = (root / object_uri[len(folder) :]).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"object {object_uri} would land outside {root}")
        _download_file(store, object_uri, target)


def digest(uri: str) -> str:
    """A digest of the content at ``uri``, a file or every file of a folder (with their names).

    Local files are hashed (SHA-256); ``gs://`` objects give the MD5 that GCS keeps, so nothing is
    downloaded; ``s3://`` and ``minio://`` objects are read. Equal content gives equal digests on
    one kind of store.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    if is_gcs(uri):
        bucket_name, key = parse_remote(uri)
        prefix = _folder_prefix(key)

        def md5s(retry: Retry) -> list[tuple[str, str]]:
            client = _GCS.client()
            if key and not key.endswith("/"):
                blob = client.bucket(bucket_name).get_blob(key, retry=retry)
                if blob is not None:
                    return [("", blob.md5_hash)]
            listed = client.list_blobs(bucket_name, prefix=prefix, retry=retry)
            return sorted((b.name[len(prefix) :], b.md5_hash) for b in listed)

        parts = _GCS.call(uri, "reading", md5s)
        if not parts:
            raise FileNotFoundError(f"{uri} does not exist or holds no objects")
        return "md5:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    if not is_remote(uri) and Path(uri).is_file():
        sha = hashlib.sha256()
        with Path(uri).open("rb") as f:
            while chunk := f.read(_UPLOAD_CHUNK_BYTES):
                sha.update(chunk)
        return "sha256:" + sha.hexdigest()
    if is_remote(uri) and exists(uri) and not list_uris(uri):
        return "sha256:" + hashlib.sha256(read_bytes(uri)).hexdigest()
    files = list_uris(uri)
    if not files:
        raise FileNotFoundError(f"{uri} does not exist or holds no files")
    parts = [(f[len(uri.rstrip("/")) + 1 :], digest(f)) for f in files]
    return "sha256:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# ------------------------------------------------------------- conditional writes (object stores)


Generation = int | str
"""The version of an object that a conditional write names: the generation (an int) on GCS, the
ETag (a str) on S3. Opaque to callers: they only pass back what they were given."""


def _lease_blob(uri: str) -> gcs.Blob:
    if not is_gcs(uri):
        raise ValueError(
            f"{uri!r}: conditional writes are implemented for gs://, s3:// and minio:// objects"
        )
    return _GCS._blob(uri)


def _conditional_retry(retry: Retry) -> ConditionalRetryPolicy:
    return ConditionalRetryPolicy(retry, is_generation_specified, ["query_params"])


def create_if_absent(uri: str, data: bytes) -> Generation | None:
    """Write the small object ``uri`` only if no object exists there; its generation, or None when
    one exists. (A retried request whose first attempt landed also answers None: callers that
    must know tell their own object by its content.)"""
    if isinstance(s3 := _store(uri), _S3):
        return s3.create_if_absent(uri, data)
    blob = _lease_blob(uri)

    def create(retry: Retry) -> int | None:
        try:
            blob.upload_from_string(data, if_generation_match=0, retry=_conditional_retry(retry))
        except api_exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    return _GCS.call(uri, "creating", create)


def read_versioned(uri: str) -> tuple[bytes, Generation] | None:
    """The content of the object ``uri`` and the generation it was read at, or None if absent."""
    if isinstance(s3 := _store(uri), _S3):
        return s3.read_versioned(uri)
    ref = _lease_blob(uri)

    def read(retry: Retry) -> tuple[bytes, int] | None:
        blob = ref.bucket.get_blob(ref.name, retry=retry)
        if blob is None:
            return None
        generation = int(blob.generation)
        try:
            return blob.download_as_bytes(retry=retry), generation
        except api_exceptions.NotFound:  # deleted between the two requests
            return None

    return _GCS.call(uri, "reading", read)


def replace_if_generation(uri: str, data: bytes, generation: Generation) -> Generation | None:
    """Replace the object ``uri`` only if its generation is still ``generation``; the new
    generation, or None when another writer changed or deleted it meanwhile."""
    if isinstance(s3 := _store(uri), _S3):
        return s3.replace_if_generation(uri, data, str(generation))
    blob = _lease_blob(uri)

    def replace(retry: Retry) -> int | None:
        try:
            blob.upload_from_string(
                data, if_generation_match=generation, retry=_conditional_retry(retry)
            )
        except api_exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    return _GCS.call(uri, "replacing", replace)


def delete_if_generation(uri: str, generation: Generation) -> bool:
    """Delete the object ``uri`` only if its generation is still ``generation``; whether it did."""
    if isinstance(s3 := _store(uri), _S3):
        return s3.delete_if_generation(uri, str(generation))
    blob = _lease_blob(uri)

    def remove(retry: Retry) -> bool:
        try:
            blob.delete(if_generation_match=generation, retry=_conditional_retry(retry))
        except (api_exceptions.PreconditionFailed, api_exceptions.NotFound):
            return False
        return True

    return _GCS.call(uri, "deleting", remove)
