"""A fake Kubernetes API server for the launcher's tests: the few paths ``kshot.launch`` uses.

It serves HTTP on 127.0.0.1 (a free port) in a thread, so the real ``kubernetes`` client talks to
it through its real REST layer. It validates every created PyTorchJob / TrainJob against the
released CRD's ``openAPIV3Schema`` from ``shared/kubeflow`` (the Trainer release is a setting) and
refuses a job with a field the schema does not declare — where a real API server would silently
prune it (:func:`pruned_fields`) — and plays a scripted life for each job: one scenario step per
GET of the job, pods and their log labelled as the released operators label them.

Paths: create / get / delete the custom object, list pods by ``labelSelector``, read a pod's log
(``tailLines``, ``follow``, ``previous``), read a ConfigMap, read the TrainJob CRD. A forbidden
namespace answers 403; scripted ``errors`` answer chosen requests with an error status or hang up
on them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml
from kubernetes import client

from tests.conftest import SHARED_DATA

__all__ = [
    "FakeKube",
    "Request",
    "SHARED_KUBEFLOW",
    "STEPS",
    "TRAINER_CRDS",
    "TRAINER_RUNTIMES",
    "crd",
    "crd_schema",
    "pruned_fields",
    "validate_against_crd",
]

SHARED_KUBEFLOW = SHARED_DATA.parent / "kubeflow"
"""The Training Operator and Trainer CRDs: ``kubeflow/`` beside the test data folder
(``$KSHOT_TEST_DATA/../kubeflow``, by default ``../shared/kubeflow``)."""
PYTORCHJOB_CRD = "pytorchjobs.kubeflow.org.crd.yaml"
# The released Trainer CRDs and torch-distributed runtimes, by the release they are rendered for.
TRAINER_CRDS = {
    "v2.1": "trainjobs.trainer.kubeflow.org.v2.1.0.crd.yaml",
    "v2.3": "trainjobs.trainer.kubeflow.org.v2.3.0.crd.yaml",
}
TRAINER_RUNTIMES = {
    "v2.1": "torch-distributed.clustertrainingruntime.v2.1.0.yaml",
    "v2.3": "torch-distributed.clustertrainingruntime.v2.3.0.yaml",
}
_GROUPS = {"kubeflow.org": "pytorchjobs", "trainer.kubeflow.org": "trainjobs"}
# What a scenario step may be; the job and its pods at that step. "restarted": running again in a
# master pod that the operator recreated under the same name (restartPolicy ExitCode); "queued":
# suspended, without pods, as Kueue holds a job until its queue admits it.
STEPS = (
    "created",
    "queued",
    "running",
    "restarted",
    "succeeded",
    "failed",
    "unschedulable",
    "sigterm",
)
# The requests that ``errors`` can fail; 0 as a status hangs up without an answer.
FAULTY_REQUESTS = ("create", "get", "delete", "pods")
HANG_UP = 0
FAILURE_REASON = "PyTorchJobFailed"
FAILURE_MESSAGE = "PyTorchJob kshot is failed because 1 Master replica(s) failed."
UNSCHEDULABLE_MESSAGE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."

_CUSTOM_OBJECT = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+))?$"
)
_PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
_POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")
_CONFIG_MAP = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps/(?P<name>[^/]+)$")
_CRD = re.compile(r"^/apis/apiextensions.k8s.io/v1/customresourcedefinitions/(?P<name>[^/]+)$")
_TRAINER_OPENAPI = "/openapi/v3/apis/trainer.kubeflow.org/v1alpha1"
_TRAINJOB_SCHEMA = "org.kubeflow.trainer.v1alpha1.TrainJob"
# Fields of an object's root (and of an embedded resource) that pruning never touches.
_OBJECT_ROOT = frozenset({"apiVersion", "kind", "metadata"})


def _crd_file(kind: str, trainer_version: str) -> str:
    return PYTORCHJOB_CRD if kind == "PyTorchJob" else TRAINER_CRDS[trainer_version]


@functools.cache
def crd(file_name: str) -> dict[str, Any]:
    """A CustomResourceDefinition (or runtime) from ``shared/kubeflow``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((SHARED_KUBEFLOW / file_name).read_text(), Loader=loader)


