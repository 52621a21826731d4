"""The Kubernetes launcher: what it renders fits the Kubeflow CRDs, and every way a job ends is
reported and cleaned up as promised — against a fake API server driven by the real client."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from kshot.launch import kube
from kshot.launch.kube import JobCancelled, render_job, run_job
from kshot.launch.pytorchjob import render_pytorchjob
from kshot.launch.spec import LaunchError, LaunchSpec
from kshot.launch.trainjob import render_trainjob
from kshot.stages import HEAVY_STAGES
from tests.fake_kube import (
    FAILURE_MESSAGE,
    FAILURE_REASON,
    SHARED_KUBEFLOW,
    UNSCHEDULABLE_MESSAGE,
    FakeKube,
    validate_against_crd,
)

pytestmark = pytest.mark.skipif(
    not SHARED_KUBEFLOW.is_dir(),
    reason=f"the Kubeflow CRDs are not at {SHARED_KUBEFLOW} (the shared/ checkout is absent)",
)

RUN_LABEL = {"pipelines.kubeflow.org/run_id": "3f2a9c1e-run"}
GPU_OVERRIDES = {
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
    "serviceAccountName": "kshot-runner",
}
BACKENDS = ("pytorchjob", "trainjob")
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
    for overrides in (None, GPU_OVERRIDES):
        validate_against_crd(render_pytorchjob(spec, pod_overrides=overrides))
        validate_against_crd(render_trainjob(spec, pod_overrides=overrides))


@pytest.mark.parametrize(("workers", "gpus"), [(1, 0), (2, 1), (4, 8)])
def test_pytorchjob_is_one_master_and_the_rest_workers(workers: int, gpus: int) -> None:
    spec = make_spec(workers=workers, gpus_per_worker=gpus)
    job = render_pytorchjob(spec, backoff_limit=5, clean_pod_policy="Running")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas", 0) == workers - 1
    assert ("Worker" in replicas) == (workers > 1)
    assert job["spec"]["nprocPerNode"] == str(max(1, gpus))
    assert job["spec"]["runPolicy"] == {"backoffLimit": 5, "cleanPodPolicy": "Running"}
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
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


def test_trainjob_runs_torchrun_on_the_torch_distributed_runtime() -> None:
    spec = make_spec(workers=4, gpus_per_worker=8)
    job = render_trainjob(spec, pod_overrides=GPU_OVERRIDES)
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:3] == ["-m", "kshot.worker", "train"]
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8}}
    (override,) = job["spec"]["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "trainer-node"}]
    assert override["tolerations"] == GPU_OVERRIDES["tolerations"]
    assert override["nodeSelector"] == GPU_OVERRIDES["nodeSelector"]
    assert job["spec"]["labels"] == job["metadata"]["labels"]


def test_labels_carry_the_run_id_app_and_stage() -> None:
    labels = render_pytorchjob(make_spec(stage="search"))["metadata"]["labels"]
    assert labels == {**RUN_LABEL, "app.kubernetes.io/name": "kshot", "kshot/stage": "search"}


def test_pod_overrides_reach_every_pod_template() -> None:
    job = render_pytorchjob(make_spec(workers=3), pod_overrides=GPU_OVERRIDES)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["tolerations"] == GPU_OVERRIDES["tolerations"]
        assert pod["nodeSelector"] == GPU_OVERRIDES["nodeSelector"]
        assert pod["serviceAccountName"] == "kshot-runner"
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
    assert fake.created_bodies() == [render_job(spec, backend)]


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

    monkeypatch.setattr(kube.time, "sleep", interrupt)
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
    assert "kshot-runner" in message and "default-editor" in message
    assert fake.jobs == {}
    assert not any(request.method == "DELETE" for request in fake.requests)


def test_an_existing_job_of_the_same_name_is_left_alone(start_fake) -> None:
    fake = start_fake()
    launch(fake, make_spec(name="kshot-train-mine"), delete_policy="never")
    with pytest.raises(LaunchError, match="already exists"):
        launch(fake, make_spec(name="kshot-train-mine"))
    assert not fake.deleted("kshot-train-mine")


def test_launch_defaults_configmap_places_the_pods(start_fake) -> None:
    data = {
        "tolerations": "- {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}\n",
        "nodeSelector": "cloud.google.com/gke-accelerator: nvidia-tesla-a100\n",
        "serviceAccountName": "kshot-runner",
    }
    fake = start_fake(config_maps={("kubeflow-user", "kshot-launch-defaults"): data})
    spec = make_spec()
    launch(fake, spec, launch_defaults="kshot-launch-defaults")
    assert fake.created_bodies() == [render_pytorchjob(spec, pod_overrides=GPU_OVERRIDES)]


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
    from kshot.launch.kube import render_job

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
    ]
    assert main(argv) == 0
    printed = _yaml.safe_load(capsys.readouterr().out)
    from kshot.config import load_config

    spec = LaunchSpec(
        stage="train",
        config=load_config({"k": 4}).to_dict(),
        inputs={"split": "gs://b/split.json", "checkpoint": "gs://b/warm"},
        outputs={"checkpoint": "gs://b/train"},
        workers=3,
        gpus_per_worker=8,
        image="ghcr.io/acme/kshot:1.0",
        namespace="team-a",
    )
    assert printed == render_job(spec, "pytorchjob")
    assert printed["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2

    assert main([*argv[:7], "0", *argv[8:]]) == 2
    assert "workers = 0" in capsys.readouterr().err
