"""Pytest plugin: a real S3-protocol server (moto in server mode) for storage tests.

Fixtures:

* ``s3_server`` (session): runs moto's S3 server (``moto[server]``) on 127.0.0.1 at a free port
  in a child process (so the tests' memory measurements see the client alone), points
  ``AWS_ENDPOINT_URL_S3`` at it with throw-away credentials, yields the endpoint URL and stops
  the process at the end of the session. Child processes (kfp.local steps, workers) inherit the
  settings and reach the same server.
* ``s3_bucket``: a fresh, uniquely named bucket on that server, as ``"s3://<name>"``.
* ``minio_bucket``: a fresh bucket on the same server as KFP's store, ``"minio://<name>"``: the
  test's ``KSHOT_MINIO_ENDPOINT`` points at the server and the keys are only in the variables
  that KFP's Secret fills (``s3_store.MINIO_SECRET_KEYS``), not in ``AWS_*``.
* ``s3_flaky_proxy``: a :class:`tests.gcs.FlakyProxy` between the client and the server for one
  test; ``AWS_ENDPOINT_URL_S3`` points at the proxy while the test runs and retries start fast.
  moto enforces ``If-Match`` / ``If-None-Match`` itself.

Register with ``pytest_plugins = ["tests.s3"]`` in ``conftest.py`` (or ``pytest -p tests.s3``).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from kshot import storage
from kshot.storage import s3 as s3_store
from tests.gcs import FlakyProxy, start_server, stop_server

__all__ = ["direct_client", "minio_bucket", "s3_bucket", "s3_flaky_proxy", "s3_server"]

ENDPOINT_ENV = s3_store.S3_ENDPOINT_ENVS[0]
_LOOPBACK = "127.0.0.1"
SETTINGS = {
    "AWS_ACCESS_KEY_ID": "kshot-test",
    "AWS_SECRET_ACCESS_KEY": "kshot-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def direct_client(endpoint: str) -> Any:
    """A boto3 client of the server itself (past any proxy): the tests' other writer."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=SETTINGS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SETTINGS["AWS_SECRET_ACCESS_KEY"],
        region_name=SETTINGS["AWS_DEFAULT_REGION"],
    )


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server on a free loopback port (see :func:`tests.gcs.start_server`)."""
    return start_server(
        "moto S3 server",
        lambda port: [sys.executable, "-m", "moto.server", "-H", _LOOPBACK, "-p", str(port)],
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint of a session-wide moto S3 server; ``AWS_ENDPOINT_URL_S3`` points at it."""
    process, endpoint = start_moto()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in s3_store.S3_ENDPOINT_ENVS[1:] + ("AWS_PROFILE",):
                patch.delenv(name, raising=False)
            for name, value in {ENDPOINT_ENV: endpoint, **SETTINGS}.items():
                patch.setenv(name, value)
            yield endpoint
    finally:
        stop_server(process)


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new empty bucket on the server, as ``s3://<name>``."""
    name = f"kshot-test-{uuid.uuid4().hex[:12]}"
    direct_client(s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def minio_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty bucket on the server, as ``minio://<name>``, reached as a pod of a KFP run
    reaches its store: the endpoint in ``KSHOT_MINIO_ENDPOINT``, the keys of the Secret in their
    own variables and nowhere else."""
    name = f"kshot-test-{uuid.uuid4().hex[:12]}"
    direct_client(s3_server).create_bucket(Bucket=name)
    for env in (ENDPOINT_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv(s3_store.MINIO_ENDPOINT_ENV, s3_server)
    access, secret = s3_store.MINIO_SECRET_KEYS.values()
    monkeypatch.setenv(access, SETTINGS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv(secret, SETTINGS["AWS_SECRET_ACCESS_KEY"])
    return f"minio://{name}"


@pytest.fixture
def s3_flaky_proxy(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """A :class:`FlakyProxy` (no faults until the test sets ``fail_share``) in front of the
    server, with ``AWS_ENDPOINT_URL_S3`` pointing at it and a short initial retry delay."""
    proxy = FlakyProxy(s3_server)
    proxy.start()
    monkeypatch.setenv(ENDPOINT_ENV, proxy.url)
    monkeypatch.setenv(storage.RETRY_INITIAL_DELAY_ENV, "0.02")
    try:
        yield proxy
    finally:
        proxy.stop()
