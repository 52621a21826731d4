"""The requests an object store answers for :mod:`kshot.storage`, the one retry policy they all
run under, and the errors they raise.

Each store (:mod:`kshot.storage.gcs`, :mod:`kshot.storage.s3`) is one :class:`ObjectStore`; the
public verbs in :mod:`kshot.storage` are written once on top of it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import IO

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry

from kshot.storage.uri import Uri

__all__ = [
    "RETRY_DEADLINE_ENV",
    "RETRY_INITIAL_DELAY_ENV",
    "UPLOAD_CHUNK_BYTES",
    "Generation",
    "ObjectStore",
    "StorageError",
    "retry_policy",
    "gave_up",
    "missing_bucket",
    "changed_by_another_writer",
    "md5_base64",
]

RETRY_DEADLINE_ENV = "KSHOT_STORAGE_RETRY_DEADLINE"
RETRY_INITIAL_DELAY_ENV = "KSHOT_STORAGE_RETRY_INITIAL_DELAY"
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # a multiple of 256 KiB (GCS resumable), over 5 MiB (S3 part)
_DEFAULT_RETRY_DEADLINE_S = 300.0
_DEFAULT_RETRY_INITIAL_DELAY_S = 1.0
_RETRY_MAX_DELAY_S = 30.0

Generation = int | str
"""The version of an object that a conditional write names: the generation (an int) on GCS, the
ETag (a str) on S3. Opaque to callers: they only pass back what they were given."""


class StorageError(OSError):
    """A storage request that failed for good (retries exhausted or a non-retryable answer)."""


class ObjectStore:
    """The requests the public verbs need from one object store.

    Every method takes the :class:`Uri` it works on (for the request and for its errors), retries
    under :func:`retry_policy`, and raises ``FileNotFoundError``, ``PermissionError`` or
    :class:`StorageError` naming the URI.
    """

    def bucket_exists(self, uri: Uri) -> bool:
        raise NotImplementedError

    def object_exists(self, uri: Uri) -> bool:
        raise NotImplementedError

    def list_keys(self, uri: Uri) -> list[str]:
        """Object keys inside the folder ``uri`` (the whole bucket for ``scheme://bucket``),
        sorted."""
        raise NotImplementedError

    def read_bytes(self, uri: Uri) -> bytes:
        raise NotImplementedError

    def read_range(self, uri: Uri, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the object at ``uri`` (one ranged GET)."""
        raise NotImplementedError

    def download(self, uri: Uri, f: IO[bytes]) -> None:
        """Stream the object at ``uri`` into the open file ``f`` (written from its start)."""
        raise NotImplementedError

    def upload(self, local_file: Path, uri: Uri, new: bool = False) -> None:
        """Upload ``local_file`` to ``uri`` under a precondition (see :mod:`kshot.storage`).

        ``new``: the caller expects no object there yet, so the upload goes first under "must not
        exist" and reads the object's version only if one is there after all (one request instead
        of two when it is new).

        Raises:
            StorageError: another writer replaced the object during this write.
        """
        raise NotImplementedError

    def delete_object(self, uri: Uri) -> None:
        """Delete the object at ``uri``; one already gone counts as deleted."""
        raise NotImplementedError

    def object_md5s(self, uri: Uri) -> list[tuple[str, str]] | None:
        """``(name below uri, MD5)`` of the object or of every object inside the folder ``uri``,
        from the store's metadata; None when the store keeps no MD5 of every object."""
        return None

    # Conditional writes of small objects (leases); see kshot.storage's functions of these names.

    def create_if_absent(self, uri: Uri, data: bytes) -> Generation | None:
        raise NotImplementedError

    def read_versioned(self, uri: Uri) -> tuple[bytes, Generation] | None:
        raise NotImplementedError

    def replace_if_generation(
        self, uri: Uri, data: bytes, generation: Generation
    ) -> Generation | None:
        raise NotImplementedError

    def delete_if_generation(self, uri: Uri, generation: Generation) -> bool:
        raise NotImplementedError

    def not_found_message(self, uri: Uri) -> str:
        """What to say when ``uri`` is missing: whether its bucket is missing too."""
        try:
            found = self.bucket_exists(uri)
        except OSError:
            return f"{uri} does not exist"
        return f"{uri} does not exist" if found else missing_bucket(uri)


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


def retry_policy() -> Retry:
    """GCS's ``DEFAULT_RETRY`` with ``KSHOT_STORAGE_RETRY_DEADLINE`` and
    ``KSHOT_STORAGE_RETRY_INITIAL_DELAY`` (other stores swap in their own predicate of what to
    retry)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    deadline = _retry_deadline()
    initial = min(_env_seconds(RETRY_INITIAL_DELAY_ENV, _DEFAULT_RETRY_INITIAL_DELAY_S), deadline)
    return DEFAULT_RETRY.with_timeout(deadline).with_delay(
        initial=initial, maximum=max(initial, _RETRY_MAX_DELAY_S), multiplier=2.0
    )


def gave_up(action: str, uri: Uri, err: api_exceptions.RetryError) -> StorageError:
    return StorageError(
        f"{action} {uri} failed: still failing after retrying for {_retry_deadline():g} s "
        f"(set {RETRY_DEADLINE_ENV} to wait longer); last error: {err.cause!r}"
    )


def missing_bucket(uri: Uri) -> str:
    return f"{uri}: bucket {uri.bucket_uri} does not exist (or these credentials cannot see it)"


def changed_by_another_writer(uri: Uri, expected: str, now: str) -> StorageError:
    return StorageError(
        f"writing {uri}: another writer changed it during this write ({expected} expected, now "
        f"{now}); left as it is. Give each writer its own URI"
    )


def md5_base64(local_file: Path) -> str:
    """The MD5 of ``local_file`` as GCS reports it (base64), read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with local_file.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")
