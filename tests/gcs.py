"""Pytest plugin: a real GCS-compatible server for storage tests, and a proxy that injects faults
into it or any other HTTP storage server (``tests/s3.py`` puts it in front of S3).

Fixtures:

* ``gcs_emulator`` (session): runs ``gcp-storage-emulator`` (PyPI) in memory on 127.0.0.1 at a
  free port in a child process, points ``STORAGE_EMULATOR_HOST`` at it, yields the endpoint URL and
  stops the process at the end of the session.
* ``gcs_bucket``: a fresh, uniquely named bucket on the emulator, as ``"gs://<name>"``.
* ``flaky_proxy``: a :class:`FlakyProxy` between the client and the emulator for one test;
  ``STORAGE_EMULATOR_HOST`` points at the proxy while the test runs and retries start fast. It
  also enforces the ``ifGenerationMatch`` precondition of uploads, which the emulator ignores.

Register with ``pytest_plugins = ["tests.gcs"]`` in ``conftest.py`` (or ``pytest -p tests.gcs``).
"""

from __future__ import annotations

import email
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from kshot import storage

__all__ = [
    "FlakyProxy",
    "flaky_proxy",
    "gcs_bucket",
    "gcs_emulator",
    "start_emulator",
    "start_server",
    "stop_server",
]

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_LOOPBACK = "127.0.0.1"
_STARTUP_TIMEOUT_S = 30.0
_STARTUP_ATTEMPTS = 3
_HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}
_LOSE = "lose"
_Event = Callable[[], None] | int | str
"""A staged event: an action to run before forwarding, bytes of the answer to keep, or _LOSE."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        return probe.getsockname()[1]


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, name: str) -> bool:
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
    raise TimeoutError(f"{name} did not listen on {_LOOPBACK}:{port} in time")


def start_server(
    name: str, command: Callable[[int], list[str]]
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server in a child process on a free loopback port.

    Args:
        name: the server, for errors.
        command: the command line that starts it on a given port.

    Returns:
        The child process and its endpoint URL (``http://127.0.0.1:<port>``).

    Raises:
        RuntimeError: the server exited at every attempt (its output is in the message).
    """
    failures = []
    for _ in range(_STARTUP_ATTEMPTS):
        port = _free_port()
        # The server logs every request. Its output goes to a file, never to a pipe: a pipe that
        # nobody reads fills after some hundred requests and then blocks the server mid-answer.
        # The child keeps its own handle, so the file lives as long as the server.
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT)
            try:
                listening = _wait_until_listening(process, port, name)
            except TimeoutError:
                stop_server(process)
                raise
            if listening:
                return process, f"http://{_LOOPBACK}:{port}"
            process.wait()
            log.seek(0)
            failures.append(log.read().decode(errors="replace")[-2000:])
    raise RuntimeError(f"{name} failed to start:\n" + "\n---\n".join(failures))


# The emulator serves one connection at a time behind http.server's backlog of 5: concurrent
# requests overflow it and wait ~1 s for the client's connection retry. A deeper backlog queues them.
_EMULATOR_MAIN = (
    "import http.server, runpy, sys; http.server.HTTPServer.request_queue_size = 128; "
    "sys.argv[0] = 'gcp_storage_emulator'; runpy.run_module('gcp_storage_emulator', "
    "run_name='__main__', alter_sys=True)"
)


