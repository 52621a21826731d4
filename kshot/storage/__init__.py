"""Artifact URIs: local paths, ``gs://``, ``s3://`` and ``minio://`` objects through one set of
functions.

Every stage and worker reads and writes through this module, so a run can live on a laptop disk, in
a Google Cloud Storage bucket or in an S3-compatible store (AWS S3, MinIO, SeaweedFS) without the
callers knowing which. ``minio://`` is Kubeflow Pipelines' own artifact store (its default pipeline
root, ``minio://mlpipeline/v2/artifacts``: MinIO, or SeaweedFS in newer releases), an S3-compatible
server found as KFP's launcher finds it.

The package does it as fsspec does: a URI is parsed once into a :class:`Uri` (:mod:`.uri`), which
every verb below takes (text is parsed on entry); its scheme picks one store from :data:`STORES`,
imported on first use: :mod:`.gcs`, :mod:`.s3` (``s3://`` and ``minio://``), each an
:class:`~kshot.storage.base.ObjectStore` (:mod:`.base`: the requests, the one retry policy, the
errors); local files are :mod:`.local`'s. This module is one idea, the public verbs, each written
once for every store; its length is theirs and these guarantees.

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

Credentials come from the environment, as each store's module says: :mod:`.gcs` (Workload Identity
/ Application Default Credentials, or an emulator), :mod:`.s3` (boto3's chain and endpoint for
``s3://``; KFP's own store and its Secret's keys for ``minio://``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from kshot.storage import local
from kshot.storage.base import (
    RETRY_DEADLINE_ENV,
    RETRY_INITIAL_DELAY_ENV,
    UPLOAD_CHUNK_BYTES,
    Generation,
    ObjectStore,
    StorageError,
    missing_bucket,
)
from kshot.storage.local import PARTIAL_SUFFIX, atomic_file, is_partial, raise_if_no_space
from kshot.storage.uri import Uri

if TYPE_CHECKING:
    import torch

__all__ = [
    "RETRY_DEADLINE_ENV",
    "RETRY_INITIAL_DELAY_ENV",
    "STORES",
    "Generation",
    "StorageError",
    "UnsafeFileError",
    "Uri",
    "store",
    "check_readable",
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
    "remove_partials",
    "upload_dir",
    "download_dir",
    "digest",
    "create_if_absent",
    "read_versioned",
    "replace_if_generation",
    "delete_if_generation",
]

STORES = {
    "gs": ("kshot.storage.gcs", "STORE"),
    "s3": ("kshot.storage.s3", "S3_STORE"),
    "minio": ("kshot.storage.s3", "MINIO_STORE"),
}
"""URI scheme → (module, name) of its :class:`~kshot.storage.base.ObjectStore`, imported on first
use (so that parsing a URI loads no storage client)."""

_U = TypeVar("_U", str, Uri)


def store(uri: Uri) -> ObjectStore:
    """The object store of a ``gs://``, ``s3://`` or ``minio://`` URI."""
    module, name = STORES[uri.scheme]
    return getattr(importlib.import_module(module), name)


def join(uri: _U, *parts: str) -> _U:
    """``join("gs://b/run", "ckpt", "e1.pt")`` → ``"gs://b/run/ckpt/e1.pt"``; paths likewise. A
    :class:`Uri` gives a :class:`Uri`, text gives text."""
    if isinstance(uri, Uri):
        return uri.join(*parts)
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def check_writable(uri: str | Uri, folder: bool = False) -> Uri:
    """Fail before any work when nothing could ever be written at ``uri``, or when ``uri`` is of
    the other kind than the artifact: a file (``folder=False``) or a folder of files. Returns the
    parsed URI.

    Raises:
        ValueError: ``uri`` is malformed, a local path runs through a regular file, a file URI
            names a bucket, ends in ``/`` or is an existing folder, or a folder URI is a file.
        FileNotFoundError: the bucket of a ``gs://`` or ``s3://`` URI does not exist.
        PermissionError: the nearest existing local folder is not writable.
    """
    uri = Uri.parse(uri)
    expected = "a folder" if folder else "a file"
    if uri.is_remote:
        if not folder:
            uri.object_key()
        objects = store(uri)
        if not objects.bucket_exists(uri):
            raise FileNotFoundError(missing_bucket(uri))
        if folder and not uri.is_bucket and objects.object_exists(_as_object(uri)):
            raise ValueError(f"{uri} is an object (a file), but {expected} is expected here")
        if not folder and objects.list_keys(uri):
            raise ValueError(
                f"{uri} is a folder (objects lie under it), but {expected} is expected"
            )
        return uri
    path = uri.path.absolute()
    if not folder and (uri.key.endswith("/") or path.is_dir()):
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
    return uri