def crd_schema(file_name: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD's served version."""
    version = next(v for v in crd(file_name)["spec"]["versions"] if v.get("served", True))
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def _validator(file_name: str) -> jsonschema.protocols.Validator:
    schema = crd_schema(file_name)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def pruned_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The paths of ``obj`` that the API server would drop when storing it under ``schema``.

    As structural-schema pruning does it: in an object, a field not among ``properties`` is
    dropped unless ``additionalProperties`` describes it or the schema (at that level) has
    ``x-kubernetes-preserve-unknown-fields``; an object schema with neither properties nor
    additionalProperties keeps nothing. ``apiVersion``, ``kind`` and ``metadata`` of the object's
    root and of embedded resources are kept.

    Args:
        obj: the object (or a part of it).
        schema: its (sub-)schema.
        path: where ``obj`` is, for the result.

    Returns:
        The pruned fields' paths, e.g. ``".spec.labels"``; empty when nothing is lost.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, list):
        items = schema.get("items") or {}
        return [p for i, item in enumerate(obj) for p in pruned_fields(item, items, f"{path}[{i}]")]
    if not isinstance(obj, dict):
        return []
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    root = not path or schema.get("x-kubernetes-embedded-resource")
    pruned = []
    for key, value in obj.items():
        where = f"{path}.{key}"
        if root and key in _OBJECT_ROOT:
            continue
        if key in properties:
            pruned += pruned_fields(value, properties[key], where)
        elif isinstance(additional, dict):
            pruned += pruned_fields(value, additional, where)
        elif additional is not True:
            pruned.append(where)
    return pruned


def validate_against_crd(obj: dict[str, Any], trainer_version: str = "v2.3") -> None:
    """Raise unless ``obj`` fits its kind's released CRD and loses no field to pruning.

    Args:
        obj: a PyTorchJob or TrainJob.
        trainer_version: the Trainer release (:data:`TRAINER_CRDS`) whose CRD a TrainJob meets.

    Raises:
        jsonschema.ValidationError: when the schema refuses it.
        ValueError: naming the fields the API server would prune.
    """
    file_name = _crd_file(obj["kind"], trainer_version)
    _validator(file_name).validate(obj)
    pruned = pruned_fields(obj, crd_schema(file_name))
    if pruned:
        raise ValueError(f"{file_name} would prune {', '.join(pruned)}")


@dataclass(frozen=True)
class Request:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]


@dataclass
class _Job:
    body: dict[str, Any]
    steps: list[str]
    gets: int = 0
    deleted: bool = False

    @property
    def step(self) -> str:
        return self.steps[min(self.gets, len(self.steps)) - 1] if self.gets else "created"

    @property
    def master_recreated(self) -> bool:
        """Whether the scenario has passed a "restarted" step: the master pod has a new uid."""
        return "restarted" in self.steps[: self.gets]


