"""The Kubernetes launcher: what it renders fits the Kubeflow CRDs, and every way a job ends is
reported and cleaned up as promised — against a fake API server driven by the real client."""

from __future__ import annotations

import ast
import copy
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kshot.launch import kube_api, watch
from kshot.launch.jobs import LAUNCH_HASH_ANNOTATION, render_job
from kshot.launch.kube import JobCancelled, run_job
from kshot.launch.pods import image_pull_policy
from kshot.launch.pytorchjob import render_pytorchjob
from kshot.launch.spec import LaunchError, LaunchSpec
from kshot.launch.trainjob import (
    HARDENED_RUNTIME,
    TORCH_RUNTIME,
    TRAINER_CONTAINER,
    TRAINER_JOB,
    render_trainjob,
)
from kshot.stages import HEAVY_STAGES
from kshot.storage import s3 as s3_store
from tests.fake_kube import (
    FAILURE_MESSAGE,
    FAILURE_REASON,
    HANG_UP,
    SHARED_KUBEFLOW,
    TRAINER_CRDS,
    TRAINER_RUNTIMES,
    UNSCHEDULABLE_MESSAGE,
    FakeKube,
    crd,
    crd_schema,
    pruned_fields,
    validate_against_crd,
)
from tests.pod_security import assert_restricted

pytestmark = pytest.mark.skipif(
    not SHARED_KUBEFLOW.is_dir(),
    reason=f"the Kubeflow CRDs are not at {SHARED_KUBEFLOW}: set KSHOT_TEST_DATA to a folder "
    "whose sibling kubeflow/ holds pytorchjobs.kubeflow.org.crd.yaml and the Trainer CRDs",
)

RUN_LABEL = {"pipelines.kubeflow.org/run_id": "3f2a9c1e-run"}
GPU_OVERRIDES = {
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
    "serviceAccountName": "kshot-worker",
}
RESOURCES = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}
PULL_SECRETS = [{"name": "regcred"}]
BACKENDS = ("pytorchjob", "trainjob")
TRAINER_VERSIONS = tuple(TRAINER_CRDS)
HARDENED_RUNTIME_FILE = (
    Path(__file__).resolve().parents[1] / "manifests/overlays/trainer-v2.1/training-runtime.yaml"
)
FAST = {"poll_s": 0.02, "timeout_s": 10.0, "schedule_timeout_s": 5.0}


def make_spec(**changes: object) -> LaunchSpec:
    fields = {
        "stage": "train",
        "config": {"k": 4, "epochs": 1, "note": "costs $(HOME) and $$"},
        "inputs": {"checkpoint": "gs://bucket/run/warmup.pt"},
        "outputs": {"checkpoint": "gs://bucket/run/train.pt"},
        "workers": 2,
        "gpus_per_worker": 1,
        "namespace": "kubeflow-user",
        "labels": dict(RUN_LABEL),
    }
    return LaunchSpec(**{**fields, **changes})


