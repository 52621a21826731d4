"""``gs://``: Google Cloud Storage through google-cloud-storage.

Credentials: Workload Identity / Application Default Credentials; when ``STORAGE_EMULATOR_HOST``
is set, the client talks to that endpoint anonymously. Every request retries under
:func:`kshot.storage.base.retry_policy`; uploads and conditional writes under its conditional form,
which retries only requests that carry a generation precondition.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from google.cloud.storage import exceptions as gcs_exceptions
from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

from kshot.storage.base import (
    UPLOAD_CHUNK_BYTES,
    ObjectStore,
    StorageError,
    changed_by_another_writer,
    gave_up,
    md5_base64,
    retry_policy,
)
from kshot.storage.uri import Uri

__all__ = ["GcsStore", "STORE"]

_EMULATOR_PROJECT = "kshot-emulator"
_NO_CREDENTIALS = (
    "no usable Google Cloud credentials ({err}). On GKE give the pod's service account Workload "
    "Identity (manifests/); elsewhere run `gcloud auth application-default login` or set "
    "GOOGLE_APPLICATION_CREDENTIALS; STORAGE_EMULATOR_HOST points gs:// at an emulator"
)
_T = TypeVar("_T")


def _conditional(retry: Retry) -> ConditionalRetryPolicy:
    return ConditionalRetryPolicy(retry, is_generation_specified, ["query_params"])


class GcsStore(ObjectStore):
    """``gs://`` buckets; one client per process and emulator endpoint."""

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
                        raise PermissionError(_NO_CREDENTIALS.format(err=err)) from err
                self._cached = (identity, client)
            return self._cached[1]

    def call(self, uri: Uri, action: str, operation: Callable[[Retry], _T]) -> _T:
        """Run ``operation(retry_policy)`` and turn library errors into errors that name
        ``uri``."""
        try:
            return operation(retry_policy())
        except api_exceptions.NotFound as err:
            raise FileNotFoundError(self.not_found_message(uri)) from err
        except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as err:
            raise PermissionError(f"{action} {uri}: permission denied: {err.message}") from err
        except google.auth.exceptions.GoogleAuthError as err:
            raise PermissionError(f"{action} {uri}: " + _NO_CREDENTIALS.format(err=err)) from err
        except api_exceptions.RetryError as err:
            raise gave_up(action, uri, err) from err
        except (
            api_exceptions.GoogleAPIError,
            gcs_exceptions.InvalidResponse,
            gcs_exceptions.DataCorruption,
            requests.RequestException,
        ) as err:
            raise StorageError(f"{action} {uri} failed: {err!r}") from err

    def _blob(self, uri: Uri, **kwargs: Any) -> gcs.Blob:
        return self.client().bucket(uri.bucket).blob(uri.object_key(), **kwargs)

    def bucket_exists(self, uri: Uri) -> bool:
        return self.call(
            uri,
            "checking the bucket of",
            lambda retry: self.client().bucket(uri.bucket).exists(retry=retry),
        )

    def object_exists(self, uri: Uri) -> bool:
        blob = self._blob(uri)
        return self.call(uri, "checking", lambda retry: blob.exists(retry=retry))

    def list_keys(self, uri: Uri) -> list[str]:
        def list_all(retry: Retry) -> list[str]:
            blobs = self.client().list_blobs(uri.bucket, prefix=uri.folder_prefix, retry=retry)
            return sorted(blob.name for blob in blobs if not blob.name.endswith("/"))

        return self.call(uri, "listing", list_all)

    def read_bytes(self, uri: Uri) -> bytes:
        blob = self._blob(uri)
        return self.call(uri, "reading", lambda retry: blob.download_as_bytes(retry=retry))

    def read_range(self, uri: Uri, start: int, length: int) -> bytes:
        blob = self._blob(uri)
        end = start + length - 1  # inclusive
        return self.call(
            uri,
            "reading",
            lambda retry: blob.download_as_bytes(start=start, end=end, retry=retry, checksum=None),
        )

    def download(self, uri: Uri, f: IO[bytes]) -> None:
        blob = self._blob(uri)
        self.call(uri, "downloading", lambda retry: blob.download_to_file(f, retry=retry))

    def upload(self, local_file: Path, uri: Uri, new: bool = False) -> None:
        bucket = self.client().bucket(uri.bucket)
        key = uri.object_key()
        blob = bucket.blob(key, chunk_size=UPLOAD_CHUNK_BYTES)

        def put(retry: Retry, generation: int) -> tuple[bool, gcs.Blob | None]:
            """Upload if the object's generation is ``generation`` (0: none); whether the object
            now holds this file, and what is there when it does not."""
            try:
                blob.upload_from_filename(
                    str(local_file), if_generation_match=generation, retry=_conditional(retry)
                )
                return True, None
            except api_exceptions.PreconditionFailed:
                found = bucket.get_blob(key, retry=retry)
                landed = (
                    found is not None
                    and found.size == local_file.stat().st_size
                    and found.md5_hash == md5_base64(local_file)
                )
                return landed, found

        def upload(retry: Retry) -> None:
            if new:
                generation = 0
            else:
                current = bucket.get_blob(key, retry=retry)
                generation = current.generation if current is not None else 0
            landed, found = put(retry, generation)
            if not landed and new and found is not None:  # there before: replace that version
                generation = found.generation
                landed, found = put(retry, generation)
            if not landed:
                now = f"generation {found.generation}" if found is not None else "deleted"
                raise changed_by_another_writer(uri, f"generation {generation}", now)

        self.call(uri, "uploading to", upload)

    def delete_object(self, uri: Uri) -> None:
        blob = self._blob(uri)
        # Gone by now (a retry whose first attempt landed, or another deleter): the goal is reached.
        with contextlib.suppress(FileNotFoundError):
            self.call(uri, "deleting", lambda retry: blob.delete(retry=retry))

    def object_md5s(self, uri: Uri) -> list[tuple[str, str]]:
        def md5s(retry: Retry) -> list[tuple[str, str]]:
            client = self.client()
            if uri.key and not uri.key.endswith("/"):
                blob = client.bucket(uri.bucket).get_blob(uri.key, retry=retry)
                if blob is not None:
                    return [("", blob.md5_hash)]
            prefix = uri.folder_prefix
            listed = client.list_blobs(uri.bucket, prefix=prefix, retry=retry)
            return sorted((b.name[len(prefix) :], b.md5_hash) for b in listed)

        return self.call(uri, "reading", md5s)

    def create_if_absent(self, uri: Uri, data: bytes) -> int | None:
        blob = self._blob(uri)

        def create(retry: Retry) -> int | None:
            try:
                blob.upload_from_string(data, if_generation_match=0, retry=_conditional(retry))
            except api_exceptions.PreconditionFailed:
                return None
            return int(blob.generation)

        return self.call(uri, "creating", create)

    def read_versioned(self, uri: Uri) -> tuple[bytes, int] | None:
        ref = self._blob(uri)

        def read(retry: Retry) -> tuple[bytes, int] | None:
            blob = ref.bucket.get_blob(ref.name, retry=retry)
            if blob is None:
                return None
            generation = int(blob.generation)
            try:
                return blob.download_as_bytes(retry=retry), generation
            except api_exceptions.NotFound:  # deleted between the two requests
                return None

        return self.call(uri, "reading", read)

    def replace_if_generation(self, uri: Uri, data: bytes, generation: int | str) -> int | None:
        blob = self._blob(uri)

        def replace(retry: Retry) -> int | None:
            try:
                blob.upload_from_string(
                    data, if_generation_match=int(generation), retry=_conditional(retry)
                )
            except api_exceptions.PreconditionFailed:
                return None
            return int(blob.generation)

        return self.call(uri, "replacing", replace)

    def delete_if_generation(self, uri: Uri, generation: int | str) -> bool:
        blob = self._blob(uri)

        def remove(retry: Retry) -> bool:
            try:
                blob.delete(if_generation_match=int(generation), retry=_conditional(retry))
            except (api_exceptions.PreconditionFailed, api_exceptions.NotFound):
                return False
            return True

        return self.call(uri, "deleting", remove)


STORE = GcsStore()
"""The process's ``gs://`` store."""
