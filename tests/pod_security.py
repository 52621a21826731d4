"""The Pod Security Standards "restricted" profile as a check over a rendered pod spec.

Each rule is the admission controller's (Kubernetes v1.30, ``restricted`` includes ``baseline``):
https://kubernetes.io/docs/concepts/security/pod-security-standards/. A pod spec that passes here
is admitted into a namespace labelled ``pod-security.kubernetes.io/enforce: restricted``.

:func:`read_only_root_violations` adds what the profile does not require but the project does:
every container's root filesystem read-only.

Pod specs are plain dicts in the API's camelCase (as rendered into a PyTorchJob, a TrainJob's
runtime after its patches, or a compiled pipeline's platform spec).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "restricted_violations",
    "read_only_root_violations",
    "assert_restricted",
    "RESTRICTED_VOLUME_TYPES",
]

# The only volume sources "restricted" allows.
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Sysctls "baseline" allows (namespaced and safe).
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_SECCOMP_ALLOWED = ("RuntimeDefault", "Localhost")
_SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(field) or []:
            yield f"{field}[{container.get('name', '?')}]", container


def restricted_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """What in ``pod_spec`` the "restricted" profile refuses, one line per rule broken.

    Args:
        pod_spec: a ``PodSpec`` as a dict.

    Returns:
        Empty when the pod would be admitted.
    """
    problems: list[str] = []
    pod_context = pod_spec.get("securityContext") or {}
    containers = list(_containers(pod_spec))
    if not containers:
        problems.append("no containers")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(host):
            problems.append(f"{host}: true")
    for volume in pod_spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')!r}: type {sorted(sources)} not allowed")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')!r} not allowed")
    problems += _context_problems("pod securityContext", pod_context)

    pod_non_root = pod_context.get("runAsNonRoot")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod securityContext.runAsUser: 0")
    if pod_non_root is False:
        problems.append("pod securityContext.runAsNonRoot: false")
    for where, container in containers:
        context = container.get("securityContext") or {}
        problems += _context_problems(f"{where}.securityContext", context)
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{where}: adds capabilities {sorted(added)}")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount {context['procMount']}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{where}: hostPort")
        non_root = context.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot is not true (pod or container)")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in _SECCOMP_ALLOWED:
            problems.append(f"{where}: seccompProfile {seccomp!r} is not RuntimeDefault/Localhost")
    return problems


def _context_problems(where: str, context: Mapping[str, Any]) -> list[str]:
    """Rules shared by the pod's and the containers' security contexts."""
    problems = []
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}.seLinuxOptions {selinux} not allowed")
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor == "Unconfined":
        problems.append(f"{where}.appArmorProfile Unconfined")
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}.seccompProfile Unconfined")
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}.windowsOptions.hostProcess")
    return problems


def read_only_root_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Containers whose root filesystem is writable (``readOnlyRootFilesystem`` not true)."""
    return [
        f"{where}: readOnlyRootFilesystem is not true"
        for where, container in _containers(pod_spec)
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True
    ]


def assert_restricted(pod_spec: Mapping[str, Any], *, read_only_root: bool = True) -> None:
    """Fail with every broken rule unless ``pod_spec`` passes "restricted" (and a read-only root).

    Args:
        pod_spec: the pod spec.
        read_only_root: also require read-only root filesystems.
    """
    problems = restricted_violations(pod_spec)
    if read_only_root:
        problems += read_only_root_violations(pod_spec)
    assert not problems, "not restricted:\n  " + "\n  ".join(problems)
