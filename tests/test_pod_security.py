"""The "restricted" check itself: a hardened pod passes, and each rule it enforces catches its
breach (so a test that uses it cannot pass by checking nothing)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.pod_security import assert_restricted, read_only_root_violations, restricted_violations


def hardened_pod() -> dict[str, Any]:
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "main",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]["securityContext"]


BREACHES: dict[str, Callable[[dict[str, Any]], None]] = {
    "privilege escalation allowed": lambda pod: _container(pod).pop("allowPrivilegeEscalation"),
    "capabilities kept": lambda pod: _container(pod).pop("capabilities"),
    "a capability added": lambda pod: _container(pod)["capabilities"].update(add=["SYS_ADMIN"]),
    "root allowed": lambda pod: pod["securityContext"].pop("runAsNonRoot"),
    "root uid": lambda pod: _container(pod).update(runAsUser=0),
    "no seccomp profile": lambda pod: pod["securityContext"].pop("seccompProfile"),
    "seccomp unconfined": lambda pod: _container(pod).update(seccompProfile={"type": "Unconfined"}),
    "privileged": lambda pod: _container(pod).update(privileged=True),
    "host network": lambda pod: pod.update(hostNetwork=True),
    "hostPath volume": lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "host port": lambda pod: pod["containers"][0].update(ports=[{"hostPort": 80}]),
    "an init container not hardened": lambda pod: pod.update(initContainers=[{"name": "init"}]),
}


def test_a_hardened_pod_passes() -> None:
    assert_restricted(hardened_pod())


@pytest.mark.parametrize("breach", sorted(BREACHES))
def test_each_breach_of_the_restricted_profile_is_caught(breach: str) -> None:
    pod = copy.deepcopy(hardened_pod())
    BREACHES[breach](pod)
    assert restricted_violations(pod)
    with pytest.raises(AssertionError, match="not restricted"):
        assert_restricted(pod)


def test_a_writable_root_filesystem_is_caught_apart_from_the_profile() -> None:
    pod = hardened_pod()
    _container(pod)["readOnlyRootFilesystem"] = False
    assert restricted_violations(pod) == []
    assert read_only_root_violations(pod) == [
        "containers[main]: readOnlyRootFilesystem is not true"
    ]
    assert_restricted(pod, read_only_root=False)