def check_readable(uri: str | Uri, folder: bool = False) -> Uri:
    """Fail before any work when nothing exists at ``uri``, or when a local ``uri`` is of the other
    kind than the artifact: a file (``folder=False``) or a folder of files (an object's kind shows
    when it is read, naming the URI). Returns the parsed URI.

    Raises:
        ValueError: ``uri`` is malformed, or a local path of the other kind.
        FileNotFoundError: nothing exists at ``uri``, or its bucket does not exist.
    """
    uri = Uri.parse(uri)
    if not exists(uri):
        raise FileNotFoundError(f"{uri} does not exist")
    if not uri.is_remote:
        if folder and uri.path.is_file():
            raise ValueError(f"{uri} is a file, but a folder is expected here")
        if not folder and uri.path.is_dir():
            raise ValueError(f"{uri} is a folder, but a file is expected here")
    return uri


def _as_object(uri: Uri) -> Uri:
    """``uri`` without a trailing ``/``: the object a folder URI would be if it were a file."""
    return Uri(uri.scheme, uri.bucket, uri.key.rstrip("/"))


# ---------------------------------------------------------------------------- reads & writes


def _download_file(objects: ObjectStore, uri: Uri, local_file: Path) -> None:
    """Stream the object at ``uri`` into ``local_file``, which appears only once complete."""
    uri.object_key()
    with atomic_file(local_file) as f:
        objects.download(uri, f)


@contextlib.contextmanager
def open_write(uri: str | Uri, new: bool = False) -> Iterator[IO[bytes]]:
    """A binary file object whose content appears at ``uri`` only when the block ends cleanly.

    For ``gs://`` and ``s3://`` the bytes go to a local temporary file that is uploaded when the
    block ends; if the block raises, nothing is uploaded and an existing object is left untouched.
    ``new``: the caller expects nothing there yet (a checkpoint of a new step), which saves an
    object store the request that reads the current version first.

    Raises:
        ValueError: ``uri`` is malformed or names a bucket or folder.
        FileNotFoundError: the bucket does not exist.
        OSError: the disk is full ("no space left on device", naming ``uri`` and the file).
        StorageError: the upload still failed when the retry deadline passed, or another writer
            changed the object meanwhile.
    """
    uri = Uri.parse(uri)
    if not uri.is_remote:
        with atomic_file(uri.path) as f:
            yield f
        return
    uri.object_key()
    fd, tmp = tempfile.mkstemp(prefix="kshot-upload-", suffix=PARTIAL_SUFFIX)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
        except BaseException as error:
            raise_if_no_space(error, str(uri), tmp)
            raise
        store(uri).upload(Path(tmp), uri, new=new)
    finally:
        os.unlink(tmp)


def exists(uri: str | Uri) -> bool:
    """Whether a file or a non-empty folder exists at ``uri`` (for ``gs://bucket``: the bucket).

    Raises:
        FileNotFoundError: the bucket of a ``gs://bucket/key`` or ``s3://bucket/key`` URI does
            not exist.
    """
    uri = Uri.parse(uri)
    if not uri.is_remote:
        return uri.path.exists()
    objects = store(uri)
    if uri.is_bucket:
        return objects.bucket_exists(uri)
    if not uri.key.endswith("/") and objects.object_exists(uri):
        return True
    return bool(objects.list_keys(uri))


def read_bytes(uri: str | Uri) -> bytes:
    """The whole content of the file at ``uri``.

    Raises:
        FileNotFoundError: the file, object or bucket does not exist.
    """
    uri = Uri.parse(uri)
    if not uri.is_remote:
        return uri.path.read_bytes()
    uri.object_key()
    return store(uri).read_bytes(uri)


