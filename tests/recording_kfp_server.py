"""A recording stand-in for the Kubeflow Pipelines v2beta1 REST API, on 127.0.0.1.

It serves the few endpoints ``kfp.Client`` calls to upload a pipeline or a version, create an
experiment and create a run, keeps what was created, records every request, and refuses requests
without the expected bearer token (HTTP 401), as an authenticated Kubeflow does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Request", "RecordingKfpServer", "serve"]

_API = "/apis/v2beta1"
_CREATED_AT = "2026-01-01T00:00:00Z"


@dataclass
class Request:
    """One recorded request.

    Attributes:
        method: HTTP method.
        path: the URL path.
        query: query parameters (each a list of values).
        headers: request headers, names in lower case.
        body: the raw body.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class RecordingKfpServer:
    """The server's state: what it holds and every request it saw.

    Attributes:
        token: the bearer token every request must carry ('' to accept any request).
        requests: every request, in order.
        pipelines: pipeline id → pipeline.
        versions: pipeline id → its versions, oldest first.
        experiments: experiment id → experiment.
        runs: run id → the run's body as posted.
        url: the server's base URL, once started.
    """

    token: str = ""
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, path: str) -> list[Request]:
        """The recorded requests with this method and path (after /apis/v2beta1)."""
        return [r for r in self.requests if r.method == method and r.path == _API + path]

    def handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        """Record ``request`` and answer it: (HTTP status, JSON body)."""
        with self._lock:
            self.requests.append(request)
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": "missing or wrong bearer token", "code": 16}
            return self._route(request)

    def _route(self, request: Request) -> tuple[int, dict[str, Any]]:
        route = (request.method, request.path.removeprefix(_API))
        query = {key: values[0] for key, values in request.query.items()}
        if route == ("GET", "/healthz"):
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if route == ("GET", "/pipelines"):
            # A namespace lists its own pipelines; no namespace lists the shared ones.
            wanted = _filter_name(query), query.get("namespace", "")
            found = [
                p for p in self.pipelines.values() if (p["display_name"], p["namespace"]) == wanted
            ]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if route == ("POST", "/pipelines/upload"):
            return self._upload_pipeline(query, request.body)
        if route == ("POST", "/pipelines/upload_version"):
            return self._upload_version(query["pipelineid"], query["name"], request.body)
        if request.method == "GET" and route[1].startswith("/pipelines/"):
            pipeline_id = route[1].split("/")[2]
            versions = sorted(self.versions.get(pipeline_id, []), key=lambda v: v["created_at"])
            if "filter" in query:
                versions = [v for v in versions if v["display_name"] == _filter_name(query)]
            return 200, {"pipeline_versions": versions[::-1][: int(query.get("page_size", 10))]}
        if route == ("GET", "/experiments"):
            wanted = _filter_name(query)
            found = [e for e in self.experiments.values() if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if route == ("POST", "/experiments"):
            body = request.json()
            experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": _CREATED_AT}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if route == ("POST", "/runs"):
            return self._create_run(request.json())
        return 404, {"error": f"no route {request.method} {request.path}", "code": 5}

    def _upload_pipeline(self, query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if b"pipelineSpec" not in body and b"pipelineInfo" not in body:
            return 400, {"error": "the upload holds no pipeline spec", "code": 3}
        pipeline = {
            "pipeline_id": str(uuid.uuid4()),
            "display_name": query.get("display_name") or query["name"],
            "description": query.get("description", ""),
            "namespace": query.get("namespace", ""),
            "created_at": _CREATED_AT,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._upload_version(pipeline["pipeline_id"], pipeline["display_name"], body)
        return 200, pipeline

    def _upload_version(
        self, pipeline_id: str, name: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if pipeline_id not in self.pipelines:
            return 404, {"error": f"pipeline {pipeline_id} not found", "code": 5}
        versions = self.versions.setdefault(pipeline_id, [])
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": f"2026-01-01T00:00:{len(versions):02d}Z",
        }
        versions.append(version)
        return 200, version

    def _create_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("experiment_id") not in self.experiments:
            return 400, {"error": "unknown experiment", "code": 3}
        reference = body.get("pipeline_version_reference")
        if not body.get("pipeline_spec") and not reference:
            return 400, {"error": "a run needs a pipeline spec or a version", "code": 3}
        if reference and reference["pipeline_id"] not in self.pipelines:
            return 404, {"error": "unknown pipeline", "code": 5}
        run_id = str(uuid.uuid4())
        self.runs[run_id] = body
        return 200, {**body, "run_id": run_id, "state": "PENDING", "created_at": _CREATED_AT}


def _filter_name(query: dict[str, str]) -> str:
    """The display name a list request filters on."""
    predicates = json.loads(query.get("filter", "{}")).get("predicates", [])
    return next(p["stringValue"] for p in predicates if p["key"] == "display_name")


def _handler(state: RecordingKfpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            status, payload = state.handle(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            """Quiet: the requests are recorded, not logged."""

    return Handler


@contextlib.contextmanager
def serve(token: str = "") -> Iterator[RecordingKfpServer]:
    """Serve a recording KFP API on a free port of 127.0.0.1 until the block ends.

    Args:
        token: the bearer token every request must carry ('' to accept any).
    """
    state = RecordingKfpServer(token=token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