@pytest.fixture
def start_fake() -> Iterator[Callable[..., FakeKube]]:
    servers: list[FakeKube] = []

    def start(**settings: object) -> FakeKube:
        servers.append(FakeKube(**settings).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry backoff in hundredths of a second."""
    monkeypatch.setattr(kube_api, "_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(kube_api, "_RETRY_MAX_S", 0.04)


def launch(fake: FakeKube, spec: LaunchSpec, backend: str = "pytorchjob", **options: object):
    lines: list[str] = []
    options = {**FAST, "launch_defaults": None, **options}
    job = run_job(spec, backend, api_client=fake.api_client(), log=lines.append, **options)
    return job, lines


# Rendering.


@pytest.mark.parametrize(
    ("stage", "workers", "gpus"),
    list(itertools.product(sorted(HEAVY_STAGES), (1, 2, 4), (0, 1, 8))),
)
def test_every_render_fits_its_crd(stage: str, workers: int, gpus: int) -> None:
    spec = make_spec(stage=stage, workers=workers, gpus_per_worker=gpus)
    with_resources = {**GPU_OVERRIDES, "resources": RESOURCES}
    everything = {**with_resources, "imagePullSecrets": PULL_SECRETS}
    for overrides in (None, GPU_OVERRIDES, with_resources, everything):
        validate_against_crd(render_pytorchjob(spec, pod_overrides=overrides))
        for version in TRAINER_VERSIONS:
            job = render_trainjob(spec, trainer_version=version, pod_overrides=overrides)
            validate_against_crd(job, version)
    validate_against_crd(render_job(spec, "pytorchjob", pod_overrides=everything, timeout_s=60))
    for version in TRAINER_VERSIONS:
        job = render_job(
            spec, "trainjob", pod_overrides=everything, timeout_s=60, trainer_version=version
        )
        validate_against_crd(job, version)


def test_a_field_the_api_server_would_prune_fails_validation() -> None:
    """The pruning check: what v2.3 dropped (spec.labels, podTemplateOverrides) is caught."""
    v21 = render_trainjob(make_spec(), trainer_version="v2.1")
    v23 = render_trainjob(make_spec(), trainer_version="v2.3")
    schema = crd_schema(TRAINER_CRDS["v2.3"])
    assert pruned_fields(v23, schema) == []
    assert pruned_fields(v21, schema) == [".spec.podTemplateOverrides"]
    with_labels = copy.deepcopy(v23)
    with_labels["spec"]["labels"] = {"a": "b"}
    with pytest.raises(ValueError, match=r"would prune \.spec\.labels"):
        validate_against_crd(with_labels, "v2.3")
    deep = copy.deepcopy(v23)
    pod = deep["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["image"] = "x"
    (where,) = pruned_fields(deep, schema)
    assert where.endswith(".containers[0].image")
    # The pre-v2.1 field, and a v2.3 patch on a v2.1 cluster, are both lost.
    old = copy.deepcopy(v21)
    old["spec"]["podSpecOverrides"] = old["spec"].pop("podTemplateOverrides")
    assert pruned_fields(old, crd_schema(TRAINER_CRDS["v2.1"])) == [".spec.podSpecOverrides"]
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        validate_against_crd(v23, "v2.1")
    # Free-form maps (labels, nodeSelector) and metadata are kept.
    assert pruned_fields({"a": {"x": 1}}, {"properties": {"a": {"additionalProperties": {}}}}) == []
    assert pruned_fields({"metadata": {"x": 1}}, {"properties": {}}) == []


def released_runtime(job: dict[str, Any]) -> dict[str, Any]:
    """The training runtime a TrainJob names: the released one, or kshot's for v2.1."""
    name = job["spec"]["runtimeRef"]["name"]
    if name == HARDENED_RUNTIME:
        return yaml.safe_load(HARDENED_RUNTIME_FILE.read_text())
    assert name == TORCH_RUNTIME
    return crd(TRAINER_RUNTIMES["v2.3"])


def effective_trainer_pod(job: dict[str, Any]) -> dict[str, Any]:
    """The trainer pods' template after the Trainer applies the job to its runtime.

    As the controller merges: the patch of the replicated job it names (one the runtime lacks is
    skipped, so it fails here), containers by name (one the runtime lacks fails too), volumes
    and mounts appended, the rest set; the trainer's image, command, args, env and resources go
    to the container ``node``.
    """
    runtime = released_runtime(job)
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    template = copy.deepcopy(replicated["template"]["spec"]["template"])
    if "podTemplateOverrides" in job["spec"]:
        patches = [
            (o["targetJobs"][0]["name"], o.get("metadata", {}), o["spec"])
            for o in job["spec"]["podTemplateOverrides"]
        ]
    else:
        patches = [
            (rj["name"], rj["template"]["spec"]["template"].get("metadata", {}), pod["spec"])
            for patch in job["spec"]["runtimePatches"]
            for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            for pod in [rj["template"]["spec"]["template"]]
        ]
    pod = template["spec"]
    for target, metadata, patch in patches:
        assert target == replicated["name"], f"the patch targets {target}, the runtime has none"
        for key, value in metadata.items():
            template.setdefault("metadata", {}).setdefault(key, {}).update(value)
        for key, value in patch.items():
            if key == "containers":
                runtime_containers = {c["name"]: c for c in pod["containers"]}
                for container in value:
                    assert container["name"] in runtime_containers, container["name"]
                    into = runtime_containers[container["name"]]
                    into.setdefault("securityContext", {}).update(
                        container.get("securityContext", {})
                    )
                    into.setdefault("volumeMounts", []).extend(container.get("volumeMounts", []))
            elif key == "volumes":
                pod.setdefault("volumes", []).extend(value)
            elif key == "securityContext":
                pod.setdefault("securityContext", {}).update(value)
            else:
                pod[key] = value
    trainer = job["spec"]["trainer"]
    (node,) = [c for c in pod["containers"] if c["name"] == TRAINER_CONTAINER]
    node.update({key: trainer[key] for key in ("image", "command", "args", "env")})
    if "resourcesPerNode" in trainer:
        node["resources"] = trainer["resourcesPerNode"]
    return template


@pytest.mark.parametrize("version", TRAINER_VERSIONS)
def test_trainjob_patches_target_the_released_job_and_container_node(version: str) -> None:
    job = render_trainjob(make_spec(), trainer_version=version, pod_overrides=GPU_OVERRIDES)
    assert (TRAINER_JOB, TRAINER_CONTAINER) == ("node", "node")
    for file_name in TRAINER_RUNTIMES.values():
        (replicated,) = crd(file_name)["spec"]["template"]["spec"]["replicatedJobs"]
        assert replicated["name"] == TRAINER_JOB
        containers = replicated["template"]["spec"]["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == [TRAINER_CONTAINER]
    template = effective_trainer_pod(job)
    pod = template["spec"]
    assert pod["tolerations"] == GPU_OVERRIDES["tolerations"]
    assert pod["nodeSelector"] == GPU_OVERRIDES["nodeSelector"]
    assert pod["serviceAccountName"] == "kshot-worker"
    assert template["metadata"]["labels"]["pipelines.kubeflow.org/run_id"] == "3f2a9c1e-run"
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    (node,) = pod["containers"]
    mounts = {m["mountPath"] for m in node["volumeMounts"]}
    assert mounts == {"/dev/shm", "/tmp", "/home/kshot"}


def test_the_v2_1_runtime_is_the_released_one_plus_the_security_context() -> None:
    ours = yaml.safe_load(HARDENED_RUNTIME_FILE.read_text())
    released = crd(TRAINER_RUNTIMES["v2.1"])
    assert ours["kind"] == "TrainingRuntime" and ours["metadata"]["name"] == HARDENED_RUNTIME
    (replicated,) = ours["spec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]["spec"]
    del pod["securityContext"]
    for container in pod["containers"]:
        del container["securityContext"]
    assert ours["spec"] == released["spec"]
    assert ours["metadata"]["labels"] == released["metadata"]["labels"]


@pytest.mark.parametrize("version", TRAINER_VERSIONS)
@pytest.mark.parametrize("workers", [1, 3])
def test_every_trainjob_pod_is_restricted_with_a_read_only_root(version, workers) -> None:
    job = render_trainjob(make_spec(workers=workers), trainer_version=version)
    assert_restricted(effective_trainer_pod(job)["spec"])
    # Without kshot's runtime a v2.1 job's pods would not be: its overrides cannot harden them.
    if version == "v2.1":
        bare = copy.deepcopy(job)
        bare["spec"]["runtimeRef"]["name"] = TORCH_RUNTIME
        with pytest.raises(AssertionError, match="not restricted"):
            assert_restricted(effective_trainer_pod(bare)["spec"])


@pytest.mark.parametrize("workers", [1, 3])
def test_every_pytorchjob_pod_is_restricted_with_a_read_only_root(workers: int) -> None:
    job = render_pytorchjob(make_spec(workers=workers), pod_overrides=GPU_OVERRIDES)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert len(replicas) == (2 if workers > 1 else 1)
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        assert_restricted(pod)
        (container,) = pod["containers"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"/dev/shm", "/tmp", "/home/kshot"}
        assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}


@pytest.mark.parametrize(("workers", "gpus"), [(1, 0), (2, 1), (4, 8)])
def test_pytorchjob_is_one_master_and_the_rest_workers(workers: int, gpus: int) -> None:
    spec = make_spec(workers=workers, gpus_per_worker=gpus)
    job = render_pytorchjob(spec, backoff_limit=5, clean_pod_policy="Running")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas", 0) == workers - 1
    assert ("Worker" in replicas) == (workers > 1)
    assert job["spec"]["nprocPerNode"] == str(max(1, gpus))
    assert job["spec"]["runPolicy"] == {
        "backoffLimit": 5,
        "cleanPodPolicy": "Running",
        "ttlSecondsAfterFinished": 24 * 3600,
    }
    for replica in replicas.values():
        # Exit codes 1-127 (torchrun's for any failed worker) are permanent: no rerun.
        assert replica["restartPolicy"] == "ExitCode"
        assert replica["template"]["metadata"]["labels"] == job["metadata"]["labels"]
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["command"] == ["torchrun"]
        flags, module = container["args"][:2], container["args"][2:4]
        assert flags == ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]
        assert module == ["-m", "kshot.worker"]
        assert container["resources"] if gpus else "resources" not in container
        if gpus:
            assert container["resources"]["limits"] == {"nvidia.com/gpu": gpus}
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["KSHOT_STAGE"] == "train"


def _training_envs(spec: LaunchSpec) -> list[list[dict[str, Any]]]:
    """The training container's env of the PyTorchJob and of the TrainJob of every release, each
    rendering checked against its CRD."""
    pytorchjob = render_pytorchjob(spec)
    validate_against_crd(pytorchjob)
    envs = [
        replica["template"]["spec"]["containers"][0]["env"]
        for replica in pytorchjob["spec"]["pytorchReplicaSpecs"].values()
    ]
    for version in TRAINER_VERSIONS:
        trainjob = render_trainjob(spec, trainer_version=version)
        validate_against_crd(trainjob, version)
        envs.append(trainjob["spec"]["trainer"]["env"])
    return envs


def test_a_job_on_kfps_minio_store_gets_its_endpoint_and_the_keys_of_its_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job whose URIs are minio:// (KFP's default root) reaches the store as the step did: the
    endpoint the step found, the keys from KFP's Secret (optional, as on the steps); a gs:// job
    gets neither."""
    monkeypatch.setenv(s3_store.MINIO_ENDPOINT_ENV, "http://seaweedfs.kubeflow:8333")
    root = "minio://mlpipeline/v2/artifacts/kshot-nas/run-1"
    on_minio = make_spec(
        inputs={"checkpoint": f"{root}/warmup/checkpoint"},
        outputs={"checkpoint": f"{root}/train/checkpoint"},
    )
    # artifacts on gs://, the dataset in KFP's store: the job reads it too
    data_on_minio = make_spec(config={"k": 4, "dataset": "minio://datasets/cifar10"})
    for env in _training_envs(on_minio) + _training_envs(data_on_minio):
        values = {item["name"]: item.get("value") for item in env}
        assert values[s3_store.MINIO_ENDPOINT_ENV] == "http://seaweedfs.kubeflow:8333"
        refs = {
            item["name"]: item["valueFrom"]["secretKeyRef"] for item in env if "valueFrom" in item
        }
        assert refs == {
            name: {"name": s3_store.MINIO_SECRET, "key": key, "optional": True}
            for key, name in s3_store.MINIO_SECRET_KEYS.items()
        }
    for env in _training_envs(make_spec()):  # gs:// only
        names = {item["name"] for item in env}
        assert not names & {s3_store.MINIO_ENDPOINT_ENV, *s3_store.MINIO_SECRET_KEYS.values()}
        assert all("valueFrom" not in item for item in env)


def test_a_job_on_s3_gets_the_s3_endpoint_of_its_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// job on MinIO or SeaweedFS reaches the server its launching step reaches; a gs://
    job does not get the variable."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://seaweedfs.storage:8333")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    spec = make_spec(
        inputs={"checkpoint": "s3://bucket/run/warmup"}, outputs={"checkpoint": "s3://bucket/run/t"}
    )
    for env in _training_envs(spec):
        values = {item["name"]: item.get("value") for item in env}
        assert values["AWS_ENDPOINT_URL_S3"] == "http://seaweedfs.storage:8333"
        assert "AWS_ENDPOINT_URL" not in values
    for env in _training_envs(make_spec()):
        assert "AWS_ENDPOINT_URL_S3" not in {item["name"] for item in env}
    # launched from a laptop through `kubectl port-forward`: the pods get no loopback endpoint
    for local in ("http://localhost:9000", "http://127.0.0.1:9000", "http://[::1]:9000"):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", local)
        for env in _training_envs(spec):
            assert "AWS_ENDPOINT_URL_S3" not in {item["name"] for item in env}, local


@pytest.mark.parametrize(
    ("version", "runtime", "kind"),
    [
        ("v2.1", "kshot-torch-distributed", "TrainingRuntime"),
        ("v2.2", "torch-distributed", "ClusterTrainingRuntime"),
        ("v2.3", "torch-distributed", "ClusterTrainingRuntime"),
    ],
)
def test_trainjob_runs_torchrun_on_the_torch_distributed_runtime(version, runtime, kind) -> None:
    spec = make_spec(workers=4, gpus_per_worker=8)
    job = render_trainjob(spec, trainer_version=version, active_deadline_s=3600)
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "name": runtime,
        "kind": kind,
    }
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:3] == ["-m", "kshot.worker", "train"]
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8}}
    # v2.2 and v2.3 take per-job changes in runtimePatches only, and the launcher's deadline.
    patched = version != "v2.1"
    assert ("runtimePatches" in job["spec"]) == patched
    assert ("podTemplateOverrides" in job["spec"]) == (not patched)
    assert job["spec"].get("activeDeadlineSeconds") == (3600 if patched else None)
    assert "labels" not in job["spec"]


def test_an_unsupported_trainer_version_is_refused() -> None:
    with pytest.raises(LaunchError, match="'v2.0' is not supported.*v2.1, v2.2, v2.3"):
        render_trainjob(make_spec(), trainer_version="v2.0")
    assert render_trainjob(make_spec(), trainer_version="2.1")["spec"]["runtimeRef"]["name"] == (
        HARDENED_RUNTIME
    )


def test_every_pytorchjob_pod_skips_istio_runs_as_the_image_user_with_a_capped_shm() -> None:
    job = render_pytorchjob(make_spec(workers=3))
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        template = replica["template"]
        assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        pod = template["spec"]
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 1000
        volumes = {volume["name"]: volume["emptyDir"] for volume in pod["volumes"]}
        assert volumes["dshm"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    for version in TRAINER_VERSIONS:
        pod = effective_trainer_pod(render_trainjob(make_spec(), trainer_version=version))
        volumes = {volume["name"]: volume["emptyDir"] for volume in pod["spec"]["volumes"]}
        assert volumes["dshm"] == {"medium": "Memory", "sizeLimit": "16Gi"}


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("ghcr.io/acme/kshot", "Always"),
        ("ghcr.io/acme/kshot:latest", "Always"),
        ("localhost:5000/kshot", "Always"),
        ("localhost:5000/kshot:1.2", "IfNotPresent"),
        ("ghcr.io/acme/kshot:0.1.0", "IfNotPresent"),
        ("ghcr.io/acme/kshot@sha256:" + "a" * 64, "IfNotPresent"),
    ],
)
def test_a_moving_tag_is_always_pulled(image: str, policy: str) -> None:
    assert image_pull_policy(image) == policy
    job = render_pytorchjob(make_spec(image=image))
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == policy


def test_resources_and_pull_secrets_overrides_reach_the_pods() -> None:
    spec = make_spec(workers=2, gpus_per_worker=8)
    overrides = {"resources": RESOURCES, "imagePullSecrets": PULL_SECRETS}
    job = render_pytorchjob(spec, pod_overrides=overrides)
    limits = {"memory": "32Gi", "nvidia.com/gpu": 8}
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["imagePullSecrets"] == PULL_SECRETS
        assert "resources" not in pod
        (container,) = pod["containers"]
        assert container["resources"] == {"requests": RESOURCES["requests"], "limits": limits}
    for version in TRAINER_VERSIONS:
        trainjob = render_trainjob(spec, trainer_version=version, pod_overrides=overrides)
        assert trainjob["spec"]["trainer"]["resourcesPerNode"] == {
            "requests": RESOURCES["requests"],
            "limits": limits,
        }
        pod = effective_trainer_pod(trainjob)["spec"]
        assert pod["imagePullSecrets"] == PULL_SECRETS
        assert "resources" not in pod
    assert RESOURCES["limits"] == {"memory": "32Gi"}  # the caller's dict is left as it was


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"resources": {"requests": {"cpu": "lots"}}}, "resources.requests.cpu = 'lots'"),
        ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, "gpus_per_worker"),
        ({"resources": {"claims": []}}, "resources must map"),
        ({"resources": {"requests": ["cpu"]}}, "resources.requests must map"),
        ({"imagePullSecrets": ["regcred"]}, "imagePullSecrets must be a list"),
    ],
)
def test_malformed_resources_or_pull_secrets_are_refused(overrides, complaint) -> None:
    with pytest.raises(LaunchError, match=re.escape(complaint)):
        render_pytorchjob(make_spec(), pod_overrides=overrides)


def test_the_launch_timeout_is_the_pytorchjob_deadline() -> None:
    job = render_job(make_spec(), "pytorchjob", timeout_s=3600.5)
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == math.ceil(3600.5)
    default = render_job(make_spec(), "pytorchjob")["spec"]["runPolicy"]
    assert default["activeDeadlineSeconds"] == 7 * 24 * 3600  # run_job's default timeout
    no_deadline = render_job(make_spec(), "pytorchjob", timeout_s=None)["spec"]["runPolicy"]
    assert "activeDeadlineSeconds" not in no_deadline
    with pytest.raises(LaunchError, match="active_deadline_s"):
        render_pytorchjob(make_spec(), active_deadline_s=0)


def test_the_launch_hash_follows_what_is_rendered() -> None:
    def launch_hash(job: dict) -> str:
        return job["metadata"]["annotations"][LAUNCH_HASH_ANNOTATION]

    spec = make_spec(name="kshot-train-mine")
    same = launch_hash(render_job(spec, "pytorchjob"))
    assert launch_hash(render_job(spec, "pytorchjob")) == same
    assert launch_hash(render_job(spec, "pytorchjob", backoff_limit=0)) != same
    assert (
        launch_hash(render_job(make_spec(name="kshot-train-mine", workers=3), "pytorchjob")) != same
    )


def test_labels_carry_the_run_id_app_and_stage() -> None:
    labels = render_pytorchjob(make_spec(stage="search"))["metadata"]["labels"]
    assert labels == {**RUN_LABEL, "app.kubernetes.io/name": "kshot", "kshot/stage": "search"}


def test_pod_overrides_reach_every_pod_template() -> None:
    job = render_pytorchjob(make_spec(workers=3), pod_overrides=GPU_OVERRIDES)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["tolerations"] == GPU_OVERRIDES["tolerations"]
        assert pod["nodeSelector"] == GPU_OVERRIDES["nodeSelector"]
        assert pod["serviceAccountName"] == "kshot-worker"
    explicit = render_pytorchjob(make_spec(), service_account="other", pod_overrides=GPU_OVERRIDES)
    master = explicit["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["serviceAccountName"] == "other"


def test_derived_name_is_a_short_dns_label_that_changes_with_the_run() -> None:
    name = render_pytorchjob(make_spec(stage="recalibrate"))["metadata"]["name"]
    assert name.startswith("kshot-recalibrate-") and len(name) <= 63
    assert render_pytorchjob(make_spec(stage="recalibrate"))["metadata"]["name"] == name
    other_run = make_spec(stage="recalibrate", labels={"pipelines.kubeflow.org/run_id": "r2"})
    assert render_pytorchjob(other_run)["metadata"]["name"] != name
    assert render_trainjob(make_spec(name="given"))["metadata"]["name"] == "given"


def test_dollars_survive_kubernetes_variable_expansion() -> None:
    args = render_pytorchjob(make_spec())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    config_json = args["spec"]["containers"][0]["args"][6]
    assert "$$(HOME) and $$$$" in config_json


@pytest.mark.parametrize("variable", ["MASTER_ADDR", "WORLD_SIZE", "PET_NNODES"])
def test_env_set_by_the_operator_is_refused(variable: str) -> None:
    spec = make_spec(env={variable: "x"})
    with pytest.raises(LaunchError, match=variable):
        render_pytorchjob(spec)
    if variable.startswith("PET_"):
        with pytest.raises(LaunchError, match=variable):
            render_trainjob(spec)


DATASET_VOLUMES = {
    "volumes": [
        {"name": "imagenet", "persistentVolumeClaim": {"claimName": "imagenet", "readOnly": True}},
        {
            "name": "bucket",
            "csi": {
                "driver": "gcsfuse.csi.storage.gke.io",
                "readOnly": True,
                "volumeAttributes": {"bucketName": "BUCKET", "mountOptions": "implicit-dirs"},
            },
        },
    ],
    "volumeMounts": [
        {"name": "imagenet", "mountPath": "/data/imagenet", "readOnly": True},
        {"name": "bucket", "mountPath": "/data/bucket", "readOnly": True},
    ],
}


def test_a_dataset_volume_reaches_every_pod_beside_the_scratch_volumes() -> None:
    """A PVC or CSI bucket mount given as pod overrides is mounted in every job pod's training
    container, for both backends, and the jobs still fit their CRDs."""
    overrides = {**GPU_OVERRIDES, **DATASET_VOLUMES}
    job = render_pytorchjob(make_spec(workers=2), pod_overrides=overrides)
    validate_against_crd(job)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["volumes"][-2:] == DATASET_VOLUMES["volumes"]
        assert {v["name"] for v in pod["volumes"]} >= {"tmp", "dshm", "home"}
        assert pod["containers"][0]["volumeMounts"][-2:] == DATASET_VOLUMES["volumeMounts"]
        assert "volumeMounts" not in pod
    for version in TRAINER_VERSIONS:
        trainjob = render_trainjob(make_spec(), trainer_version=version, pod_overrides=overrides)
        validate_against_crd(trainjob, version)
        text = json.dumps(trainjob)
        assert '"claimName": "imagenet"' in text and '"mountPath": "/data/bucket"' in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "volumes tmp: names taken"),
        ({"volumes": {"name": "x"}}, "volumes must be a list of objects with a name"),
        (
            {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            "volumeMounts 'data' names no volume of volumes []",
        ),
        (
            {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "volumeMounts": [{"name": "data", "mountPath": "data"}],
            },
            "mountPath 'data' must be an absolute path",
        ),
    ],
)
def test_bad_dataset_volumes_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(LaunchError, match=re.escape(message)):
        render_pytorchjob(make_spec(), pod_overrides=overrides)


def test_unknown_or_malformed_pod_overrides_are_refused() -> None:
    with pytest.raises(LaunchError, match="affinity"):
        render_pytorchjob(make_spec(), pod_overrides={"affinity": {}})
    with pytest.raises(LaunchError, match="tolerations"):
        render_trainjob(make_spec(), pod_overrides={"tolerations": "nvidia.com/gpu"})
    with pytest.raises(LaunchError, match="nodeSelector"):
        render_pytorchjob(make_spec(), pod_overrides={"nodeSelector": {"gpu": 1}})


# Running against the fake API server.


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_that_succeeds_streams_its_log_once_and_is_deleted(start_fake, backend) -> None:
    fake = start_fake(master_log="epoch 1/2 loss 0.9\nepoch 2/2 loss 0.4\ndone\n")
    spec = make_spec()
    job, lines = launch(fake, spec, backend)
    name = job["metadata"]["name"]
    done = {"pytorchjob": "Succeeded", "trainjob": "Complete"}[backend]
    assert any(c["type"] == done for c in job["status"]["conditions"])
    log_lines = [line for line in lines if line.startswith(("epoch", "done"))]
    assert log_lines == ["epoch 1/2 loss 0.9", "epoch 2/2 loss 0.4", "done"]
    assert fake.deleted(name)
    assert fake.created_bodies() == [render_job(spec, backend, timeout_s=FAST["timeout_s"])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_job_reports_reason_pods_and_last_log_lines(start_fake, backend) -> None:
    fake = start_fake(scenario=["created", "running", "failed"])
    with pytest.raises(LaunchError) as raised:
        launch(fake, make_spec(), backend)
    message = str(raised.value)
    assert f"{FAILURE_REASON}: {FAILURE_MESSAGE}" in message
    assert "terminated: Error (exit code 1): worker exited" in message
    assert "previously terminated: OOMKilled (exit code 137), restarts: 1" in message
    assert "RuntimeError: CUDA error: out of memory" in message
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert fake.deleted(name)


def test_a_failed_job_is_kept_under_on_success(start_fake) -> None:
    fake = start_fake(scenario=["running", "failed"])
    with pytest.raises(LaunchError, match="failed"):
        launch(fake, make_spec(), delete_policy="on-success")
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert not fake.deleted(name)
    assert not any(request.method == "DELETE" for request in fake.requests)


def test_a_succeeded_job_is_kept_under_never(start_fake) -> None:
    fake = start_fake()
    job, lines = launch(fake, make_spec(), delete_policy="never")
    assert not fake.deleted(job["metadata"]["name"])
    assert any("kept" in line for line in lines)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_never_scheduled_says_so(start_fake, backend) -> None:
    fake = start_fake(scenario=["created", "unschedulable"])
    with pytest.raises(LaunchError) as raised:
        launch(fake, make_spec(gpus_per_worker=8), backend, schedule_timeout_s=0.1)
    message = str(raised.value)
    assert "never scheduled" in message
    assert f"Unschedulable: {UNSCHEDULABLE_MESSAGE}" in message
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert fake.deleted(name)


def test_a_job_that_runs_too_long_times_out_and_is_deleted(start_fake) -> None:
    fake = start_fake(scenario=["created", "running"])
    with pytest.raises(LaunchError, match=r"timed out: not finished after 0.2 s"):
        launch(fake, make_spec(), timeout_s=0.2)
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert fake.deleted(name)


def test_sigterm_mid_watch_deletes_the_job_whatever_the_policy(start_fake) -> None:
    fake = start_fake(scenario=["created", "running", "sigterm"])
    with pytest.raises(JobCancelled, match="SIGTERM"):
        launch(fake, make_spec(), delete_policy="never")
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert fake.deleted(name)


def test_ctrl_c_mid_watch_deletes_the_job_whatever_the_policy(start_fake, monkeypatch) -> None:
    fake = start_fake(scenario=["created", "running"])

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(watch.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        launch(fake, make_spec(), "trainjob", delete_policy="never")
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert fake.deleted(name)


def test_a_forbidden_namespace_is_named_with_the_service_account_hint(start_fake) -> None:
    fake = start_fake(forbidden_namespaces={"team-a"})
    with pytest.raises(LaunchError) as raised:
        launch(fake, make_spec(namespace="team-a"))
    message = str(raised.value)
    assert "forbidden to create pytorchjobs.kubeflow.org in namespace 'team-a'" in message
    assert "kshot-launcher" in message and "default-editor" in message
    assert fake.jobs == {}
    assert not any(request.method == "DELETE" for request in fake.requests)


def test_an_existing_job_of_another_launch_is_left_alone(start_fake) -> None:
    fake = start_fake()
    launch(fake, make_spec(name="kshot-train-mine"), delete_policy="never")
    with pytest.raises(LaunchError, match="already exists and was not made by this launch"):
        launch(fake, make_spec(name="kshot-train-mine", config={"k": 8}))
    assert not fake.deleted("kshot-train-mine")


def existing(fake: FakeKube, spec: LaunchSpec, backend: str, steps: list[str]) -> str:
    """Make the job that an earlier attempt of this launch left; returns its name."""
    body = render_job(spec, backend, timeout_s=FAST["timeout_s"])
    fake.add_job(body, steps)
    return body["metadata"]["name"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_retried_step_adopts_its_running_job(start_fake, backend) -> None:
    fake = start_fake(master_log="epoch 1/1 loss 0.5\ndone\n")
    name = existing(fake, make_spec(), backend, ["running", "running", "succeeded"])
    job, lines = launch(fake, make_spec(), backend)
    assert job["metadata"]["name"] == name
    assert any(line.startswith("adopted the existing") for line in lines)
    assert [line for line in lines if line.startswith(("epoch", "done"))] == [
        "epoch 1/1 loss 0.5",
        "done",
    ]
    assert [r.method for r in fake.requests if r.method != "GET"] == ["POST", "DELETE"]
    assert fake.deleted(name)


def test_a_retried_step_whose_job_succeeded_returns_at_once(start_fake) -> None:
    fake = start_fake(scenario=["failed"])  # a new job would fail
    name = existing(fake, make_spec(), "pytorchjob", ["succeeded"])
    job, lines = launch(fake, make_spec())
    assert any(c["type"] == "Succeeded" for c in job["status"]["conditions"])
    assert f"adopted the existing PyTorchJob kubeflow-user/{name}" in lines
    assert f"pytorchjobs kubeflow-user/{name} succeeded" in lines
    assert [r.method for r in fake.requests if r.method != "GET"] == ["POST", "DELETE"]
    assert fake.deleted(name)


def test_a_retried_step_replaces_its_failed_job(start_fake) -> None:
    fake = start_fake()
    name = existing(fake, make_spec(), "pytorchjob", ["failed"])
    job, lines = launch(fake, make_spec())
    assert any(c["type"] == "Succeeded" for c in job["status"]["conditions"])
    assert any("failed: replacing it" in line for line in lines)
    methods = [r.method for r in fake.requests if r.method != "GET"]
    assert methods == ["POST", "DELETE", "POST", "DELETE"]
    assert fake.deleted(name)
    # the failed job goes only after its pods, which the new job's would be mistaken for
    replace = next(r for r in fake.requests if r.method == "DELETE")
    assert replace.query.get("propagationPolicy") == ["Foreground"]


def test_a_retried_step_waits_out_its_job_being_deleted_and_creates_it_anew(start_fake) -> None:
    fake = start_fake()
    spec = make_spec()
    body = render_job(spec, "pytorchjob", timeout_s=FAST["timeout_s"])
    body["metadata"]["deletionTimestamp"] = "2026-11-28T00:00:00Z"
    fake.add_job(body, ["running", "gone"])
    job, lines = launch(fake, spec)
    assert any(c["type"] == "Succeeded" for c in job["status"]["conditions"])
    assert any("is being deleted: waiting to create it anew" in line for line in lines)
    assert [r.method for r in fake.requests if r.method != "GET"] == ["POST", "POST", "DELETE"]


def test_launch_defaults_configmap_places_the_pods(start_fake) -> None:
    data = {
        "tolerations": "- {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}\n",
        "nodeSelector": "cloud.google.com/gke-accelerator: nvidia-tesla-a100\n",
        "serviceAccountName": "kshot-worker",
    }
    fake = start_fake(config_maps={("kubeflow-user", "kshot-launch-defaults"): data})
    spec = make_spec()
    launch(fake, spec, launch_defaults="kshot-launch-defaults")
    expected = render_job(spec, "pytorchjob", pod_overrides=GPU_OVERRIDES, timeout_s=10.0)
    assert fake.created_bodies() == [expected]


@pytest.mark.parametrize("backend", BACKENDS)
def test_transient_api_errors_are_retried(start_fake, fast_retries, backend) -> None:
    errors = {
        "create": [503],
        "get": [503, 429, HANG_UP, HANG_UP, HANG_UP, HANG_UP, 500],
        "pods": [502],
        "delete": [504],
    }
    fake = start_fake(errors=errors)
    job, lines = launch(fake, make_spec(), backend)
    assert fake.deleted(job["metadata"]["name"])
    retried = [line for line in lines if "; retrying in" in line]
    assert len(retried) == 7  # four hang-ups are one error after urllib3's own three retries
    assert any("503 Service Unavailable" in line for line in retried)
    assert any("MaxRetryError" in line for line in retried)
    assert all(not codes for codes in errors.values())


def test_api_errors_that_outlast_the_timeout_fail_the_launch(start_fake, fast_retries) -> None:
    fake = start_fake(errors={"get": [503] * 10_000})
    with pytest.raises(LaunchError, match="could not get pytorchjobs .*: 503"):
        launch(fake, make_spec(), timeout_s=0.3)
    (name,) = {body["metadata"]["name"] for body in fake.created_bodies()}
    assert fake.deleted(name)


@pytest.mark.parametrize(
    ("status", "complaint"), [(403, "forbidden to get pytorchjobs"), (404, "disappeared")]
)
def test_a_permanent_api_error_while_waiting_fails_at_once(start_fake, status, complaint) -> None:
    fake = start_fake(errors={"get": [status]})
    with pytest.raises(LaunchError, match=complaint):
        launch(fake, make_spec())
    assert sum(r.method == "GET" and "pytorchjobs" in r.path for r in fake.requests) == 1


def test_a_recreated_master_pod_has_its_log_streamed_anew(start_fake) -> None:
    """Under restartPolicy ExitCode the operator recreates the pod under the same name."""
    fake = start_fake(
        scenario=["running"] * 15 + ["restarted"] * 15 + ["succeeded"],
        master_log="resumed at epoch 1\ndone\n",
    )
    _, lines = launch(fake, make_spec())
    assert lines.count("resumed at epoch 1") == 2
    assert lines.count("done") == 2


def test_every_api_call_has_a_request_timeout() -> None:
    """Without one, a call to an API server that went silent waits forever."""
    calls = [
        node
        for path in sorted(Path(watch.__file__).parent.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and re.match(r"^(create|read|get|list|delete)_namespaced_\w+$", node.func.attr)
    ]
    assert len(calls) >= 6
    for call in calls:
        assert "_request_timeout" in {keyword.arg for keyword in call.keywords}, call.func.attr


def test_a_malformed_configmap_stops_the_launch_before_create(start_fake) -> None:
    data = {"nodeSelector": "[not, a, map]"}
    fake = start_fake(config_maps={("kubeflow-user", "kshot-launch-defaults"): data})
    with pytest.raises(LaunchError, match="kshot-launch-defaults: nodeSelector"):
        launch(fake, make_spec(), launch_defaults="kshot-launch-defaults")
    assert fake.jobs == {}


# Bad input: refused before anything reaches the server.


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"workers": 0}, "at least one worker"),
        ({"gpus_per_worker": -1}, "must be >= 0"),
        ({"image": "Bad Image::tag"}, "'Bad Image::tag' is not a valid image reference"),
        ({"namespace": "Team_A"}, "namespace 'Team_A'"),
        ({"namespace": "a" * 64}, "not a DNS-1123 label"),
        ({"labels": {"run id": "x"}}, "label key 'run id'"),
    ],
)
def test_bad_specs_never_reach_the_server(start_fake, changes, complaint) -> None:
    fake = start_fake()
    with pytest.raises(LaunchError, match=complaint):
        launch(fake, make_spec(**changes))
    assert fake.requests == []


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"backend": "mpijob"}, "backend 'mpijob'"),
        ({"delete_policy": "sometimes"}, "delete_policy 'sometimes'"),
        ({"poll_s": 0}, "poll_s = 0"),
        ({"timeout_s": -1}, "timeout_s = -1"),
        ({"backoff_limit": -1}, "backoff_limit"),
        ({"pod_overrides": {"affinity": {}}}, "affinity"),
        ({"backend": "trainjob", "trainer_version": "v2.0"}, "'v2.0' is not supported"),
    ],
)
def test_bad_options_never_reach_the_server(start_fake, options, complaint) -> None:
    fake = start_fake()
    backend = options.pop("backend", "pytorchjob")
    with pytest.raises(LaunchError, match=complaint):
        launch(fake, make_spec(), backend, **options)
    assert fake.requests == []


def test_reserved_env_never_reaches_the_server(start_fake) -> None:
    fake = start_fake()
    with pytest.raises(LaunchError, match="PET_NODE_RANK"):
        launch(fake, make_spec(env={"PET_NODE_RANK": "0"}), "trainjob")
    assert fake.requests == []


def test_launch_render_prints_the_job_the_launcher_creates(capsys):
    """`kshot launch render` is a dry run of a launch: same object, same validation."""
    import yaml as _yaml

    from kshot.cli import main
    from kshot.launch.jobs import render_job

    argv = [
        "launch",
        "render",
        "--backend",
        "pytorchjob",
        "--stage",
        "train",
        "--workers",
        "3",
        "--gpus-per-worker",
        "8",
        "--image",
        "ghcr.io/acme/kshot:1.0",
        "--namespace",
        "team-a",
        "--set",
        "k=4",
        "--input",
        "split=gs://b/split.json",
        "--input",
        "checkpoint=gs://b/warm",
        "--output",
        "checkpoint=gs://b/train",
        "--no-launch-defaults",
    ]
    assert main(argv) == 0
    printed = _yaml.safe_load(capsys.readouterr().out)
    from kshot.config import load_config

    spec = LaunchSpec(
        stage="train",
        # the config the pods read says what the job is: 3 pods of 8 GPUs
        config={**load_config({"k": 4}).to_dict(), "workers": 3, "gpus_per_worker": 8},
        inputs={"split": "gs://b/split.json", "checkpoint": "gs://b/warm"},
        outputs={"checkpoint": "gs://b/train"},
        workers=3,
        gpus_per_worker=8,
        image="ghcr.io/acme/kshot:1.0",
        namespace="team-a",
        cpu=load_config({}).job_cpu,
        memory=load_config({}).job_memory,
    )
    assert printed == render_job(spec, "pytorchjob")
    assert printed["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2

    assert main([*argv[:7], "0", *argv[8:]]) == 2
    assert "workers = 0" in capsys.readouterr().err
    # nothing renders that its pods could not run: a missing artifact, a local path
    assert main([*argv[:-3], argv[-1]]) == 2
    assert "needs --output checkpoint=gs://BUCKET/" in capsys.readouterr().err
    assert main([*argv[:-2], "checkpoint=runs/train", argv[-1]]) == 2
    assert "--output checkpoint='runs/train': the job's pods cannot see a local path" in (
        capsys.readouterr().err
    )


def _render_args(namespace: str) -> list[str]:
    return [
        *("launch", "render", "--stage", "train", "--image", "ghcr.io/acme/kshot:1.0"),
        *("--namespace", namespace, "--input", "split=gs://b/split.json"),
        *("--input", "checkpoint=gs://b/warm", "--output", "checkpoint=gs://b/train"),
    ]


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    cluster = {"name": "fake", "cluster": {"server": server}}
    context = {"name": "fake", "context": {"cluster": "fake", "user": "me"}}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "contexts": [context],
                "current-context": "fake",
                "users": [{"name": "me", "user": {"token": "t"}}],
            }
        )
    )
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_launch_render_applies_the_launch_defaults_it_can_read(
    start_fake, tmp_path, monkeypatch, capsys, backend
) -> None:
    from kshot.cli import main

    limits = {"limits": {"memory": "32Gi"}}
    defaults = {**GPU_OVERRIDES, "resources": limits, "imagePullSecrets": PULL_SECRETS}
    fake = start_fake(
        config_maps={
            ("team-a", "kshot-launch-defaults"): {k: yaml.safe_dump(v) for k, v in defaults.items()}
        }
    )
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, fake.host)))
    argv = [*_render_args("team-a"), "--backend", backend]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = yaml.safe_load(captured.out)
    assert "applied the launch defaults of ConfigMap team-a/kshot-launch-defaults" in captured.err
    assert main([*argv, "--no-launch-defaults"]) == 0
    bare = yaml.safe_load(capsys.readouterr().out)
    assert printed != bare
    pod = (
        printed["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        if backend == "pytorchjob"
        else printed["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
            "replicatedJobs"
        ][0]["template"]["spec"]["template"]["spec"]
    )
    assert pod["tolerations"] == GPU_OVERRIDES["tolerations"]
    assert pod["serviceAccountName"] == "kshot-worker"
    assert pod["imagePullSecrets"] == PULL_SECRETS
    resources = (
        pod["containers"][0]["resources"]
        if backend == "pytorchjob"
        else printed["spec"]["trainer"]["resourcesPerNode"]
    )
    assert resources == {"requests": {"cpu": "2", "memory": "8Gi"}, **limits}  # config's requests
    validate_against_crd(printed)

    # a namespace without the ConfigMap: rendered without it, and said so
    assert main([*_render_args("team-b"), "--backend", backend]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["metadata"]["namespace"] == "team-b"
    assert "rendered without the launch defaults of ConfigMap team-b/kshot-launch-defaults" in (
        captured.err
    )
    assert "is missing" in captured.err


def test_launch_render_refuses_launch_defaults_a_launch_would_refuse(
    start_fake, tmp_path, monkeypatch, capsys
) -> None:
    from kshot.cli import main

    fake = start_fake(
        config_maps={("team-a", "kshot-launch-defaults"): {"affinity": "nodeAffinity: {}"}}
    )
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, fake.host)))
    assert main(_render_args("team-a")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ConfigMap team-a/kshot-launch-defaults: pod overrides affinity unknown" in captured.err


def test_launch_render_without_a_cluster_says_it_rendered_without_the_defaults(
    tmp_path, monkeypatch, capsys
) -> None:
    from kshot.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert main(_render_args("team-a")) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["kind"] == "PyTorchJob"
    assert "rendered without the launch defaults" in captured.err
    assert "no cluster credentials" in captured.err


# The Trainer release, read from the cluster.


@pytest.mark.parametrize("version", TRAINER_VERSIONS)
@pytest.mark.parametrize("crd_forbidden", [False, True], ids=["crd", "openapi"])
def test_the_trainjob_fits_the_trainer_the_cluster_runs(start_fake, version, crd_forbidden) -> None:
    """The CRD's schema (or, where reading CRDs is forbidden, the published OpenAPI) decides."""
    fake = start_fake(trainer_version=version, crd_forbidden=crd_forbidden)
    spec = make_spec()
    job, lines = launch(fake, spec, "trainjob")
    expected = render_job(spec, "trainjob", timeout_s=FAST["timeout_s"], trainer_version=version)
    assert fake.created_bodies() == [expected]
    assert [line for line in lines if line.startswith(("epoch", "done"))] == [
        "epoch 1/1 loss 0.5",
        "done",
    ]
    assert fake.deleted(job["metadata"]["name"])


def test_a_named_trainer_version_is_not_looked_up(start_fake) -> None:
    fake = start_fake(trainer_version="v2.1")
    launch(fake, make_spec(), "trainjob", trainer_version="v2.1")
    assert not any(
        "customresourcedefinitions" in r.path or "openapi" in r.path for r in fake.requests
    )
    (body,) = fake.created_bodies()
    assert "podTemplateOverrides" in body["spec"]


def test_a_cluster_without_the_trainer_is_named(start_fake) -> None:
    fake = start_fake(trainer_version=None)
    with pytest.raises(LaunchError, match="no CustomResourceDefinition trainjobs.trainer"):
        launch(fake, make_spec(), "trainjob")
    assert fake.jobs == {}


def test_a_v2_3_job_on_a_v2_1_cluster_is_refused_not_pruned(start_fake) -> None:
    """Named wrongly, the job is refused by the (strict) fake where a real server would prune."""
    fake = start_fake(trainer_version="v2.1")
    with pytest.raises(LaunchError, match="422"):
        launch(fake, make_spec(), "trainjob", trainer_version="v2.3")
    assert fake.rejected


# The launch defaults ConfigMap.


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_launch_defaults_configmap_refuses_the_launch_with_the_fix(
    start_fake, backend
) -> None:
    fake = start_fake()
    with pytest.raises(LaunchError) as raised:
        launch(fake, make_spec(), backend, launch_defaults="kshot-launch-defaults")
    message = str(raised.value)
    assert "ConfigMap kubeflow-user/kshot-launch-defaults is missing" in message
    assert "kubectl apply -k manifests/overlays/gpu" in message
    assert "launch_defaults=None" in message
    assert fake.jobs == {}
    # Opting out on purpose launches with no overrides.
    job, _ = launch(fake, make_spec(), backend, launch_defaults=None)
    assert fake.deleted(job["metadata"]["name"])


@pytest.mark.parametrize("version", TRAINER_VERSIONS)
def test_launch_render_prints_the_trainjob_for_the_named_trainer(capsys, version: str) -> None:
    from kshot.cli import main
    from kshot.config import load_config

    argv = ["launch", "render", "--backend", "trainjob", "--trainer-version", version]
    argv += ["--stage", "train", "--image", "ghcr.io/acme/kshot:1.0", "--set", "k=4"]
    argv += ["--input", "split=gs://b/split.json", "--input", "checkpoint=gs://b/warm"]
    argv += ["--output", "checkpoint=gs://b/train", "--no-launch-defaults"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    spec = LaunchSpec(
        stage="train",
        config=load_config({"k": 4}).to_dict(),
        inputs={"split": "gs://b/split.json", "checkpoint": "gs://b/warm"},
        outputs={"checkpoint": "gs://b/train"},
        image="ghcr.io/acme/kshot:1.0",
        cpu="2",
        memory="8Gi",
    )
    assert printed == render_job(spec, "trainjob", trainer_version=version)
    validate_against_crd(printed, version)


# Scheduling: requests, the Kueue queue and priority.

QUEUED = {"queue_name": "team-a-gpus", "priority_class": "high-priority"}


def _pod_templates(job: dict[str, Any]) -> list[dict[str, Any]]:
    if job["kind"] == "PyTorchJob":
        return [r["template"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    if "podTemplateOverrides" in job["spec"]:
        return job["spec"]["podTemplateOverrides"]
    (replicated,) = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ]
    return [replicated["template"]["spec"]["template"]]


@pytest.mark.parametrize(
    ("backend", "version"), [("pytorchjob", "v2.3"), *(("trainjob", v) for v in TRAINER_VERSIONS)]
)
def test_launch_render_shows_the_requests_queue_and_priority(
    capsys, backend: str, version: str
) -> None:
    from kshot.cli import main

    argv = [*_render_args("team-a"), "--backend", backend, "--trainer-version", version]
    argv += ["--no-launch-defaults", "--set", "job_cpu=6", "--set", "job_memory=24Gi"]
    argv += ["--set", f"queue_name={QUEUED['queue_name']}"]
    argv += ["--set", f"priority_class={QUEUED['priority_class']}"]
    assert main(argv) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    validate_against_crd(job, version)
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert labels["kueue.x-k8s.io/priority-class"] == "high-priority"
    for template in _pod_templates(job):  # Kueue admits the job, not its pods one by one
        assert not any(key.startswith("kueue.x-k8s.io/") for key in template["metadata"]["labels"])
    assert _requests(job) == {"cpu": "6", "memory": "24Gi"}

    # not queued by default, but requesting CPU and memory all the same
    argv = [*_render_args("team-a"), "--backend", backend, "--trainer-version", version]
    assert main([*argv, "--no-launch-defaults"]) == 0
    plain = yaml.safe_load(capsys.readouterr().out)
    assert not any(key.startswith("kueue.x-k8s.io/") for key in plain["metadata"]["labels"])
    assert _requests(plain) == {"cpu": "2", "memory": "8Gi"}  # the config's defaults


def _requests(job: dict[str, Any]) -> dict[str, str]:
    """What every pod of the job requests (they all request the same)."""
    if job["kind"] == "TrainJob":
        return job["spec"]["trainer"]["resourcesPerNode"]["requests"]
    (requests, *others) = [
        replica["template"]["spec"]["containers"][0]["resources"]["requests"]
        for replica in job["spec"]["pytorchReplicaSpecs"].values()
    ]
    assert all(other == requests for other in others)
    return requests


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("job_cpu=lots", "config key 'job_cpu' from --set: 'lots' is not a positive Kubernetes"),
        ("job_memory=0", "config key 'job_memory' from --set: '0' is not a positive"),
        ("queue_name=Team_GPUs", "config key 'queue_name' from --set: 'Team_GPUs' is not a name"),
        ("priority_class=high", "'priority_class' from --set: 'high' orders jobs in a Kueue queue"),
    ],
)
def test_bad_scheduling_keys_are_named_with_their_source(
    capsys, setting: str, message: str
) -> None:
    from kshot.cli import main

    argv = [*_render_args("team-a"), "--no-launch-defaults", "--set", setting]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_queued_job_is_waited_for_beyond_the_scheduling_timeout(start_fake, backend) -> None:
    """Kueue holds a job suspended, without pods, until its queue admits it: that is no stuck
    job; the pods' start is timed from the admission."""
    queued = ["created", *["queued"] * 8, "running", "succeeded"]
    fake = start_fake(scenario=queued)
    spec = make_spec(**QUEUED)
    job, lines = launch(fake, spec, backend, poll_s=0.02, schedule_timeout_s=0.05)
    assert any("is suspended: waiting for its queue to admit it" in line for line in lines)
    assert any(line.endswith("was admitted") for line in lines)
    assert fake.deleted(job["metadata"]["name"])
    (body,) = fake.created_bodies()
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUED["queue_name"]

    # without a queue, a job that never gets pods is still reported after the scheduling timeout
    stuck = start_fake(scenario=["created"])
    with pytest.raises(LaunchError, match="never started"):
        launch(stuck, make_spec(), backend, poll_s=0.02, schedule_timeout_s=0.05)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"requests": {"cpu": "3"}}, "resources.requests.cpu = '3' of the pod overrides"),
        ({"limits": {"memory": "4Gi"}}, "resources.limits.memory = '4Gi' of the pod overrides"),
    ],
)
def test_overrides_that_contradict_the_configs_requests_are_refused(
    start_fake, resources: dict[str, Any], message: str
) -> None:
    fake = start_fake(
        config_maps={
            ("kubeflow-user", "kshot-launch-defaults"): {"resources": yaml.safe_dump(resources)}
        }
    )
    spec = make_spec(cpu="2", memory="8Gi")
    with pytest.raises(LaunchError, match=re.escape(message)):
        launch(fake, spec, "pytorchjob", launch_defaults="kshot-launch-defaults")
    assert fake.jobs == {}
    # the same amounts agree: the job is created
    agreeing = {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}}
    job = render_pytorchjob(spec, pod_overrides={"resources": agreeing})
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
