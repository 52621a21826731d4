"""Watching a created job until it ends: its status, its pods, the master pod's log.

:class:`JobWatcher` polls the job's status conditions and its pods, streams the log of the master
pod (node rank 0) as it comes, once per line across reconnects and container restarts, and turns
every way a job can end badly into a :class:`~kshot.launch.spec.LaunchError` that says why: the
job's failure condition with the pods' waiting/terminated reasons and the last log lines, pods
never scheduled, pods never started, the overall timeout. A job suspended by its queue (Kueue) is
waited for. Creating and deleting the job is :mod:`kshot.launch.kube`'s.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kshot.launch.jobs import JobKind, job_condition
from kshot.launch.kube_api import REQUEST_TIMEOUT, api_failure, get_job, retrying
from kshot.launch.spec import LaunchError

__all__ = ["JobWatcher"]

_LOG_TAIL_LINES = 30
_DRAIN_TIMEOUT_S = 5.0
# A followed log may stay silent for long; after this the stream reconnects (seen lines skipped).
_LOG_FOLLOW_TIMEOUT = (10.0, 300.0)


def _pod_states(pods: list[Any]) -> list[str]:
    """One line per pod: phase, unschedulable reason, each container's waiting/terminated state."""
    lines = []
    for pod in pods:
        parts = [pod.status.phase or "Unknown"]
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                parts.append(f"not scheduled: {condition.reason}: {condition.message}")
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        )
        for status in statuses:
            state = status.state
            if state and state.waiting:
                parts.append(f"{status.name} waiting: {state.waiting.reason}")
                if state.waiting.message:
                    parts[-1] += f": {state.waiting.message}"
            if state and state.terminated and state.terminated.exit_code:
                terminated = state.terminated
                parts.append(
                    f"{status.name} terminated: {terminated.reason} "
                    f"(exit code {terminated.exit_code})"
                )
                if terminated.message:
                    parts[-1] += f": {terminated.message.strip()}"
            last = status.last_state.terminated if status.last_state else None
            if last and last.exit_code:
                parts.append(
                    f"{status.name} previously terminated: {last.reason} (exit code "
                    f"{last.exit_code}), restarts: {status.restart_count}"
                )
        lines.append(f"{pod.metadata.name}: " + "; ".join(parts))
    return lines


def _has_started(pod: Any) -> bool:
    return pod.status.phase in ("Running", "Succeeded", "Failed")


