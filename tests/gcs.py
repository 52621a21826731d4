"""Pytest plugin: a real GCS-compatible server for storage tests, and a proxy that injects faults.

Fixtures:

* ``gcs_emulator`` (session): runs ``gcp-storage-emulator`` (PyPI) in memory on 127.0.0.1 at a
  free port in a child process, points ``STORAGE_EMULATOR_HOST`` at it, yields the endpoint URL and
  stops the process at the end of the session.
* ``gcs_bucket``: a fresh, uniquely named bucket on the emulator, as ``"gs://<name>"``.
* ``flaky_proxy``: a :class:`FlakyProxy` between the client and the emulator for one test;
  ``STORAGE_EMULATOR_HOST`` points at the proxy while the test runs and retries start fast.

Register with ``pytest_plugins = ["tests.gcs"]`` in ``conftest.py`` (or ``pytest -p tests.gcs``).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from kshot import storage

__all__ = ["FlakyProxy", "flaky_proxy", "gcs_bucket", "gcs_emulator", "start_emulator"]

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_LOOPBACK = "127.0.0.1"
_STARTUP_TIMEOUT_S = 30.0
_STARTUP_ATTEMPTS = 3
_HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        return probe.getsockname()[1]


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once ``port`` accepts connections; False if ``process`` exits first."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((_LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"gcp-storage-emulator did not listen on {_LOOPBACK}:{port} in time")


def start_emulator() -> tuple[subprocess.Popen[bytes], str]:
    """Start an in-memory ``gcp-storage-emulator`` on a free loopback port.

    Returns:
        The child process and its endpoint URL (``http://127.0.0.1:<port>``).

    Raises:
        RuntimeError: the emulator exited at every attempt (its output is in the message).
    """
    failures = []
    for _ in range(_STARTUP_ATTEMPTS):
        port = _free_port()
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", _LOOPBACK]
        command += ["--port", str(port), "--in-memory", "--quiet"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            listening = _wait_until_listening(process, port)
        except TimeoutError:
            _stop(process)
            raise
        if listening:
            return process, f"http://{_LOOPBACK}:{port}"
        output, _ = process.communicate()
        failures.append(output.decode(errors="replace")[-2000:])
    raise RuntimeError("gcp-storage-emulator failed to start:\n" + "\n---\n".join(failures))


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """The endpoint of a session-wide GCS emulator; ``STORAGE_EMULATOR_HOST`` points at it."""
    process, endpoint = start_emulator()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(EMULATOR_ENV, endpoint)
            yield endpoint
    finally:
        _stop(process)


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> str:
    """A new empty bucket on the emulator, as ``gs://<name>``."""
    name = f"kshot-test-{uuid.uuid4().hex[:12]}"
    client = gcs.Client(
        project="kshot-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_emulator},
    )
    client.create_bucket(name)
    return f"gs://{name}"


class FlakyProxy:
    """A threaded HTTP proxy on 127.0.0.1 that fails a share of the requests it forwards.

    A failing request is answered with HTTP 503 or with a closed connection and no answer, in
    turn; it never reaches the upstream server. Failures are spread evenly and deterministically:
    with ``fail_share = 0.3`` exactly 3 requests in every 10 fail, and ``1.0`` fails them all.

    Args:
        upstream: URL of the server to forward to, e.g. ``http://127.0.0.1:9023``.
        fail_share: fraction of requests to fail, from 0 to 1; tests may change it at any time.
    """

    def __init__(self, upstream: str, fail_share: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or _LOOPBACK
        self.upstream_port = parts.port or 80
        self.fail_share = fail_share
        self.forwarded = 0
        self.failed = 0
        self._failure_credit = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((_LOOPBACK, 0), _proxy_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's own endpoint URL."""
        return f"http://{_LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> None:
        """Start serving in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def next_fault(self) -> str | None:
        """``"503"``, ``"drop"`` or ``None`` (forward) for the next request."""
        with self._lock:
            self._failure_credit += self.fail_share
            if self._failure_credit < 1.0:
                self.forwarded += 1
                return None
            self._failure_credit -= 1.0
            self.failed += 1
            return "503" if self.failed % 2 else "drop"


def _proxy_handler(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            """Keep test output quiet."""

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay(self) -> None:
            body = self._read_body()
            fault = proxy.next_fault()
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "503":
                payload = json.dumps({"error": {"code": 503, "message": "injected fault"}})
                self._answer(503, [("Content-Type", "application/json")], payload.encode())
                return
            headers = {
                key: value
                for key, value in self.headers.items()
                if key.lower() not in _HOP_BY_HOP_HEADERS | {"content-length"}
            }
            upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=60
            )
            try:
                upstream.request(
                    self.command, self.path, body=body if body else None, headers=headers
                )
                response = upstream.getresponse()
                content = response.read()
                kept = [
                    (key, value)
                    for key, value in response.getheaders()
                    if key.lower() not in _HOP_BY_HOP_HEADERS | {"content-length"}
                ]
                self._answer(response.status, kept, content)
            finally:
                upstream.close()

        def _answer(self, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

    return Handler


@pytest.fixture
def flaky_proxy(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """A :class:`FlakyProxy` (no faults until the test sets ``fail_share``) in front of the
    emulator, with ``STORAGE_EMULATOR_HOST`` pointing at it and a short initial retry delay."""
    proxy = FlakyProxy(gcs_emulator)
    proxy.start()
    monkeypatch.setenv(EMULATOR_ENV, proxy.url)
    monkeypatch.setenv(storage.RETRY_INITIAL_DELAY_ENV, "0.02")
    try:
        yield proxy
    finally:
        proxy.stop()
