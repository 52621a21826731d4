"""``s3://`` and ``minio://``: S3-compatible stores (AWS S3, MinIO, SeaweedFS) through boto3.

``s3://``: boto3's credential chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a web
identity such as EKS IRSA, a profile); ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) points it
at MinIO, SeaweedFS or another S3-compatible server, which boto3 then addresses path-style
(``http://host:9000/bucket/key``), as such servers expect. ``minio://`` is Kubeflow Pipelines' own
artifact store (its default pipeline root, ``minio://mlpipeline/v2/artifacts``): the endpoint
:func:`minio_endpoint`, the keys of KFP's Secret :data:`MINIO_SECRET` in the environment variables
of :data:`MINIO_SECRET_KEYS` (the pipeline's steps and the jobs they launch get them from the
Secret), else boto3's chain.

Writes carry ``If-Match`` with the ETag read before (``If-None-Match: *`` when there must be no
object yet); the object's MD5 travels in its ``kshot-md5`` metadata, since a multipart ETag is no
MD5. botocore sends each request once; :meth:`S3Store.call` retries under
:func:`kshot.storage.base.retry_policy` with this module's predicate of what to retry.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from google.api_core import exceptions as api_exceptions

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

__all__ = [
    "S3_ENDPOINT_ENVS",
    "MINIO_ENDPOINT_ENV",
    "MINIO_REGION_ENV",
    "MINIO_SECRET",
    "MINIO_SECRET_KEYS",
    "minio_endpoint",
    "S3Store",
    "S3_STORE",
    "MINIO_STORE",
]

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
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024  # what a download cut off part-way loses at most
_S3_MD5_METADATA = "kshot-md5"
_T = TypeVar("_T")


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


class S3Store(ObjectStore):
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

    def call(self, uri: Uri, action: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation()`` under the retry policy and turn boto errors into errors that name
        ``uri``."""
        retry = retry_policy().with_predicate(_s3_retryable)
        try:
            return retry(operation)()
        except botocore.exceptions.ClientError as err:
            message = err.response.get("Error", {}).get("Message") or _s3_code(err)
            if _s3_missing(err):
                raise FileNotFoundError(self.not_found_message(uri)) from err
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
            raise gave_up(action, uri, err) from err
        except botocore.exceptions.BotoCoreError as err:
            raise StorageError(f"{action} {uri} failed: {err!r}") from err

    def bucket_exists(self, uri: Uri) -> bool:
        def head() -> bool:
            try:
                self.client().head_bucket(Bucket=uri.bucket)
            except botocore.exceptions.ClientError as err:
                if _s3_missing(err):
                    return False
                raise
            return True

        return self.call(uri, "checking the bucket of", head)

    def _head(self, uri: Uri) -> dict[str, Any] | None:
        """The object's ``HeadObject`` answer, None when there is none."""
        bucket, key = uri.bucket, uri.object_key()

        def head() -> dict[str, Any] | None:
            try:
                return self.client().head_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as err:
                if _s3_missing(err):
                    return None
                raise

        return self.call(uri, "checking", head)

    def object_exists(self, uri: Uri) -> bool:
        return self._head(uri) is not None

    def list_keys(self, uri: Uri) -> list[str]:
        bucket, prefix = uri.bucket, uri.folder_prefix

        def list_all() -> list[str]:
            pages = (
                self.client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix)
            )
            keys = (item["Key"] for page in pages for item in page.get("Contents", []))
            return sorted(k for k in keys if not k.endswith("/"))

        return self.call(uri, "listing", list_all)

    def read_bytes(self, uri: Uri) -> bytes:
        bucket, key = uri.bucket, uri.object_key()
        return self.call(
            uri,
            "reading",
            lambda: self.client().get_object(Bucket=bucket, Key=key)["Body"].read(),
        )

    def read_range(self, uri: Uri, start: int, length: int) -> bytes:
        bucket, key = uri.bucket, uri.object_key()
        span = f"bytes={start}-{start + length - 1}"
        return self.call(
            uri,
            "reading",
            lambda: self.client().get_object(Bucket=bucket, Key=key, Range=span)["Body"].read(),
        )

    def download(self, uri: Uri, f: IO[bytes]) -> None:
        """A retry after a cut-off answer asks for the bytes still missing only (``Range``), and
        only of the version it started on (``If-Match`` its ETag); if the object was replaced
        meanwhile, the download starts over on the new version."""
        bucket, key = uri.bucket, uri.object_key()
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

    def upload(self, local_file: Path, uri: Uri, new: bool = False) -> None:
        md5 = md5_base64(local_file)
        size = local_file.stat().st_size

        def put(current: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
            """Upload if the object is still ``current`` (None: none); whether the object now
            holds this file, and what is there when it does not."""
            condition = {"IfMatch": current["ETag"]} if current else {"IfNoneMatch": "*"}
            try:
                if size <= UPLOAD_CHUNK_BYTES:
                    self._put(local_file, uri, md5, condition)
                else:
                    self._multipart(local_file, uri, md5, condition)
                return True, None
            except _PreconditionFailed:
                found = self._head(uri)
                landed = (
                    found is not None
                    and found["ContentLength"] == size
                    and found.get("Metadata", {}).get(_S3_MD5_METADATA) == md5
                )
                return landed, found

        current = None if new else self._head(uri)
        landed, found = put(current)
        if not landed and new and found is not None:  # there before: replace that version
            current = found
            landed, found = put(current)
        if not landed:
            expected = f"ETag {current['ETag']}" if current else "no object"
            now = f"ETag {found['ETag']}" if found is not None else "deleted"
            raise changed_by_another_writer(uri, expected, now)

    @staticmethod
    def _refused(err: botocore.exceptions.ClientError) -> bool:
        return _s3_status(err) == 412 or _s3_code(err) == "PreconditionFailed"

    # Conditional writes of small objects (leases); the object's ETag stands for its generation.

    def _put_if(self, uri: Uri, action: str, data: bytes, condition: dict[str, str]) -> str | None:
        """``PutObject`` under ``condition``; the new ETag, or None when the store refused it (an
        ``If-Match`` on an object deleted meanwhile is answered ``NoSuchKey``)."""
        bucket, key = uri.bucket, uri.object_key()

        def put() -> str | None:
            try:
                answer = self.client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
            except botocore.exceptions.ClientError as err:
                if self._refused(err) or ("IfMatch" in condition and _s3_code(err) == "NoSuchKey"):
                    return None
                raise
            return str(answer["ETag"])

        return self.call(uri, action, put)

    def create_if_absent(self, uri: Uri, data: bytes) -> str | None:
        return self._put_if(uri, "creating", data, {"IfNoneMatch": "*"})

    def read_versioned(self, uri: Uri) -> tuple[bytes, str] | None:
        bucket, key = uri.bucket, uri.object_key()

        def read() -> tuple[bytes, str] | None:
            try:
                answer = self.client().get_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as err:
                if _s3_missing(err):
                    return None
                raise
            return answer["Body"].read(), str(answer["ETag"])

        return self.call(uri, "reading", read)

    def replace_if_generation(self, uri: Uri, data: bytes, generation: int | str) -> str | None:
        return self._put_if(uri, "replacing", data, {"IfMatch": str(generation)})

    def delete_if_generation(self, uri: Uri, generation: int | str) -> bool:
        bucket, key = uri.bucket, uri.object_key()

        def remove() -> bool:
            try:
                self.client().delete_object(Bucket=bucket, Key=key, IfMatch=str(generation))
            except botocore.exceptions.ClientError as err:
                if self._refused(err) or _s3_missing(err):
                    return False
                raise
            return True

        return self.call(uri, "deleting", remove)

    def _put(self, local_file: Path, uri: Uri, md5: str, condition: dict[str, str]) -> None:
        bucket, key = uri.bucket, uri.object_key()

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

    def _multipart(self, local_file: Path, uri: Uri, md5: str, condition: dict[str, str]) -> None:
        """Upload in :data:`UPLOAD_CHUNK_BYTES` parts, each retried on its own; the object
        appears when the last request, which carries ``condition``, completes the upload."""
        bucket, key = uri.bucket, uri.object_key()
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
                while chunk := f.read(UPLOAD_CHUNK_BYTES):
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

    def delete_object(self, uri: Uri) -> None:
        bucket, key = uri.bucket, uri.object_key()
        # S3 answers a delete of a missing key with success, so a retried delete is safe.
        self.call(uri, "deleting", lambda: self.client().delete_object(Bucket=bucket, Key=key))


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


S3_STORE = S3Store(_s3_connection, _NO_S3_CREDENTIALS)
MINIO_STORE = S3Store(
    _minio_connection,
    "no usable credentials for KFP's artifact store ({err}). The pipeline's steps and jobs read "
    f"them from the Secret {MINIO_SECRET!r} of their namespace (keys "
    f"{', '.join(MINIO_SECRET_KEYS)}) into {', '.join(MINIO_SECRET_KEYS.values())}; elsewhere set "
    "those variables, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
)
