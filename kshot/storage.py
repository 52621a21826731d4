"""Artifact URIs: local paths and ``gs://bucket/key`` through one set of functions.

Every stage and worker reads and writes through this module, so a run can live on a laptop disk or
in a Google Cloud Storage bucket without the callers knowing which.

Guarantees:

* **Whole or nothing.** A local file is written under a temporary name in its own folder and renamed
  into place. A ``gs://`` object is written to a local temporary file first and then uploaded in
  one upload (a single multipart request up to 8 MiB, a resumable upload in 8 MiB chunks above
  that). GCS commits an object only when its upload completes, so readers see the previous
  generation or the new one, never a part; an upload that fails or is abandoned creates nothing.
* **Safe retries of writes.** Each upload carries an ``if_generation_match`` precondition: the
  object's generation read just before (0 when it must not exist yet). A retry therefore never
  replaces what another writer put there meanwhile. A retry whose first attempt did land fails the
  precondition; the write then counts as done if the object holds exactly these bytes (size and
  MD5), and otherwise raises :class:`StorageError`: another writer replaced it (stages give each
  worker its own URIs, so that is a bug to see, not to paper over).
* **Streaming.** Uploads and downloads go through a local temporary file, so a large checkpoint is
  never held in memory twice.
* **Retries.** Every GCS request runs under ``google.cloud.storage.retry.DEFAULT_RETRY`` (HTTP 408,
  429, 5xx, dropped connections, timeouts) — uploads under its conditional form, which retries
  only requests that carry a generation precondition — with exponential backoff bounded by
  ``KSHOT_GCS_RETRY_DEADLINE`` seconds (default 300) starting at ``KSHOT_GCS_RETRY_INITIAL_DELAY``
  seconds (default 1). When the deadline passes, :class:`StorageError` names the URI and the last
  cause.
* **Conditional writes** for leases (:mod:`kshot.lease`): :func:`create_if_absent`,
  :func:`read_versioned`, :func:`replace_if_generation` and :func:`delete_if_generation` act on one
  small object only when its generation is the one named, as GCS's ``ifGenerationMatch`` decides on
  the server. They are the whole interface an object store needs for one writer per output; another
  store (``s3://``: ``If-None-Match: *`` and ``If-Match: <ETag>``) provides the same four with its
  own version token in place of the generation. Local paths use lock files instead.
* **Clear errors.** A malformed URI raises :class:`ValueError`, a missing bucket or object
  :class:`FileNotFoundError`, a refused request :class:`PermissionError`, each naming the URI.

Credentials come from the environment (Workload Identity / Application Default Credentials). When
``STORAGE_EMULATOR_HOST`` is set, the client talks to that endpoint anonymously.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

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

__all__ = [
    "RETRY_DEADLINE_ENV",
    "RETRY_INITIAL_DELAY_ENV",
    "StorageError",
    "is_gcs",
    "parse_gcs",
    "check_uri",
    "check_writable",
    "join",
    "exists",
    "read_bytes",
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
    "create_if_absent",
    "read_versioned",
    "replace_if_generation",
    "delete_if_generation",
]

RETRY_DEADLINE_ENV = "KSHOT_GCS_RETRY_DEADLINE"
RETRY_INITIAL_DELAY_ENV = "KSHOT_GCS_RETRY_INITIAL_DELAY"
_DEFAULT_RETRY_DEADLINE_S = 300.0
_DEFAULT_RETRY_INITIAL_DELAY_S = 1.0
_RETRY_MAX_DELAY_S = 30.0
_UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require
_EMULATOR_PROJECT = "kshot-emulator"
_GCS_PREFIX = "gs://"
_PARTIAL_SUFFIX = ".partial"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")

_T = TypeVar("_T")


class StorageError(OSError):
    """A storage request that failed for good (retries exhausted or a non-retryable answer)."""


# --------------------------------------------------------------------------------------- URIs


def is_gcs(uri: str) -> bool:
    """Whether ``uri`` names Google Cloud Storage (``gs://...``); no validation beyond the prefix."""
    return uri.startswith(_GCS_PREFIX)


def parse_gcs(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/key`` into ``("bucket", "key")``; the key is ``""`` for ``gs://bucket``.

    Raises:
        ValueError: ``uri`` is not ``gs://``, has no bucket, or the bucket name breaks GCS rules.
    """
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, key = uri[len(_GCS_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"malformed GCS URI {uri!r}: no bucket name after gs://")
    if not (3 <= len(bucket) <= 222 and _BUCKET_RE.match(bucket)):
        raise ValueError(
            f"malformed GCS URI {uri!r}: bucket name {bucket!r} must be 3-222 characters of "
            "lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    if "\n" in key or "\r" in key:
        raise ValueError(f"malformed GCS URI {uri!r}: object names cannot contain line breaks")
    return bucket, key


def _is_remote(uri: str) -> bool:
    """True for ``gs://`` URIs, False for local paths; refuses empty URIs and other schemes."""
    if not uri:
        raise ValueError("empty URI: expected a local path or gs://bucket/key")
    if is_gcs(uri):
        return True
    scheme = _SCHEME_RE.match(uri)
    if scheme and uri[scheme.end() :].startswith("//"):
        raise ValueError(
            f"unsupported URI scheme {scheme.group(1)!r} in {uri!r}: "
            "use a local path or gs://bucket/key"
        )
    return False


def check_uri(uri: str) -> None:
    """Raise :class:`ValueError` for an empty or malformed URI (no request is made)."""
    if _is_remote(uri):
        parse_gcs(uri)


def check_writable(uri: str) -> None:
    """Fail before any work when nothing could ever be written at ``uri``.

    Raises:
        ValueError: ``uri`` is malformed, or a local path runs through a regular file.
        FileNotFoundError: the bucket of a ``gs://`` URI does not exist.
        PermissionError: the nearest existing local folder is not writable.
    """
    if _is_remote(uri):
        bucket, _ = parse_gcs(uri)
        found = _gcs_call(
            uri,
            "checking the bucket of",
            lambda retry: _client().bucket(bucket).exists(retry=retry),
        )
        if not found:
            raise FileNotFoundError(
                f"{uri}: bucket gs://{bucket} does not exist (or these credentials cannot see it)"
            )
        return
    ancestor = Path(uri).absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != Path(uri).absolute() and not ancestor.is_dir():
        raise ValueError(f"cannot write {uri}: {ancestor} is a file, not a folder")
    if not os.access(ancestor if ancestor.is_dir() else ancestor.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {uri}: {ancestor} is not writable")


def _object_ref(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of a URI that must name one object (not a bucket or a folder)."""
    bucket, key = parse_gcs(uri)
    if not key or key.endswith("/"):
        raise ValueError(
            f"GCS URI {uri!r} names a bucket or folder, not an object: expected gs://bucket/key"
        )
    return bucket, key


def _folder_prefix(key: str) -> str:
    """The listing prefix of everything inside folder ``key`` (``""`` for the whole bucket)."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


def join(uri: str, *parts: str) -> str:
    """``join("gs://b/run", "ckpt", "e1.pt")`` → ``"gs://b/run/ckpt/e1.pt"``; paths likewise."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


# ------------------------------------------------------------------------- GCS client & errors

_client_lock = threading.Lock()
_cached_client: tuple[tuple[int, str | None], gcs.Client] | None = None


_NO_CREDENTIALS = (
    "no usable Google Cloud credentials ({err}). On GKE give the pod's service account Workload "
    "Identity (manifests/); elsewhere run `gcloud auth application-default login` or set "
    "GOOGLE_APPLICATION_CREDENTIALS; STORAGE_EMULATOR_HOST points gs:// at an emulator"
)


def _client() -> gcs.Client:
    """One client per process and endpoint (a forked worker or a new emulator gets a fresh one)."""
    global _cached_client
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
    identity = (os.getpid(), endpoint)
    with _client_lock:
        if _cached_client is None or _cached_client[0] != identity:
            if endpoint:
                project = os.environ.get("GOOGLE_CLOUD_PROJECT", _EMULATOR_PROJECT)
                client = gcs.Client(project=project, credentials=AnonymousCredentials())
            else:
                try:
                    client = gcs.Client()
                except google.auth.exceptions.GoogleAuthError as err:
                    raise PermissionError(_NO_CREDENTIALS.format(err=err)) from err
            _cached_client = (identity, client)
        return _cached_client[1]


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
    deadline = _retry_deadline()
    initial = min(_env_seconds(RETRY_INITIAL_DELAY_ENV, _DEFAULT_RETRY_INITIAL_DELAY_S), deadline)
    return DEFAULT_RETRY.with_timeout(deadline).with_delay(
        initial=initial, maximum=max(initial, _RETRY_MAX_DELAY_S), multiplier=2.0
    )


def _not_found_message(uri: str) -> str:
    bucket, _ = parse_gcs(uri)
    try:
        bucket_exists = _client().bucket(bucket).exists(retry=_retry_policy())
    except (api_exceptions.GoogleAPIError, requests.RequestException):
        return f"{uri} does not exist"
    if not bucket_exists:
        return f"{uri}: bucket gs://{bucket} does not exist (or these credentials cannot see it)"
    return f"{uri} does not exist"


def _gcs_call(uri: str, action: str, operation: Callable[[Retry], _T]) -> _T:
    """Run ``operation(retry_policy)`` and turn library errors into errors that name ``uri``."""
    try:
        return operation(_retry_policy())
    except api_exceptions.NotFound as err:
        raise FileNotFoundError(_not_found_message(uri)) from err
    except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as err:
        raise PermissionError(f"{action} {uri}: permission denied: {err.message}") from err
    except google.auth.exceptions.GoogleAuthError as err:
        raise PermissionError(f"{action} {uri}: " + _NO_CREDENTIALS.format(err=err)) from err
    except api_exceptions.RetryError as err:
        raise StorageError(
            f"{action} {uri} failed: still failing after retrying for {_retry_deadline():g} s "
            f"(set {RETRY_DEADLINE_ENV} to wait longer); last error: {err.cause!r}"
        ) from err
    except (
        api_exceptions.GoogleAPIError,
        gcs_exceptions.InvalidResponse,
        gcs_exceptions.DataCorruption,
        requests.RequestException,
    ) as err:
        raise StorageError(f"{action} {uri} failed: {err!r}") from err


def _gcs_object_exists(uri: str) -> bool:
    bucket, key = _object_ref(uri)
    blob = _client().bucket(bucket).blob(key)
    return _gcs_call(uri, "checking", lambda retry: blob.exists(retry=retry))


def _gcs_list_keys(uri: str) -> list[str]:
    """Object keys inside the folder ``uri`` (the whole bucket for ``gs://bucket``), sorted."""
    bucket, key = parse_gcs(uri)
    prefix = _folder_prefix(key)

    def list_all(retry: Retry) -> list[str]:
        blobs = _client().list_blobs(bucket, prefix=prefix, retry=retry)
        return sorted(blob.name for blob in blobs if not blob.name.endswith("/"))

    return _gcs_call(uri, "listing", list_all)


def _md5_base64(local_file: Path) -> str:
    """The MD5 of ``local_file`` as GCS reports it (base64), read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with local_file.open("rb") as f:
        while chunk := f.read(_UPLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


def _upload_file(local_file: Path, uri: str) -> None:
    """Upload ``local_file`` to ``uri`` under a generation precondition (see the module's notes).

    Raises:
        StorageError: another writer replaced the object during this write.
    """
    bucket_name, key = _object_ref(uri)
    bucket = _client().bucket(bucket_name)
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
                raise StorageError(
                    f"writing {uri}: another writer changed it during this write (generation "
                    f"{generation} expected, now {now}); left as it is. Give each writer its own "
                    "URI"
                ) from error

    _gcs_call(uri, "uploading to", upload)


def _download_file(uri: str, local_file: Path) -> None:
    """Stream the object at ``uri`` into ``local_file``, which appears only once complete."""
    bucket, key = _object_ref(uri)
    blob = _client().bucket(bucket).blob(key)
    local_file.parent.mkdir(parents=True, exist_ok=True)
    with _local_atomic_file(local_file) as f:
        _gcs_call(uri, "downloading", lambda retry: blob.download_to_file(f, retry=retry))


# ---------------------------------------------------------------------------- reads & writes


@contextlib.contextmanager
def _local_atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path`` that is renamed to ``path`` when the block ends cleanly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """A binary file object whose content appears at ``uri`` only when the block ends cleanly.

    For ``gs://`` the bytes go to a local temporary file that is uploaded when the block ends; if
    the block raises, nothing is uploaded and an existing object is left untouched.

    Raises:
        ValueError: ``uri`` is malformed or names a bucket or folder.
        FileNotFoundError: the bucket does not exist.
        StorageError: the upload still failed when the retry deadline passed, or another writer
            changed the object meanwhile.
    """
    if not _is_remote(uri):
        with _local_atomic_file(Path(uri)) as f:
            yield f
        return
    _object_ref(uri)
    fd, tmp = tempfile.mkstemp(prefix="kshot-upload-", suffix=_PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        _upload_file(Path(tmp), uri)
    finally:
        os.unlink(tmp)


def exists(uri: str) -> bool:
    """Whether a file or a non-empty folder exists at ``uri`` (for ``gs://bucket``: the bucket).

    Raises:
        FileNotFoundError: the bucket of a ``gs://bucket/key`` URI does not exist.
    """
    if not _is_remote(uri):
        return Path(uri).exists()
    bucket, key = parse_gcs(uri)
    if not key.strip("/"):
        return _gcs_call(
            uri, "checking", lambda retry: _client().bucket(bucket).exists(retry=retry)
        )
    if not key.endswith("/") and _gcs_object_exists(uri):
        return True
    return bool(_gcs_list_keys(uri))


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``.

    Raises:
        FileNotFoundError: the file, object or bucket does not exist.
    """
    if not _is_remote(uri):
        return Path(uri).read_bytes()
    bucket, key = _object_ref(uri)
    blob = _client().bucket(bucket).blob(key)
    return _gcs_call(uri, "reading", lambda retry: blob.download_as_bytes(retry=retry))


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
    """Write ``obj`` as indented JSON to ``uri`` whole or not at all."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, uri: str) -> None:
    """``torch.save`` to ``uri``, streamed through a temporary file, whole or not at all."""
    with open_write(uri) as f:
        torch.save(obj, f)


def load_torch(uri: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` from ``uri`` (a ``gs://`` object is streamed to a temporary file first)."""
    with local_copy(uri) as path:
        return torch.load(path, map_location=map_location, weights_only=False)


# ----------------------------------------------------------------------------- folders


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding the file or folder at ``uri`` (the path itself for local URIs).

    A ``gs://`` object is downloaded to a temporary folder, a ``gs://`` prefix with every object
    under it; the temporary copy is removed when the block ends.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    if not _is_remote(uri):
        path = Path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        yield path
        return
    bucket, key = parse_gcs(uri)
    with tempfile.TemporaryDirectory(prefix="kshot-copy-") as tmp:
        name = PurePosixPath(key).name or bucket
        target = Path(tmp) / name
        if key and not key.endswith("/") and _gcs_object_exists(uri):
            _download_file(uri, target)
        else:
            download_dir(uri, target)
        yield target


def list_uris(prefix_uri: str) -> list[str]:
    """URIs of every file inside the folder ``prefix_uri``, recursively, sorted.

    ``gs://b/run`` lists ``gs://b/run/...`` (not ``gs://b/run2/...``); ``gs://b`` lists the bucket.
    A folder that does not exist lists as empty. Local temporary files of unfinished writes are
    left out.

    Raises:
        FileNotFoundError: the bucket does not exist.
    """
    if not _is_remote(prefix_uri):
        root = Path(prefix_uri)
        if not root.is_dir():
            return []
        return sorted(
            join(prefix_uri, path.relative_to(root).as_posix())
            for path in root.rglob("*")
            if path.is_file() and not _is_partial(path)
        )
    bucket, _ = parse_gcs(prefix_uri)
    return [f"{_GCS_PREFIX}{bucket}/{key}" for key in _gcs_list_keys(prefix_uri)]


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(_PARTIAL_SUFFIX)


def delete(uri: str) -> None:
    """Delete the file at ``uri``, or, if ``uri`` is a folder, everything inside it.

    Raises:
        ValueError: ``uri`` is a whole bucket (``gs://bucket``); buckets are never emptied here.
        FileNotFoundError: nothing exists at ``uri``.
    """
    if not _is_remote(uri):
        path = Path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            raise FileNotFoundError(f"{uri} does not exist")
        return
    bucket_name, key = parse_gcs(uri)
    if not key.strip("/"):
        raise ValueError(f"refusing to delete {uri!r}: name an object or folder inside the bucket")
    bucket = _client().bucket(bucket_name)
    if not key.endswith("/") and _gcs_object_exists(uri):
        # Gone by now (a retry whose first attempt landed, or another deleter): the goal is reached.
        with contextlib.suppress(FileNotFoundError):
            _gcs_call(uri, "deleting", lambda retry: bucket.blob(key).delete(retry=retry))
        return
    keys = _gcs_list_keys(uri)
    if not keys:
        raise FileNotFoundError(f"{uri} does not exist")
    for object_key in keys:
        object_uri = f"{_GCS_PREFIX}{bucket_name}/{object_key}"
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: the goal is reached
            _gcs_call(
                object_uri,
                "deleting",
                lambda retry, k=object_key: bucket.blob(k).delete(retry=retry),
            )


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
    remote = _is_remote(uri)
    if remote:
        parse_gcs(uri)
    for path in sorted(root.rglob("*")):
        if not path.is_file() or _is_partial(path):
            continue
        destination = join(uri, path.relative_to(root).as_posix())
        if remote:
            _upload_file(path, destination)
        else:
            with _local_atomic_file(Path(destination)) as f, path.open("rb") as source:
                shutil.copyfileobj(source, f)


def download_dir(uri: str, local_path: str | Path) -> None:
    """Copy every file inside the folder ``uri`` into the local folder ``local_path``.

    Raises:
        FileNotFoundError: the folder is empty or missing, or its bucket does not exist.
        ValueError: an object name would land outside ``local_path`` (``..`` segments).
    """
    if not _is_remote(uri):
        if not list_uris(uri):
            raise FileNotFoundError(f"{uri} does not exist or holds no files")
        upload_dir(uri, str(local_path))
        return
    bucket, key = parse_gcs(uri)
    keys = _gcs_list_keys(uri)
    if not keys:
        raise FileNotFoundError(f"{uri} does not exist or holds no objects")
    root = Path(local_path).resolve()
    prefix = _folder_prefix(key)
    for object_key in keys:
        target = (root / object_key[len(prefix) :]).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"object gs://{bucket}/{object_key} would land outside {root}")
        _download_file(f"{_GCS_PREFIX}{bucket}/{object_key}", target)


def digest(uri: str) -> str:
    """A digest of the content at ``uri``, a file or every file of a folder (with their names).

    Local files are hashed (SHA-256); ``gs://`` objects give the MD5 that GCS keeps, so nothing is
    downloaded. Equal content gives equal digests on one kind of store.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    if not _is_remote(uri):
        path = Path(uri)
        if path.is_file():
            sha = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(_UPLOAD_CHUNK_BYTES):
                    sha.update(chunk)
            return "sha256:" + sha.hexdigest()
        files = list_uris(uri)
        if not files:
            raise FileNotFoundError(f"{uri} does not exist or holds no files")
        parts = [(f[len(uri.rstrip("/")) + 1 :], digest(f)) for f in files]
        return "sha256:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    bucket_name, key = parse_gcs(uri)
    prefix = "" if not key or key.endswith("/") else key

    def md5s(retry: Retry) -> list[tuple[str, str]]:
        blob = _client().bucket(bucket_name).get_blob(prefix, retry=retry) if prefix else None
        if blob is not None:
            return [("", blob.md5_hash)]
        listed = _client().list_blobs(bucket_name, prefix=_folder_prefix(key), retry=retry)
        return sorted((b.name[len(_folder_prefix(key)) :], b.md5_hash) for b in listed)

    parts = _gcs_call(uri, "reading", md5s)
    if not parts:
        raise FileNotFoundError(f"{uri} does not exist or holds no objects")
    return "md5:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# ------------------------------------------------------------- conditional writes (object stores)


def _object_store_blob(uri: str) -> Any:
    if not _is_remote(uri):
        raise ValueError(
            f"{uri!r}: conditional writes are for object stores (gs://); local paths use lock files"
        )
    bucket, key = _object_ref(uri)
    return _client().bucket(bucket).blob(key)


def _conditional_retry(retry: Retry) -> ConditionalRetryPolicy:
    return ConditionalRetryPolicy(retry, is_generation_specified, ["query_params"])


def create_if_absent(uri: str, data: bytes) -> int | None:
    """Write the small object ``uri`` only if no object exists there; its generation, or None when
    one exists. (A retried request whose first attempt landed also answers None: callers that
    must know tell their own object by its content.)"""
    blob = _object_store_blob(uri)

    def create(retry: Retry) -> int | None:
        try:
            blob.upload_from_string(data, if_generation_match=0, retry=_conditional_retry(retry))
        except api_exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    return _gcs_call(uri, "creating", create)


def read_versioned(uri: str) -> tuple[bytes, int] | None:
    """The content of the object ``uri`` and the generation it was read at, or None if absent."""
    blob_ref = _object_store_blob(uri)

    def read(retry: Retry) -> tuple[bytes, int] | None:
        blob = blob_ref.bucket.get_blob(blob_ref.name, retry=retry)
        if blob is None:
            return None
        generation = int(blob.generation)
        try:
            return blob.download_as_bytes(retry=retry), generation
        except api_exceptions.NotFound:  # deleted between the two requests
            return None

    return _gcs_call(uri, "reading", read)


def replace_if_generation(uri: str, data: bytes, generation: int) -> int | None:
    """Replace the object ``uri`` only if its generation is still ``generation``; the new
    generation, or None when another writer changed or deleted it meanwhile."""
    blob = _object_store_blob(uri)

    def replace(retry: Retry) -> int | None:
        try:
            blob.upload_from_string(
                data, if_generation_match=generation, retry=_conditional_retry(retry)
            )
        except api_exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    return _gcs_call(uri, "replacing", replace)


def delete_if_generation(uri: str, generation: int) -> bool:
    """Delete the object ``uri`` only if its generation is still ``generation``; whether it did."""
    blob = _object_store_blob(uri)

    def remove(retry: Retry) -> bool:
        try:
            blob.delete(if_generation_match=generation, retry=_conditional_retry(retry))
        except (api_exceptions.PreconditionFailed, api_exceptions.NotFound):
            return False
        return True

    return _gcs_call(uri, "deleting", remove)