def start_emulator() -> tuple[subprocess.Popen[bytes], str]:
    """Start an in-memory ``gcp-storage-emulator`` on a free loopback port (see
    :func:`start_server`)."""
    return start_server(
        "gcp-storage-emulator",
        lambda port: (
            [sys.executable, "-c", _EMULATOR_MAIN, "start", "--host", _LOOPBACK]
            + ["--port", str(port), "--in-memory", "--quiet"]
        ),
    )


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """The endpoint of a session-wide GCS emulator; ``STORAGE_EMULATOR_HOST`` points at it."""
    process, endpoint = start_emulator()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(EMULATOR_ENV, endpoint)
            yield endpoint
    finally:
        stop_server(process)


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
    :meth:`lose_next_answer`, :meth:`cut_next_answer` and :meth:`before_next` stage an event at a
    chosen request.

    An upload or a delete that carries ``ifGenerationMatch`` is answered HTTP 412, as GCS does,
    when the object's generation upstream (0: no object) differs; the emulator itself ignores
    preconditions.
    (S3 servers enforce their own ``If-Match`` / ``If-None-Match``.)

    Args:
        upstream: URL of the server to forward to, e.g. ``http://127.0.0.1:9023``.
        fail_share: fraction of requests to fail, from 0 to 1; tests may change it at any time.

    Attributes:
        forwarded: requests not failed by ``fail_share``.
        failed: requests failed by ``fail_share``, without reaching upstream.
        lost: requests forwarded whose answer was dropped (:meth:`lose_next_answer`).
        refused_preconditions: requests answered 412, by the proxy or by the server.
        ranges: the ``Range`` header of every request forwarded with one, in order.
    """

    def __init__(self, upstream: str, fail_share: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or _LOOPBACK
        self.upstream_port = parts.port or 80
        self.fail_share = fail_share
        self.forwarded = 0
        self.failed = 0
        self.lost = 0
        self.refused_preconditions = 0
        self.ranges: list[str] = []
        self._failure_credit = 0.0
        self._staged: list[tuple[str, str, _Event]] = []
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._server = _ProxyServer((_LOOPBACK, 0), _proxy_handler(self))
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

    def lose_next_answer(self, method: str, path_part: str) -> None:
        """Forward the next ``method`` request whose path (query included) contains
        ``path_part``, then close its connection without an answer: the request takes effect but
        the client cannot know."""
        with self._lock:
            self._staged.append((method, path_part, _LOSE))

    def cut_next_answer(self, method: str, path_part: str, keep_bytes: int) -> None:
        """Forward the next ``method`` request whose path (query included) contains
        ``path_part``, then send its answer's headers and only the first ``keep_bytes`` of its
        body before closing the connection: a download cut off part-way."""
        with self._lock:
            self._staged.append((method, path_part, keep_bytes))

    def before_next(self, method: str, path_part: str, action: Callable[[], None]) -> None:
        """Run ``action`` just before the next ``method`` request whose path (query included)
        contains ``path_part`` is forwarded (e.g. another writer's upload, straight to the emulator)."""
        with self._lock:
            self._staged.append((method, path_part, action))

    def take_staged(self, method: str, path: str) -> _Event | None:
        """The first event staged for a request like this one, now spent (events staged for the
        same requests fire one per request, in order): ``"lose"`` its answer, an action to run
        before forwarding it, or how many bytes of its answer's body to send; None if none."""
        with self._lock:
            for index, (staged_method, path_part, event) in enumerate(self._staged):
                if staged_method == method and path_part in path:
                    del self._staged[index]
                    self.lost += event == _LOSE
                    return event
        return None

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


class _ProxyServer(ThreadingHTTPServer):
    # A client with many requests in flight (a loader's ranged reads) connects many times at once;
    # socketserver's backlog of 5 overflows and a dropped connection waits ~1 s to retry.
    request_queue_size = 128


def _proxy_handler(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" (S3 clients send it)

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
                self._drop()
                return
            if fault == "503":
                self._error(503, "injected fault")
                return
            event = proxy.take_staged(self.command, self.path)
            if callable(event):
                event()
            if "Range" in self.headers:
                with proxy._lock:
                    proxy.ranges.append(self.headers["Range"])
            expected = _expected_generation(self.command, self.path)
            if expected is None:
                status, headers, content = self._forward(body)
            else:
                with proxy._upload_lock:  # no other conditional write between check and write
                    if self._generation(body) != expected:
                        proxy.refused_preconditions += 1
                        self._error(
                            412, "At least one of the pre-conditions you specified did not hold."
                        )
                        return
                    status, headers, content = self._forward(body)
            if status == 412:
                with proxy._lock:
                    proxy.refused_preconditions += 1
            if event == _LOSE:
                self._drop()
                return
            self._answer(status, headers, content, event if isinstance(event, int) else None)

        def _upstream(
            self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> tuple[int, list[tuple[str, str]], bytes]:
            """(status, headers, content) of one request to the upstream server."""
            upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=60
            )
            try:
                upstream.request(method, path, body=body or None, headers=headers or {})
                response = upstream.getresponse()
                return response.status, response.getheaders(), response.read()
            finally:
                upstream.close()

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            headers = {
                key: value
                for key, value in self.headers.items()
                if key.lower() not in _HOP_BY_HOP_HEADERS | {"content-length", "expect"}
            }
            status, answer_headers, content = self._upstream(self.command, self.path, body, headers)
            dropped = _HOP_BY_HOP_HEADERS | (
                {"content-length"} if self.command != "HEAD" else set()
            )
            kept = [(key, value) for key, value in answer_headers if key.lower() not in dropped]
            return status, kept, content

        def _generation(self, upload_body: bytes) -> str:
            """The upstream generation of the object this upload writes or delete removes ("0":
            none)."""
            if self.command == "DELETE":  # /storage/v1/b/BUCKET/o/NAME
                metadata = urlsplit(self.path).path
            else:
                bucket = urlsplit(self.path).path.split("/")[5]  # /upload/storage/v1/b/BUCKET/o
                name = _object_name(self.headers.get("Content-Type", ""), upload_body)
                metadata = f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
            status, _, content = self._upstream("GET", metadata)
            return str(json.loads(content)["generation"]) if status == 200 else "0"

        def _drop(self) -> None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _error(self, status: int, message: str) -> None:
            payload = json.dumps({"error": {"code": status, "message": message}})
            self._answer(status, [("Content-Type", "application/json")], payload.encode())

        def _answer(
            self,
            status: int,
            headers: list[tuple[str, str]],
            content: bytes,
            keep_bytes: int | None = None,
        ) -> None:
            """Send the answer; with ``keep_bytes``, only that much of the body, then close."""
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD":  # a HEAD answer keeps the upstream length of the object
                self.send_header("Content-Length", str(len(content)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content[:keep_bytes])
            if keep_bytes is not None:
                self._drop()
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

    return Handler


def _expected_generation(method: str, url: str) -> str | None:
    """The ``ifGenerationMatch`` of an upload request (starting one, or all of one) or of a
    delete, else None."""
    parts = urlsplit(url)
    upload = method == "POST" and parts.path.startswith("/upload/")
    if not (upload or (method == "DELETE" and "/o/" in parts.path)):
        return None
    return parse_qs(parts.query).get("ifGenerationMatch", [None])[0]


def _object_name(content_type: str, body: bytes) -> str:
    """The object name of an upload request: in its JSON metadata, alone (resumable) or the first
    part of a multipart/related body (multipart)."""
    if not content_type.startswith("multipart/"):
        return json.loads(body)["name"]
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return json.loads(message.get_payload(0).get_payload(decode=True))["name"]


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
