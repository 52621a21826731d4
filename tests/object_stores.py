"""Pytest plugin: each object store under test behind one face, so a test runs on gs:// and s3://.

Fixtures:

* ``remote``: parametrised over ``gcs`` (``tests/gcs.py``) and ``s3`` (``tests/s3.py``); a fresh
  bucket on that store's local server and what a test needs to know of the store's protocol.
* ``flaky_remote``: the fault-injecting :class:`tests.gcs.FlakyProxy` in front of ``remote``'s
  server (the store's client talks to the proxy while the test runs).

Register with ``pytest_plugins = ["tests.object_stores"]`` after ``tests.gcs`` and ``tests.s3``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from kshot import storage
from tests.gcs import EMULATOR_ENV, FlakyProxy, start_emulator, stop_server
from tests.s3 import ENDPOINT_ENV as S3_ENDPOINT_ENV
from tests.s3 import SETTINGS as S3_SETTINGS
from tests.s3 import direct_client, start_moto

__all__ = ["ENDPOINT_ENVS", "Remote", "flaky_remote", "remote", "store_server"]

ENDPOINT_ENVS = {"gcs": EMULATOR_ENV, "s3": S3_ENDPOINT_ENV}
"""Store kind → the environment variable that points kshot at its server (or at a proxy)."""

_S3_PART_BYTES = 8 * 1024 * 1024  # above this kshot.storage uploads to S3 in parts


@dataclass(frozen=True)
class Remote:
    """A bucket on one store's test server.

    Attributes:
        bucket: its URI, ``gs://NAME`` or ``s3://NAME``.
        endpoint: the server's own URL (past any proxy).
        put: ``put(uri, data)`` writes an object as another writer would, straight to the server.
        write_request: ``write_request(uri, size)`` is ``(method, path part)`` of the request
            whose success makes an upload of ``size`` bytes to ``uri`` land (see
            :meth:`FlakyProxy.lose_next_answer`).
        delete_request: ``delete_request(uri)`` likewise for deleting the object at ``uri``.
        download_request: ``download_request(uri)`` likewise for the request that sends the
            object's bytes.
    """

    bucket: str
    endpoint: str
    put: Callable[[str, bytes], None]
    write_request: Callable[[str, int], tuple[str, str]]
    delete_request: Callable[[str], tuple[str, str]]
    download_request: Callable[[str], tuple[str, str]]


def _gcs_remote(bucket: str, endpoint: str) -> Remote:
    client = gcs.Client(
        project="kshot-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )

    def put(uri: str, data: bytes) -> None:
        parsed = storage.Uri.parse(uri)
        name, key = parsed.bucket, parsed.key
        client.bucket(name).blob(key).upload_from_string(data)

    return Remote(
        bucket=bucket,
        endpoint=endpoint,
        put=put,
        write_request=lambda uri, size: ("POST", "/upload/"),  # multipart, or starting resumable
        delete_request=lambda uri: ("DELETE", "/o/"),
        download_request=lambda uri: ("GET", "alt=media"),
    )


def _s3_remote(bucket: str, endpoint: str) -> Remote:
    client = direct_client(endpoint)

    def put(uri: str, data: bytes) -> None:
        parsed = storage.Uri.parse(uri)
        name, key = parsed.bucket, parsed.key
        client.put_object(Bucket=name, Key=key, Body=data)

    def write_request(uri: str, size: int) -> tuple[str, str]:
        if size <= _S3_PART_BYTES:
            return "PUT", "/" + storage.Uri.parse(uri).key  # PutObject
        return "POST", "uploadId="  # CompleteMultipartUpload

    return Remote(
        bucket=bucket,
        endpoint=endpoint,
        put=put,
        write_request=write_request,
        delete_request=lambda uri: ("DELETE", "/" + storage.Uri.parse(uri).key),
        download_request=lambda uri: ("GET", "/" + storage.Uri.parse(uri).key),
    )


@pytest.fixture(params=["gcs", "s3"])
def remote(request: pytest.FixtureRequest) -> Remote:
    """A fresh bucket on the GCS emulator, then on the S3 server."""
    if request.param == "gcs":
        return _gcs_remote(
            request.getfixturevalue("gcs_bucket"), request.getfixturevalue("gcs_emulator")
        )
    return _s3_remote(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server"))


@pytest.fixture
def flaky_remote(remote: Remote, request: pytest.FixtureRequest) -> FlakyProxy:
    """A fault-injecting proxy in front of ``remote``'s server, in use for the whole test."""
    if storage.Uri.parse(remote.bucket).scheme == "gs":
        return request.getfixturevalue("flaky_proxy")
    return request.getfixturevalue("s3_flaky_proxy")


@contextlib.contextmanager
def store_server(kind: str) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """For a script outside pytest: the test server of ``kind`` (``gcs``: the GCS emulator,
    ``s3``: moto) on 127.0.0.1, with a new bucket and, for ``s3``, the test keys in the
    environment. Yields the server's process, its endpoint and the bucket's URI; pointing kshot at
    the server (or a proxy in front of it) through :data:`ENDPOINT_ENVS` is the caller's.
    """
    process, endpoint = start_emulator() if kind == "gcs" else start_moto()
    saved = {name: os.environ.get(name) for name in S3_SETTINGS}
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        if kind == "gcs":
            gcs.Client(
                project="bench",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": endpoint},
            ).create_bucket(bucket)
        else:
            os.environ.update(S3_SETTINGS)
            direct_client(endpoint).create_bucket(Bucket=bucket)
        yield process, endpoint, f"{'gs' if kind == 'gcs' else 's3'}://{bucket}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_server(process)