def read_range(uri: str | Uri, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of the file at ``uri``: one ranged request to a store.

    Raises:
        FileNotFoundError: the file, object or bucket does not exist.
        StorageError: fewer bytes came back (the file is shorter than ``start + length``).
    """
    if start < 0 or length < 1:
        raise ValueError(
            f"read_range({str(uri)!r}): start {start} must be >= 0 and length {length} >= 1"
        )
    uri = Uri.parse(uri)
    if not uri.is_remote:
        with uri.path.open("rb") as f:
            f.seek(start)
            data = f.read(length)
    else:
        uri.object_key()
        data = store(uri).read_range(uri, start, length)
    if len(data) != length:
        raise StorageError(
            f"reading bytes {start}-{start + length - 1} of {uri}: got {len(data)} bytes, "
            f"expected {length} (the file is shorter or changed)"
        )
    return data


def write_bytes(uri: str | Uri, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole or not at all."""
    with open_write(uri) as f:
        f.write(data)


def read_text(uri: str | Uri) -> str:
    """The UTF-8 text of the file at ``uri``."""
    return read_bytes(uri).decode()


def write_text(uri: str | Uri, text: str) -> None:
    """Write ``text`` as UTF-8 to ``uri`` whole or not at all."""
    write_bytes(uri, text.encode())


def read_json(uri: str | Uri) -> Any:
    """The JSON document at ``uri``.

    Raises:
        ValueError: the file is not valid JSON (naming ``uri``).
    """
    try:
        return json.loads(read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{uri} is not valid JSON: {err}") from None


def write_json(uri: str | Uri, obj: Any) -> None:
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


def save_torch(obj: Any, uri: str | Uri, new: bool = False) -> None:
    """``torch.save`` to ``uri``, streamed through a temporary file, whole or not at all (``new``:
    as :func:`open_write`'s).

    ``obj`` must hold only what :func:`load_torch` reads back: tensors, numbers, strings, and
    lists, tuples and dicts of them.
    """
    import torch

    with open_write(uri, new=new) as f:
        torch.save(obj, f)


def load_torch(uri: str | Uri, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` from ``uri`` (an object is streamed to a
    temporary file first): tensors, numbers, strings, and lists, tuples and dicts of them.

    Raises:
        UnsafeFileError: the file holds anything else, a pickled callable for one; it is refused
            without being run (whoever can write the store could otherwise run code in every
            process that loads it).
    """
    import torch

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
def local_copy(uri: str | Uri) -> Iterator[Path]:
    """A local path holding the file or folder at ``uri`` (the path itself for local URIs).

    An object is downloaded to a temporary folder, a ``gs://`` or ``s3://`` prefix with every
    object under it; the temporary copy is removed when the block ends.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    uri = Uri.parse(uri)
    if not uri.is_remote:
        if not uri.path.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        yield uri.path
        return
    objects = store(uri)
    with tempfile.TemporaryDirectory(prefix="kshot-copy-") as tmp:
        target = Path(tmp) / uri.name
        if uri.key and not uri.key.endswith("/") and objects.object_exists(uri):
            _download_file(objects, uri, target)
        else:
            download_dir(uri, target)
        yield target


def _list(uri: Uri) -> list[Uri]:
    if not uri.is_remote:
        root = uri.path
        if not root.is_dir():
            return []
        return sorted(
            (
                uri.join(path.relative_to(root).as_posix())
                for path in root.rglob("*")
                if path.is_file() and not is_partial(path)
            ),
            key=str,
        )
    return [Uri(uri.scheme, uri.bucket, key) for key in store(uri).list_keys(uri)]


def list_uris(prefix_uri: _U) -> list[_U]:
    """URIs of every file inside the folder ``prefix_uri``, recursively, sorted (of the type
    given: text or :class:`Uri`).

    ``gs://b/run`` lists ``gs://b/run/...`` (not ``gs://b/run2/...``); ``gs://b`` lists the bucket;
    ``s3://`` likewise. A folder that does not exist lists as empty. Local temporary files of
    unfinished writes are left out.

    Raises:
        FileNotFoundError: the bucket does not exist.
    """
    found = _list(Uri.parse(prefix_uri))
    return found if isinstance(prefix_uri, Uri) else [str(u) for u in found]


def delete(uri: str | Uri, is_object: bool = False) -> None:
    """Delete the file at ``uri``, or, if ``uri`` is a folder, everything inside it.

    ``is_object``: the caller knows ``uri`` is one object (it just listed it), which saves an
    object store the request that tells an object from a folder.

    Raises:
        ValueError: ``uri`` is a whole bucket (``gs://bucket``); buckets are never emptied here.
        FileNotFoundError: nothing exists at ``uri``.
    """
    uri = Uri.parse(uri)
    if not uri.is_remote:
        path = uri.path
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            raise FileNotFoundError(f"{uri} does not exist")
        return
    if uri.is_bucket:
        raise ValueError(
            f"refusing to delete {str(uri)!r}: name an object or folder inside the bucket"
        )
    objects = store(uri)
    if is_object or (not uri.key.endswith("/") and objects.object_exists(uri)):
        objects.delete_object(uri)
        return
    found = _list(uri)
    if not found:
        raise FileNotFoundError(f"{uri} does not exist")
    for object_uri in found:
        objects.delete_object(object_uri)


def remove_partials(folder: str | Uri, name_prefix: str) -> None:
    """Delete what writers killed mid-write left in ``folder`` for files named ``name_prefix``…
    (see :func:`kshot.storage.local.remove_partials`; a killed upload leaves its temporary file
    on the writer's disk and nothing in the bucket, so an object store has nothing to remove)."""
    folder = Uri.parse(folder)
    if not folder.is_remote:
        local.remove_partials(folder.path, name_prefix)


def upload_dir(local_path: str | Path, uri: str | Uri) -> None:
    """Copy every file under the local folder ``local_path`` to the folder ``uri``.

    Each file lands whole or not at all; the folder as a whole is not atomic (write a marker file
    last when readers need to know the copy is complete).

    Raises:
        NotADirectoryError: ``local_path`` is not a folder.
    """
    root = Path(local_path)
    if not root.is_dir():
        raise NotADirectoryError(f"{local_path} is not a folder")
    uri = Uri.parse(uri)
    for path in sorted(root.rglob("*")):
        if not path.is_file() or is_partial(path):
            continue
        destination = uri.join(path.relative_to(root).as_posix())
        if uri.is_remote:
            store(uri).upload(path, destination)
        else:
            with atomic_file(destination.path) as f, path.open("rb") as source:
                shutil.copyfileobj(source, f)


def download_dir(uri: str | Uri, local_path: str | Path) -> None:
    """Copy every file inside the folder ``uri`` into the local folder ``local_path``.

    Raises:
        FileNotFoundError: the folder is empty or missing, or its bucket does not exist.
        ValueError: an object name would land outside ``local_path`` (``..`` segments).
    """
    uri = Uri.parse(uri)
    found = _list(uri)
    if not uri.is_remote:
        if not found:
            raise FileNotFoundError(f"{uri} does not exist or holds no files")
        upload_dir(uri.path, str(local_path))
        return
    if not found:
        raise FileNotFoundError(f"{uri} does not exist or holds no objects")
    root = Path(local_path).resolve()
    objects = store(uri)
    for object_uri in found:
        target = (root / object_uri.relative_to(uri)).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"object {object_uri} would land outside {root}")
        _download_file(objects, object_uri, target)


def digest(uri: str | Uri) -> str:
    """A digest of the content at ``uri``, a file or every file of a folder (with their names).

    Local files are hashed (SHA-256); ``gs://`` objects give the MD5 that GCS keeps, so nothing is
    downloaded; ``s3://`` and ``minio://`` objects are read. Equal content gives equal digests on
    one kind of store.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    uri = Uri.parse(uri)
    if uri.is_remote:
        md5s = store(uri).object_md5s(uri)
        if md5s is not None:
            if not md5s:
                raise FileNotFoundError(f"{uri} does not exist or holds no objects")
            return "md5:" + hashlib.sha256(json.dumps(md5s).encode()).hexdigest()
    elif uri.path.is_file():
        sha = hashlib.sha256()
        with uri.path.open("rb") as f:
            while chunk := f.read(UPLOAD_CHUNK_BYTES):
                sha.update(chunk)
        return "sha256:" + sha.hexdigest()
    files = _list(uri)
    if uri.is_remote and not files and exists(uri):  # one object, not a folder
        return "sha256:" + hashlib.sha256(read_bytes(uri)).hexdigest()
    if not files:
        raise FileNotFoundError(f"{uri} does not exist or holds no files")
    parts = [(f.relative_to(uri), digest(f)) for f in files]
    return "sha256:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# ------------------------------------------------------------- conditional writes (object stores)


def _conditional_store(uri: str | Uri) -> tuple[Uri, ObjectStore]:
    uri = Uri.parse(uri)
    if not uri.is_remote:
        raise ValueError(
            f"{str(uri)!r}: conditional writes are implemented for gs://, s3:// and minio:// objects"
        )
    uri.object_key()
    return uri, store(uri)


def create_if_absent(uri: str | Uri, data: bytes) -> Generation | None:
    """Write the small object ``uri`` only if no object exists there; its generation, or None when
    one exists. (A retried request whose first attempt landed also answers None: callers that
    must know tell their own object by its content.)"""
    uri, objects = _conditional_store(uri)
    return objects.create_if_absent(uri, data)


def read_versioned(uri: str | Uri) -> tuple[bytes, Generation] | None:
    """The content of the object ``uri`` and the generation it was read at, or None if absent."""
    uri, objects = _conditional_store(uri)
    return objects.read_versioned(uri)


def replace_if_generation(uri: str | Uri, data: bytes, generation: Generation) -> Generation | None:
    """Replace the object ``uri`` only if its generation is still ``generation``; the new
    generation, or None when another writer changed or deleted it meanwhile."""
    uri, objects = _conditional_store(uri)
    return objects.replace_if_generation(uri, data, generation)


def delete_if_generation(uri: str | Uri, generation: Generation) -> bool:
    """Delete the object ``uri`` only if its generation is still ``generation``; whether it did."""
    uri, objects = _conditional_store(uri)
    return objects.delete_if_generation(uri, generation)