class JobWatcher:
    """Polls one job and its pods; follows the master pod's log in a thread."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kind: JobKind,
        namespace: str,
        name: str,
        log: Callable[[str], None],
        poll_s: float,
    ) -> None:
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._kind = kind
        self._namespace = namespace
        self._name = name
        self._log = log
        self._poll_s = poll_s
        self._master: Any = None
        self._deadline = math.inf
        self._stop = threading.Event()
        self._lines_logged = 0
        self._muted = False
        self._follower = threading.Thread(target=self._follow_master_log, daemon=True)

    @property
    def _title(self) -> str:
        return f"{self._kind.plural} {self._namespace}/{self._name}"

    def wait(self, timeout_s: float, schedule_timeout_s: float) -> dict[str, Any]:
        """Poll until the job succeeds; raise :class:`LaunchError` on every other end.

        A suspended job (queued by Kueue) is waited for within ``timeout_s`` only: the time its
        pods have to start (``schedule_timeout_s``) runs from its admission.
        """
        start = time.monotonic()
        self._deadline = start + timeout_s
        started = queued = False
        admitted = start
        self._follower.start()
        while True:
            job = self._read_job()
            pods = self._list_pods()
            self._master = next((pod for pod in pods if self._kind.is_master(pod)), self._master)
            if job_condition(job, self._kind.succeeded):
                self._log(f"{self._title} succeeded")
                return job
            failed = job_condition(job, self._kind.failed)
            if failed:
                raise LaunchError(self._failure_report(failed, pods))
            if self._kind.is_suspended(job):
                if not queued:
                    self._log(f"{self._title} is suspended: waiting for its queue to admit it")
                queued, admitted = True, time.monotonic()
            elif queued:
                self._log(f"{self._title} was admitted")
                queued = False
            started = started or any(_has_started(pod) for pod in pods)
            waited = time.monotonic() - start
            if not started and not queued:
                self._check_not_stuck(pods, time.monotonic() - admitted, schedule_timeout_s)
            if waited > timeout_s:
                raise LaunchError(
                    f"{self._title} timed out: not finished after {timeout_s:g} s\n"
                    + self._describe(pods)
                )
            time.sleep(self._poll_s)

    def stop_log(self, *, drain: bool) -> None:
        """Stop following the log; with ``drain``, first wait briefly for its last lines."""
        self._stop.set()
        if drain and self._follower.is_alive():
            self._follower.join(timeout=_DRAIN_TIMEOUT_S)
        # A follower still blocked on a running container's stream ends when the pod goes.
        self._muted = True

    def _read_job(self) -> dict[str, Any]:
        job = get_job(
            self._objects, self._kind, self._namespace, self._name, self._deadline, self._log
        )
        if job is None:
            raise LaunchError(f"{self._title} disappeared: deleted by someone else?")
        return job

    def _list_pods(self) -> list[Any]:
        try:
            return retrying(
                lambda: (
                    self._core.list_namespaced_pod(
                        self._namespace,
                        label_selector=self._kind.pod_selector(self._name),
                        _request_timeout=REQUEST_TIMEOUT,
                    ).items
                ),
                f"list the pods of {self._title}",
                self._deadline,
                self._log,
            )
        except ApiException as error:
            raise LaunchError(api_failure(error, "list pods", self._namespace)) from error

    def _check_not_stuck(self, pods: list[Any], waited: float, schedule_timeout_s: float) -> None:
        if waited <= schedule_timeout_s:
            return
        if not pods:
            raise LaunchError(
                f"{self._title}: no pods after {schedule_timeout_s:g} s; is the operator running, "
                "and may it create pods (quota, service account)?"
            )
        unscheduled = [
            pod
            for pod in pods
            if any(
                c.type == "PodScheduled" and c.status == "False"
                for c in pod.status.conditions or []
            )
        ]
        if unscheduled:
            raise LaunchError(
                f"{self._title} never scheduled: {len(unscheduled)} pod(s) Pending after "
                f"{schedule_timeout_s:g} s (not enough GPUs, or tolerations/nodeSelector?)\n"
                + self._describe(pods)
            )
        raise LaunchError(
            f"{self._title} never started: pods not running after {schedule_timeout_s:g} s\n"
            + self._describe(pods)
        )

    def _failure_report(self, condition: dict[str, Any], pods: list[Any]) -> str:
        return (
            f"{self._title} failed: {condition.get('reason', '')}: "
            f"{condition.get('message', '')}\n" + self._describe(pods)
        )

    def _describe(self, pods: list[Any]) -> str:
        lines = ["pods:", *(f"  {line}" for line in _pod_states(pods))] if pods else ["no pods"]
        if self._master is not None:
            lines.append(f"last log lines of {self._master.metadata.name}:")
            lines += [f"  {line}" for line in self._log_tail(self._master.metadata.name)]
        return "\n".join(lines)

    def _log_tail(self, pod_name: str) -> list[str]:
        """The last log lines; those of the previous container when a restart left none yet."""
        lines: list[str] = []
        for previous in (False, True):
            try:
                text = self._core.read_namespaced_pod_log(
                    pod_name,
                    self._namespace,
                    container=self._kind.container,
                    tail_lines=_LOG_TAIL_LINES,
                    previous=previous,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            except ApiException as error:
                lines = [f"(log unavailable: {error.status} {error.reason})"]
                continue
            except (HTTPError, OSError) as error:
                lines = [f"(log unavailable: {error})"]
                continue
            lines = text.splitlines()
            if lines:
                return lines
        return lines or ["(empty)"]

    def _follow_master_log(self) -> None:
        """Send the master's log lines to ``log`` as they come, once each, across reconnects.

        A new container run starts counting lines anew: a restart in place (restart count) or a
        pod recreated under the same name (``restartPolicy: ExitCode``; a new uid).
        Once stopped, one last read without ``follow`` drains what the stream had not delivered.
        """
        container_run: tuple[str, str | None, int] | None = None
        while True:
            stopping = self._stop.is_set()
            master = self._master
            if master is not None and _has_started(master):
                restarts = sum(s.restart_count for s in master.status.container_statuses or [])
                run = (master.metadata.name, master.metadata.uid, restarts)
                if container_run != run:
                    container_run, self._lines_logged = run, 0
                # The pod going away or the connection dropping ends a round; the next reconnects.
                with contextlib.suppress(ApiException, OSError, ValueError, HTTPError):
                    self._stream_log(master.metadata.name, follow=not stopping)
            if stopping:
                return
            self._stop.wait(self._poll_s)

    def _stream_log(self, pod_name: str, *, follow: bool) -> None:
        """Log the pod's lines beyond the ``_lines_logged`` already logged."""
        response = self._core.read_namespaced_pod_log(
            pod_name,
            self._namespace,
            container=self._kind.container,
            follow=follow,
            _preload_content=False,
            _request_timeout=_LOG_FOLLOW_TIMEOUT if follow else REQUEST_TIMEOUT,
        )
        line_number = 0
        pending = ""
        try:
            for chunk in response.stream(amt=None, decode_content=True):
                *complete, pending = (pending + chunk.decode("utf-8", errors="replace")).split("\n")
                for line in complete:
                    line_number += 1
                    self._log_once(line_number, line)
            if pending and not follow:
                self._log_once(line_number + 1, pending)
        finally:
            response.release_conn()

    def _log_once(self, line_number: int, line: str) -> None:
        if line_number > self._lines_logged and not self._muted:
            self._log(line)
            self._lines_logged = line_number