@dataclass
class FakeKube:
    """The fake API server; start with :meth:`start`, stop with :meth:`stop`.

    Attributes:
        scenario: the steps every created job walks through, one per GET (the last one stays).
        master_log: what the master pod prints.
        forbidden_namespaces: namespaces where every request is 403 Forbidden.
        config_maps: ``(namespace, name) → data`` of the ConfigMaps that exist.
        requests: every request received, in order.
        jobs: ``(namespace, plural, name) → job`` for every job created (deleted ones included).
        rejected: the schema errors of refused creates.
        errors: request kind (:data:`FAULTY_REQUESTS`) → statuses that its next requests get
            instead of an answer, in order; :data:`HANG_UP` closes the connection.
        trainer_version: the Trainer release installed (:data:`TRAINER_CRDS`): its TrainJob CRD
            validates created TrainJobs and is served to readers; None: no Trainer installed.
        crd_forbidden: reading CustomResourceDefinitions answers 403 Forbidden.
    """

    scenario: list[str] = field(default_factory=lambda: ["created", "running", "succeeded"])
    master_log: str = "epoch 1/1 loss 0.5\ndone\n"
    forbidden_namespaces: set[str] = field(default_factory=set)
    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    jobs: dict[tuple[str, str, str], _Job] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    errors: dict[str, list[int]] = field(default_factory=dict)
    trainer_version: str | None = "v2.3"
    crd_forbidden: bool = False

    def start(self) -> FakeKube:
        """Serve on a free port of 127.0.0.1 in a daemon thread."""
        unknown = sorted(set(self.scenario) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown scenario steps {unknown}; steps are {STEPS}")
        unknown = sorted(set(self.errors) - set(FAULTY_REQUESTS))
        if unknown:
            raise ValueError(f"unknown faulty requests {unknown}; they are {FAULTY_REQUESTS}")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and close its socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def host(self) -> str:
        """The base URL, for ``Configuration.host``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> client.ApiClient:
        """A real ``kubernetes`` ApiClient pointed at this server."""
        configuration = client.Configuration()
        configuration.host = self.host
        return client.ApiClient(configuration)

    def deleted(self, name: str) -> bool:
        """Whether the job ``name`` was created and then deleted."""
        return any(job.deleted for key, job in self.jobs.items() if key[2] == name)

    def created_bodies(self) -> list[dict[str, Any]]:
        """The bodies of all jobs created, as posted."""
        return [job.body for job in self.jobs.values()]

    def add_job(self, body: dict[str, Any], steps: list[str]) -> None:
        """A job that exists before the test's launch (an earlier attempt left it), at ``steps``.

        Its first GET shows ``steps[0]``, as for a created one.
        """
        validate_against_crd(body, self.trainer_version or "v2.3")
        plural = {"PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs"}[body["kind"]]
        key = (body["metadata"]["namespace"], plural, body["metadata"]["name"])
        with self._lock:
            self.jobs[key] = _Job(copy.deepcopy(body), list(steps))

    # Handling (called from the server threads).

    def handle(self, method: str, url: str, body: bytes) -> tuple[int, Any]:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        path = parsed.path
        with self._lock:
            self.requests.append(Request(method, path, query))
            namespace = re.match(r"^/apis?/.*?/namespaces/([^/]+)", path)
            if namespace and namespace.group(1) in self.forbidden_namespaces:
                return 403, _status(403, "Forbidden", f"forbidden: namespace {namespace.group(1)}")
            faults = self.errors.get(_request_kind(method, path), [])
            if faults:
                code = faults.pop(0)
                return code, _status(code, "Injected", f"injected {code} for {method} {path}")
            if method == "GET" and (match := _CRD.match(path)):
                return self._crd(match["name"])
            if method == "GET" and path == _TRAINER_OPENAPI:
                return self._openapi()
            if match := _CUSTOM_OBJECT.match(path):
                return self._custom_object(method, match.groupdict(), body)
            if method == "GET" and (match := _PODS.match(path)):
                return 200, self._pod_list(match["ns"], query.get("labelSelector", [""])[0])
            if method == "GET" and (match := _POD_LOG.match(path)):
                return self._log(match["ns"], match["pod"], query)
            if method == "GET" and (match := _CONFIG_MAP.match(path)):
                data = self.config_maps.get((match["ns"], match["name"]))
                if data is None:
                    return 404, _status(404, "NotFound", f"configmaps {match['name']} not found")
                config_map = {"apiVersion": "v1", "kind": "ConfigMap", "data": data}
                config_map["metadata"] = {"name": match["name"], "namespace": match["ns"]}
                return 200, config_map
            return 404, _status(404, "NotFound", f"no fake for {method} {path}")

    def _crd(self, name: str) -> tuple[int, Any]:
        if self.crd_forbidden:
            return 403, _status(403, "Forbidden", f"customresourcedefinitions {name} forbidden")
        if name != "trainjobs.trainer.kubeflow.org" or self.trainer_version is None:
            return 404, _status(404, "NotFound", f"customresourcedefinitions {name} not found")
        return 200, crd(TRAINER_CRDS[self.trainer_version])

    def _openapi(self) -> tuple[int, Any]:
        """The group version's OpenAPI v3 document, as the API server publishes a CRD's schema."""
        if self.trainer_version is None:
            return 404, _status(404, "NotFound", f"{_TRAINER_OPENAPI} not found")
        schema = crd_schema(TRAINER_CRDS[self.trainer_version])
        gvk = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "kind": "TrainJob"}
        named = {**schema, "x-kubernetes-group-version-kind": [gvk]}
        return 200, {"openapi": "3.0.0", "components": {"schemas": {_TRAINJOB_SCHEMA: named}}}

    def _custom_object(self, method: str, route: dict[str, str], body: bytes) -> tuple[int, Any]:
        key = (route["ns"], route["plural"], route["name"] or "")
        installed = _GROUPS.get(route["group"]) == route["plural"] and (
            route["plural"] != "trainjobs" or self.trainer_version is not None
        )
        if not installed:
            return 404, _status(404, "NotFound", f"the server could not find {route['plural']}")
        if method == "POST" and not route["name"]:
            obj = json.loads(body)
            try:
                validate_against_crd(obj, self.trainer_version or "v2.3")
            except (jsonschema.ValidationError, ValueError) as error:
                message = getattr(error, "message", str(error))
                self.rejected.append(message)
                return 422, _status(422, "Invalid", message)
            key = (route["ns"], route["plural"], obj["metadata"]["name"])
            if key in self.jobs and not self.jobs[key].deleted:
                return 409, _status(409, "AlreadyExists", f"{key[2]} already exists")
            self.jobs[key] = _Job(copy.deepcopy(obj), list(self.scenario))
            return 201, obj
        job = self.jobs.get(key)
        if job is None or job.deleted:
            return 404, _status(404, "NotFound", f"{route['plural']} {key[2]} not found")
        if method == "DELETE":
            job.deleted = True
            return 200, _status(200, "", "deleted")
        if method == "GET":
            job.gets += 1
            if job.step == "gone":  # its deletion, started before the test, has finished
                job.deleted = True
                return 404, _status(404, "NotFound", f"{route['plural']} {key[2]} not found")
            if job.step == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            return 200, {**_as_now(job), "status": {"conditions": _conditions(job)}}
        return 405, _status(405, "MethodNotAllowed", method)

    def _live_jobs(self, namespace: str) -> list[_Job]:
        return [j for k, j in self.jobs.items() if k[0] == namespace and not j.deleted]

    def _pod_list(self, namespace: str, selector: str) -> dict[str, Any]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        pods = [
            pod
            for job in self._live_jobs(namespace)
            for pod in _pods(job, self.master_log)
            if all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}

    def _log(self, namespace: str, pod_name: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        for job in self._live_jobs(namespace):
            for pod in _pods(job, self.master_log):
                if pod["metadata"]["name"] == pod_name:
                    if pod["status"]["phase"] == "Pending":
                        message = f"container in pod {pod_name} is waiting to start"
                        return 400, _status(400, "BadRequest", message)
                    lines = pod["metadata"]["annotations"]["fake/log"].splitlines(keepends=True)
                    tail = int(query.get("tailLines", ["0"])[0])
                    return 200, "".join(lines[-tail:] if tail else lines)
        return 404, _status(404, "NotFound", f"pods {pod_name} not found")


def _request_kind(method: str, path: str) -> str:
    """Which of :data:`FAULTY_REQUESTS` a request is ("" for none)."""
    if match := _CUSTOM_OBJECT.match(path):
        if method == "POST" and not match["name"]:
            return "create"
        return {"GET": "get", "DELETE": "delete"}.get(method, "") if match["name"] else ""
    return "pods" if method == "GET" and _PODS.match(path) else ""


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Success" if code < 400 else "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def _as_now(job: _Job) -> dict[str, Any]:
    """The job's object at its step: a queued one is suspended, as Kueue's webhook leaves it."""
    body = copy.deepcopy(job.body)
    if job.step == "queued":
        spec = body["spec"]
        (spec.setdefault("runPolicy", {}) if body["kind"] == "PyTorchJob" else spec)["suspend"] = (
            True
        )
    return body


def _conditions(job: _Job) -> list[dict[str, str]]:
    kind = job.body["kind"]
    done = {"PyTorchJob": "Succeeded", "TrainJob": "Complete"}[kind]
    conditions = [{"type": "Created", "status": "True", "reason": "Created", "message": ""}]
    if job.step == "queued":
        conditions.append({"type": "Suspended", "status": "True", "reason": "Suspended"})
    if job.step in ("running", "restarted", "sigterm", "succeeded", "failed"):
        conditions.append({"type": "Running", "status": "True", "reason": "Running"})
    if job.step == "succeeded":
        conditions.append({"type": done, "status": "True", "reason": done, "message": "done"})
    if job.step == "failed":
        conditions.append(
            {
                "type": "Failed",
                "status": "True",
                "reason": FAILURE_REASON,
                "message": FAILURE_MESSAGE,
            }
        )
    return conditions


def _pods(job: _Job, master_log: str) -> list[dict[str, Any]]:
    """The job's pods at its current step, labelled as the real operators label them."""
    body = job.body
    name = body["metadata"]["name"]
    if job.step == "queued":
        return []
    if body["kind"] == "PyTorchJob":
        replicas = body["spec"]["pytorchReplicaSpecs"]
        members = [("master", 0, "pytorch")] + [
            ("worker", i, "pytorch") for i in range(replicas.get("Worker", {}).get("replicas", 0))
        ]
    else:
        # JobSet: one indexed Job of the replicated job "node", a pod per node (its rank).
        members = [("node", i, "node") for i in range(body["spec"]["trainer"]["numNodes"])]
    pods = []
    for rank, (role, index, container) in enumerate(members):
        if body["kind"] == "PyTorchJob":
            pod_name = f"{name}-{role}-{index}"
            labels = {
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/replica-type": role,
                "training.kubeflow.org/replica-index": str(index),
            }
            annotations: dict[str, str] = {}
        else:
            pod_name = f"{name}-{role}-0-{index}-x{index:04d}"
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": role,
                "jobset.sigs.k8s.io/job-index": "0",
                "batch.kubernetes.io/job-completion-index": str(index),
            }
            annotations = {"batch.kubernetes.io/job-completion-index": str(index)}
        # Pods keep their uid, but for a master that the operator recreated.
        recreated = rank == 0 and job.master_recreated
        uid = f"{pod_name}-{'recreated' if recreated else 'first'}"
        log = master_log if rank == 0 else ""
        if job.step == "failed" and rank == 0:
            log += "Traceback (most recent call last):\nRuntimeError: CUDA error: out of memory\n"
        annotations["fake/log"] = log
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": body["metadata"]["namespace"],
                    "uid": uid,
                    "labels": labels,
                    "annotations": annotations,
                },
                "status": _pod_status(job.step, container, failing=rank == 0),
            }
        )
    return pods


def _pod_status(step: str, container: str, *, failing: bool) -> dict[str, Any]:
    scheduled = {"type": "PodScheduled", "status": "True"}
    waiting = {"waiting": {"reason": "ContainerCreating"}}
    phase, state, ready = "Pending", waiting, False
    if step == "unschedulable":
        scheduled = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": UNSCHEDULABLE_MESSAGE,
        }
        return {"phase": "Pending", "conditions": [scheduled]}
    if step in ("running", "restarted", "sigterm"):
        phase, state, ready = "Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}}, True
    if step == "succeeded" or (step == "failed" and not failing):
        phase, state = "Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}}
    if step == "failed" and failing:
        phase = "Failed"
        state = {"terminated": {"exitCode": 1, "reason": "Error", "message": "worker exited"}}
    container_status = {
        "name": container,
        "image": "ghcr.io/kshot-nas/kshot:latest",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }
    if step == "failed" and failing:
        # A restart in place (restartPolicy OnFailure): the run before the last one died too.
        container_status["restartCount"] = 1
        container_status["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    return {"phase": phase, "conditions": [scheduled], "containerStatuses": [container_status]}


def _handler_for(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, payload = fake.handle(self.command, self.path, self.rfile.read(length))
            if code == HANG_UP:
                self.close_connection = True
                return
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = text.encode()
            content_type = "text/plain" if isinstance(payload, str) else "application/json"
            # A client cancelled mid-request (SIGTERM, Ctrl-C) has gone: nothing to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _respond  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Keep test output clean."""

    return Handler
