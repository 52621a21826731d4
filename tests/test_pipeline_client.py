"""`kshot pipeline upload|run` and the rerun workflow, against a recording KFP API on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kshot.cli import main
from kshot.config import Config
from kshot.launch import BACKENDS
from kshot.pipeline.cli import compile_pipeline, run_arguments
from tests.recording_kfp_server import RecordingKfpServer, serve

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token"
STEP_IMAGE = "registry.example/kshot-cpu:1"
JOB_IMAGE = "registry.example/kshot:1"
IMAGES = ["--step-image", STEP_IMAGE, "--job-image", JOB_IMAGE]
WORKFLOWS = ROOT / ".github" / "workflows"


@pytest.fixture
def kfp_server() -> Iterator[RecordingKfpServer]:
    """A recording KFP API on 127.0.0.1 that expects the bearer token :data:`TOKEN`."""
    with serve(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("package") / "pipeline.yaml"
    compile_pipeline(str(path), step_image=STEP_IMAGE, job_image=JOB_IMAGE)
    return str(path)


def _host(server: RecordingKfpServer) -> list[str]:
    return ["--host", server.url, "--existing-token", TOKEN, "--allow-insecure-token"]


def _spec(run: dict) -> dict:
    """The pipeline spec a run was created with (kfp sends it beside the platform spec)."""
    return run["pipeline_spec"]["pipeline_spec"]


def _caching(spec: dict) -> dict[str, bool]:
    """Every step (a task that runs a container) of every DAG → whether KFP may serve it from
    its cache."""
    components = spec["components"]
    return {
        f"{dag_name}/{name}": task.get("cachingOptions", {}).get("enableCache", False)
        for dag_name, dag in [("root", spec["root"]["dag"])]
        + [(n, c["dag"]) for n, c in components.items() if "dag" in c]
        for name, task in dag["tasks"].items()
        if "executorLabel" in components[task["componentRef"]["name"]]
    }


def test_upload_creates_the_pipeline_then_versions(
    kfp_server: RecordingKfpServer, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pipeline", "upload", *_host(kfp_server), "--package", package]) == 0
    (pipeline,) = kfp_server.pipelines.values()
    assert pipeline["display_name"] == "kshot-nas"
    (upload,) = kfp_server.calls("POST", "/pipelines/upload")
    assert upload.headers["authorization"] == f"Bearer {TOKEN}"
    assert b"kshot-nas" in upload.body and b"comp-train" in upload.body
    assert "uploaded pipeline" in capsys.readouterr().out

    args = ["pipeline", "upload", *_host(kfp_server), "--package", package, "--version", "v2"]
    assert main(args) == 0
    (added,) = kfp_server.calls("POST", "/pipelines/upload_version")
    assert added.query["pipelineid"] == [pipeline["pipeline_id"]]
    assert added.query["name"] == ["v2"]
    assert [v["display_name"] for v in kfp_server.versions[pipeline["pipeline_id"]]] == [
        "kshot-nas",
        "v2",
    ]
    assert "uploaded version" in capsys.readouterr().out


def test_run_sends_k_and_the_token_from_the_environment(
    kfp_server: RecordingKfpServer,
    package: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    args = [
        "pipeline",
        "run",
        "--host",
        kfp_server.url,
        "--allow-insecure-token",
        "--package",
        package,
        "--set",
        "k=4",
        "--set",
        "channels=4",
        "--set",
        "launcher=pytorchjob",
        "--experiment",
        "ks",
    ]
    assert main(args) == 0
    (run,) = kfp_server.runs.values()
    parameters = run["runtime_config"]["parameters"]
    assert parameters["k"] == 4
    assert parameters["launcher"] == "pytorchjob"
    assert yaml.safe_load(parameters["extra_config"]) == {"channels": 4}
    assert "epochs" not in parameters  # defaults stay the pipeline's
    assert _spec(run)["pipelineInfo"]["name"] == "kshot-nas"
    (experiment,) = kfp_server.experiments.values()
    assert (
        experiment["display_name"] == "ks" and run["experiment_id"] == experiment["experiment_id"]
    )
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp_server.requests)
    assert "k=4" in capsys.readouterr().out


def test_run_an_uploaded_pipeline_by_name(kfp_server: RecordingKfpServer, package: str) -> None:
    assert main(["pipeline", "upload", *_host(kfp_server), "--package", package]) == 0
    assert (
        main(["pipeline", "upload", *_host(kfp_server), "--package", package, "--version", "newer"])
        == 0
    )
    assert (
        main(
            [
                "pipeline",
                "run",
                *_host(kfp_server),
                "--name",
                "kshot-nas",
                "--set",
                "k=2",
                "--namespace",
                "team-a",
            ]
        )
        == 0
    )
    (run,) = kfp_server.runs.values()
    (pipeline_id,) = kfp_server.versions
    newest = kfp_server.versions[pipeline_id][-1]
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": newest["pipeline_version_id"],
    }
    assert "pipeline_spec" not in run or not run["pipeline_spec"]
    (experiment,) = kfp_server.experiments.values()
    assert experiment["namespace"] == "team-a"


def test_a_namespace_uploads_and_runs_its_own_pipeline(
    kfp_server: RecordingKfpServer, package: str
) -> None:
    upload = ["pipeline", "upload", *_host(kfp_server), "--package", package]
    assert main(upload) == 0  # a shared pipeline of the same name
    assert main([*upload, "--namespace", "team-a"]) == 0
    assert main([*upload, "--namespace", "team-a", "--version", "v2"]) == 0
    owned = {p["namespace"]: p["pipeline_id"] for p in kfp_server.pipelines.values()}
    assert sorted(owned) == ["", "team-a"]
    assert [v["display_name"] for v in kfp_server.versions[owned["team-a"]]] == ["kshot-nas", "v2"]
    lookups = [r.query.get("namespace") for r in kfp_server.calls("GET", "/pipelines")]
    assert lookups == [None, ["team-a"], ["team-a"]]

    run = ["pipeline", "run", *_host(kfp_server), "--name", "kshot-nas", "--namespace", "team-a"]
    assert main(run) == 0
    (created,) = kfp_server.runs.values()
    assert created["pipeline_version_reference"]["pipeline_id"] == owned["team-a"]


def _ids(printed: str) -> dict[str, str]:
    """``pipeline_id`` and ``version_id`` from what ``kshot pipeline upload`` printed."""
    return dict(word.split("=", 1) for word in printed.split() if "_id=" in word)


def test_compile_once_upload_that_file_and_run_that_version(
    kfp_server: RecordingKfpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's path: the file compiled is the file uploaded is the version run."""
    package = tmp_path / "kshot-nas.yaml"
    assert main(["pipeline", "compile", "--output", str(package), *IMAGES]) == 0
    capsys.readouterr()
    upload = ["pipeline", "upload", *_host(kfp_server), "--package", str(package)]
    assert main([*upload, "--version", "v1"]) == 0
    first = _ids(capsys.readouterr().out)
    assert main([*upload, "--version", "v2"]) == 0  # a newer version: runs must not drift to it
    capsys.readouterr()
    (uploaded, *_) = [r.body for r in kfp_server.requests if r.path.endswith("/pipelines/upload")]
    assert package.read_bytes() in uploaded

    run = ["pipeline", "run", *_host(kfp_server), "--set", "k=2"]
    assert (
        main([*run, "--pipeline-id", first["pipeline_id"], "--version-id", first["version_id"]])
        == 0
    )
    assert main([*run, "--name", "kshot-nas", "--version", "v1"]) == 0
    references = [r["pipeline_version_reference"] for r in kfp_server.runs.values()]
    assert (
        references
        == [{"pipeline_id": first["pipeline_id"], "pipeline_version_id": first["version_id"]}] * 2
    )
    names = [v["display_name"] for v in kfp_server.versions[first["pipeline_id"]]]
    assert names == ["kshot-nas", "v1", "v2"]  # KFP names a first version after its pipeline
    assert main([*run, "--name", "kshot-nas", "--version", "v9"]) == 2
    assert "has no version named 'v9'" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["upload", "run"])
def test_upload_and_run_without_a_package_compile_with_the_images_or_refuse(
    kfp_server: RecordingKfpServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    action: str,
) -> None:
    for variable in ("KSHOT_STEP_IMAGE", "KSHOT_JOB_IMAGE", "KSHOT_IMAGE"):
        monkeypatch.delenv(variable, raising=False)
    args = ["pipeline", action, *_host(kfp_server)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "$KSHOT_STEP_IMAGE" in error and "$KSHOT_JOB_IMAGE" in error
    assert kfp_server.requests == []

    monkeypatch.setenv("KSHOT_STEP_IMAGE", STEP_IMAGE)
    monkeypatch.setenv("KSHOT_JOB_IMAGE", JOB_IMAGE)
    assert main(args) == 0
    sent = [r.body for r in kfp_server.requests if r.method == "POST"]
    spec = (
        next(yaml.safe_load_all(sent[0].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]))
        if action == "upload"
        else _spec(next(iter(kfp_server.runs.values())))
    )
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {STEP_IMAGE}
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == JOB_IMAGE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--package", "p.yaml", "--name", "kshot-nas"], "--package and --name: give one"),
        (["--pipeline-id", "p-1", "--name", "kshot-nas"], "--pipeline-id and --name: give one"),
        (["--version", "v1"], "--version names a version of an uploaded pipeline"),
        (["--name", "n", "--version", "v", "--version-id", "i"], "--version-id and --version"),
    ],
)
def test_a_run_that_names_its_pipeline_ambiguously_is_refused_before_any_request(
    kfp_server: RecordingKfpServer,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert main(["pipeline", "run", *_host(kfp_server), *args]) == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


def test_host_and_token_come_from_kfps_environment_variables(
    kfp_server: RecordingKfpServer,
    package: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.url)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    args = ["pipeline", "upload", "--allow-insecure-token", "--package", package]
    assert main(args) == 0
    assert kfp_server.pipelines
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp_server.requests)

    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "absent"))
    assert main(args) == 2
    assert "$KF_PIPELINES_SA_TOKEN_PATH names" in capsys.readouterr().err
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT")
    assert main(args) == 2
    assert "give --host URL or set $KF_PIPELINES_ENDPOINT" in capsys.readouterr().err


def test_explicit_values_are_sent_even_at_the_local_defaults(tmp_path: Path) -> None:
    defaults = Config()
    assert run_arguments([], [f"k={defaults.k}"]) == {"k": defaults.k}
    config = tmp_path / "run.yaml"
    config.write_text(f"epochs: {defaults.epochs}\nchannels: {defaults.channels}\n")
    arguments = run_arguments([str(config)], [f"seed={defaults.seed}"])
    assert arguments == {
        "epochs": defaults.epochs,
        "seed": defaults.seed,
        "extra_config": f'{{"channels": {defaults.channels}}}',
    }


@pytest.mark.parametrize(
    "root",
    [
        "gs://kshot-runs/pipeline-root",
        "s3://kshot-runs/pipeline-root",
        "minio://mlpipeline/v2/artifacts",
    ],
)
def test_run_sends_the_pipeline_root(
    kfp_server: RecordingKfpServer, package: str, root: str
) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--package", package, "--pipeline-root", root]
    assert main(args) == 0
    (run,) = kfp_server.runs.values()
    assert run["runtime_config"]["pipeline_root"] == root


@pytest.mark.parametrize("root", ["oss://kshot-runs/pipeline-root", "/mnt/kshot-runs"])
def test_a_pipeline_root_outside_the_object_stores_is_refused_before_any_request(
    kfp_server: RecordingKfpServer, package: str, root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--package", package, "--pipeline-root", root]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--pipeline-root {root!r}" in err and "minio://BUCKET/PREFIX" in err
    assert kfp_server.requests == []


def test_a_sweep_run_takes_k_values(kfp_server: RecordingKfpServer) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--sweep", "--set", "k_values=[1, 2, 4]"]
    assert main([*args, *IMAGES]) == 0
    (run,) = kfp_server.runs.values()
    assert run["runtime_config"]["parameters"] == {"k_values": [1, 2, 4]}
    assert _spec(run)["pipelineInfo"]["name"] == "kshot-nas-k-sweep"


@pytest.mark.parametrize("flag", ["--no-caching", "--enable-caching"])
def test_the_caching_flag_reaches_every_step_of_every_dag(
    kfp_server: RecordingKfpServer, package: str, flag: str
) -> None:
    compiled = _caching(next(yaml.safe_load_all(Path(package).read_text())))
    assert len(set(compiled.values())) == 1  # as compiled: the cache on everywhere
    assert main(["pipeline", "run", *_host(kfp_server), "--package", package, flag]) == 0
    (run,) = kfp_server.runs.values()
    sent = _caching(_spec(run))
    assert len(sent) == len(compiled) > len(_spec(run)["root"]["dag"]["tasks"])
    assert set(sent.values()) == {flag == "--enable-caching"}
    assert run["pipeline_spec"]["platform_spec"]  # the steps' placement travels along


def test_without_a_caching_flag_the_run_keeps_the_compiled_caching(
    kfp_server: RecordingKfpServer, package: str
) -> None:
    assert main(["pipeline", "run", *_host(kfp_server), "--package", package]) == 0
    (run,) = kfp_server.runs.values()
    assert _caching(_spec(run)) == _caching(next(yaml.safe_load_all(Path(package).read_text())))


def test_a_caching_flag_for_an_uploaded_pipeline_is_refused_before_any_request(
    kfp_server: RecordingKfpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--pipeline-id", "p-1", "--no-caching"]
    assert main(args) == 2
    assert "--no-caching applies to a pipeline compiled now" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_run_sends_the_steps_placement_and_size(
    kfp_server: RecordingKfpServer, package: str
) -> None:
    toleration = {"key": "pool", "operator": "Equal", "value": "pipelines", "effect": "NoSchedule"}
    args = [
        *("pipeline", "run", *_host(kfp_server), "--package", package),
        *("--set", f"step_tolerations=[{json.dumps(toleration)}]"),
        *("--set", "step_node_selector={pool: pipelines}"),
        *("--set", "step_cpu=8", "--set", "step_memory=32Gi"),
    ]
    assert main(args) == 0
    (run,) = kfp_server.runs.values()
    assert run["runtime_config"]["parameters"] == {
        "step_tolerations": [toleration],
        "step_node_selector": {"pool": "pipelines"},
        "step_cpu": "8",
        "step_memory": "32Gi",
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("step_tolerations=[{taint: gpu}]", "--set step_tolerations: [{'taint': 'gpu'}] is not"),
        ("step_tolerations={key: a}", "--set step_tolerations: {'key': 'a'} is not a list"),
        ("step_node_selector=[pool]", "--set step_node_selector: ['pool'] is not a mapping"),
        ("step_memory=lots", "pipeline parameter 'step_memory': 'lots' is not a positive"),
    ],
)
def test_bad_step_placement_or_size_is_refused_before_any_request(
    kfp_server: RecordingKfpServer,
    package: str,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    message: str,
) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--package", package, "--set", setting]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


def test_a_bad_parameter_is_refused_before_any_request(
    kfp_server: RecordingKfpServer, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--package", package, "--set", "k=0"]
    assert main(args) == 2
    assert "config key 'k' from --set: 0 must be >= 1" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_a_bad_launcher_is_refused_before_any_request(
    kfp_server: RecordingKfpServer, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pipeline", "run", *_host(kfp_server), "--package", package, "--set", "launcher=slurm"]
    assert main(args) == 2
    assert "pipeline parameter 'launcher': 'slurm'" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_a_wrong_token_fails_in_one_line(
    kfp_server: RecordingKfpServer, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "pipeline",
        "upload",
        "--host",
        kfp_server.url,
        "--allow-insecure-token",
        "--existing-token",
        "stale",
        "--package",
        package,
    ]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert kfp_server.url in error and "HTTP 401" in error
    assert kfp_server.pipelines == {}


@pytest.mark.parametrize("action", ["upload", "run"])
def test_the_token_is_not_sent_over_http_unless_allowed(
    action: str,
    kfp_server: RecordingKfpServer,
    package: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert kfp_server.url.startswith("http://")
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    args = ["pipeline", action, "--host", kfp_server.url, "--package", package]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "refusing to send the bearer token over an unencrypted connection" in error
    assert "--allow-insecure-token" in error
    assert kfp_server.requests == []
    assert main([*args, "--allow-insecure-token"]) == 0
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp_server.requests)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("action", ["upload", "run"])
def test_an_unreachable_host_fails_in_one_line(
    action: str, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["pipeline", action, "--host", url, "--package", package]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("kshot pipeline: error: Kubeflow Pipelines at " + url)
    assert "\n" not in error and "Traceback" not in error
    assert "refused" in error.lower()


# What submitting must not load: torch, the storage clients, the plotting and numeric stack, and
# kfp-kubernetes (the rerun workflow installs kshot without its dependencies, plus kfp).
_NOT_INSTALLED_FOR_SUBMITTING = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "sklearn",
    "pymoo",
    "pyarrow",
    "PIL",
    "matplotlib",
    "tqdm",
    "boto3",
    "botocore",
    "kfp.kubernetes",
)


def _submitting_python(folder: Path) -> str:
    """A ``python`` for the rerun script in which the packages that submitting needs not are
    missing: importing any of them fails, as where the workflow installed only kfp."""
    blocker = folder / "without_heavy_packages.py"
    blocker.write_text(
        "import runpy, sys\n"
        f"for name in {_NOT_INSTALLED_FOR_SUBMITTING!r}:\n"
        "    sys.modules[name] = None\n"
        "assert sys.argv[1] == '-m', sys.argv\n"
        "module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]\n"
        "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
    )
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{blocker}" "$@"\n')
    python.chmod(0o755)
    return str(python)


def _upload_version(server: RecordingKfpServer, package: str, version: str) -> dict[str, str]:
    """Upload ``package`` as ``version`` of kshot-nas; its ids."""
    args = ["pipeline", "upload", *_host(server), "--package", package, "--version", version]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(args) == 0
    return _ids(stdout.getvalue())


def _rerun(
    server_url: str, *args: str, python: str = sys.executable, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "KFP_HOST": server_url,
        "KFP_TOKEN": TOKEN,
        "KSHOT_ALLOW_INSECURE_TOKEN": "1",  # the recording server is http://127.0.0.1
        "PYTHON": python,
        "GITHUB_SHA": "0123456789abcdef",
        "PIPELINE": "kshot-nas",
        **env,
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "submit_reruns.sh"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_the_rerun_script_runs_an_uploaded_version_once_per_k(
    kfp_server: RecordingKfpServer, package: str, tmp_path: Path
) -> None:
    v1 = _upload_version(kfp_server, package, "v1")
    _upload_version(kfp_server, package, "v2")
    done = _rerun(
        kfp_server.url,
        *("1, 2,4", "--experiment", "reruns"),
        python=_submitting_python(tmp_path),
        PIPELINE_VERSION="v1",
    )
    assert done.returncode == 0, done.stderr
    runs = list(kfp_server.runs.values())
    assert [r["runtime_config"]["parameters"] for r in runs] == [{"k": k} for k in (1, 2, 4)]
    assert [r["display_name"] for r in runs] == [f"kshot-nas-k{k}-0123456" for k in (1, 2, 4)]
    reference = {"pipeline_id": v1["pipeline_id"], "pipeline_version_id": v1["version_id"]}
    assert all(r["pipeline_version_reference"] == reference for r in runs)
    assert not any(r.get("pipeline_spec") for r in runs)  # nothing compiled, nothing sent
    assert {e["display_name"] for e in kfp_server.experiments.values()} == {"reruns"}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp_server.requests)


def test_the_rerun_script_takes_the_pipeline_and_version_by_id(
    kfp_server: RecordingKfpServer, package: str
) -> None:
    v1 = _upload_version(kfp_server, package, "v1")
    _upload_version(kfp_server, package, "v2")
    uploads = len(kfp_server.requests)
    done = _rerun(
        kfp_server.url, "3", PIPELINE=v1["pipeline_id"], PIPELINE_VERSION=v1["version_id"]
    )
    assert done.returncode == 0, done.stderr
    (run,) = kfp_server.runs.values()
    assert run["pipeline_version_reference"]["pipeline_version_id"] == v1["version_id"]
    assert not any(
        r.method == "GET" and "/pipelines" in r.path for r in kfp_server.requests[uploads:]
    )


def test_the_rerun_script_refuses_a_bad_k_before_submitting(
    kfp_server: RecordingKfpServer,
) -> None:
    done = _rerun(kfp_server.url, "2,x")
    assert done.returncode == 2
    assert "K must be a positive integer, got 'x'" in done.stderr
    assert kfp_server.requests == []


def test_the_workflows_are_valid_github_workflows() -> None:
    files = [str(path) for path in sorted(WORKFLOWS.glob("*.yml"))]
    assert {Path(f).name for f in files} >= {"ci.yml", "rerun.yml", "images.yml"}
    command = shutil.which("check-jsonschema")
    runner = [command] if command else [sys.executable, "-m", "check_jsonschema"]
    done = subprocess.run(
        [*runner, "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _rerun_workflow() -> tuple[dict, dict]:
    """The rerun workflow's inputs and its submit step."""
    workflow = yaml.safe_load((WORKFLOWS / "rerun.yml").read_text())
    inputs = workflow[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads `on` as True
    (submit,) = [
        s for s in workflow["jobs"]["submit"]["steps"] if "submit_reruns.sh" in s.get("run", "")
    ]
    return inputs, submit


def test_the_rerun_workflow_takes_an_uploaded_version_k_and_a_config_overlay() -> None:
    inputs, submit = _rerun_workflow()
    assert len(inputs) <= 10  # GitHub's limit for workflow_dispatch
    assert inputs["pipeline"]["required"] is True and inputs["k"]["required"] is True
    overlay = ("dataset", "workers", "gpus_per_worker", "epochs")
    assert all(inputs[name]["default"] == "" for name in ("version", *overlay))
    assert inputs["launcher"]["default"] == "pytorchjob"
    assert set(inputs["launcher"]["options"]) == set(BACKENDS)
    renamed = {"k": "K_VALUES", "version": "PIPELINE_VERSION"}
    for name in inputs:
        assert submit["env"][renamed.get(name, name.upper())] == f"${{{{ inputs.{name} }}}}"
    ci = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    steps = ci["jobs"]["test"]["steps"]
    assert any(step.get("run") == "bash .ci/run" for step in steps)
    assert any(step.get("with", {}).get("python-version") == "3.11" for step in steps)


def test_the_rerun_workflow_installs_kshot_without_its_dependencies_and_kfp_as_pinned() -> None:
    import tomllib

    (install,) = [s for s in _steps("rerun.yml", "submit") if "pip install" in s.get("run", "")]
    assert "pip install --no-deps -e ." in install["run"]
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (kfp,) = [d for d in pinned if d.startswith("kfp>")]
    assert f'pip install "{kfp}"' in install["run"]
    assert "torch" not in install["run"] and "[" not in install["run"]


def test_the_rerun_workflow_reruns_an_uploaded_version_with_another_k_and_an_overlay(
    kfp_server: RecordingKfpServer, package: str, tmp_path: Path
) -> None:
    """Its submit step as GitHub runs it, where only kshot (no dependencies) and kfp are
    installed."""
    v1 = _upload_version(kfp_server, package, "v1")
    _upload_version(kfp_server, package, "v2")
    _, submit = _rerun_workflow()
    dispatched = {
        "PIPELINE": "kshot-nas",
        "PIPELINE_VERSION": "v1",
        "K_VALUES": "2,4",
        "DATASET": "gs://kshot-data/cifar10",
        "WORKERS": "2",
        "GPUS_PER_WORKER": "8",
        "EPOCHS": "50",
        "LAUNCHER": "trainjob",
        "NAMESPACE": "team-a",
        "PIPELINE_ROOT": "gs://kshot-runs/root",
        "EXPERIMENT": "reruns",
    }
    assert set(submit["env"]) == {*dispatched, "KFP_HOST", "KFP_TOKEN"}
    env = {
        **os.environ,
        **dispatched,
        "KFP_HOST": kfp_server.url,
        "KFP_TOKEN": TOKEN,
        "KSHOT_ALLOW_INSECURE_TOKEN": "1",  # the recording server is http://127.0.0.1
        "PYTHON": _submitting_python(tmp_path),
    }
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", submit["run"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    runs = list(kfp_server.runs.values())
    overlay = {"dataset": "gs://kshot-data/cifar10", "workers": 2, "gpus_per_worker": 8}
    assert [r["runtime_config"]["parameters"] for r in runs] == [
        {"k": k, "launcher": "trainjob", "epochs": 50, **overlay} for k in (2, 4)
    ]
    reference = {"pipeline_id": v1["pipeline_id"], "pipeline_version_id": v1["version_id"]}
    assert all(r["pipeline_version_reference"] == reference for r in runs)
    assert {r["runtime_config"]["pipeline_root"] for r in runs} == {"gs://kshot-runs/root"}
    (experiment,) = kfp_server.experiments.values()
    assert experiment["namespace"] == "team-a" and experiment["display_name"] == "reruns"

    # an empty overlay keeps the version's defaults: only K and the launcher are sent
    kfp_server.runs.clear()
    empty = {**env, "K_VALUES": "8", "DATASET": "", "WORKERS": "", "GPUS_PER_WORKER": ""}
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", submit["run"]],
        env={**empty, "EPOCHS": ""},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    (run,) = kfp_server.runs.values()
    assert run["runtime_config"]["parameters"] == {"k": 8, "launcher": "trainjob"}


def _steps(workflow: str, job: str) -> list[dict]:
    return yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"][job]["steps"]


def test_reruns_authenticate_through_workload_identity_federation_with_the_secret_as_fallback() -> (
    None
):
    workflow = yaml.safe_load((WORKFLOWS / "rerun.yml").read_text())
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}
    steps = workflow["jobs"]["submit"]["steps"]
    (auth,) = [s for s in steps if s.get("uses", "").startswith("google-github-actions/auth@")]
    assert auth["id"] == "auth"
    assert auth["if"] == "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER != '' }}"
    assert (
        auth["with"]["workload_identity_provider"] == "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}"
    )
    assert auth["with"]["service_account"] == "${{ vars.GCP_SERVICE_ACCOUNT }}"
    assert "id_token" in auth["with"]["token_format"]
    assert "access_token" in auth["with"]["token_format"]
    submit = steps[-1]
    assert steps.index(auth) < steps.index(submit) and "submit_reruns.sh" in submit["run"]
    # the minted token first, the long-lived secret only where no federation is set up
    token = submit["env"]["KFP_TOKEN"]
    assert token == (
        "${{ steps.auth.outputs.id_token || steps.auth.outputs.access_token || secrets.KFP_TOKEN }}"
    )
    assert submit["env"]["KFP_HOST"] == "${{ vars.KFP_HOST || secrets.KFP_HOST }}"


def test_the_images_workflow_builds_smoke_tests_then_pushes_both_images() -> None:
    workflow = yaml.safe_load((WORKFLOWS / "images.yml").read_text())
    job = workflow["jobs"]["build"]
    built = {entry["dockerfile"] for entry in job["strategy"]["matrix"]["include"]}
    assert built == {
        path.relative_to(ROOT).as_posix() for path in (ROOT / "images").glob("Dockerfile*")
    }
    (build,) = [
        s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")
    ]
    assert build["with"]["file"] == "${{ matrix.dockerfile }}"
    assert build["with"]["context"] == "."
    assert build["with"]["push"] is False and build["with"]["load"] is True
    assert "${{ steps.meta.outputs.tags }}" in build["with"]["tags"]
    assert "REVISION=${{ github.sha }}" in build["with"]["build-args"]
    # the smoke test runs on the built image (its tag named, so it cannot skip), then the push
    (smoke,) = [s for s in job["steps"] if "tests/test_images.py" in s.get("run", "")]
    assert "-m image" in smoke["run"]
    assert smoke["env"]["KSHOT_TEST_IMAGES"] in build["with"]["tags"].splitlines()
    (push,) = [s for s in job["steps"] if "docker push" in s.get("run", "")]
    assert push["if"] == "${{ env.PUSH == 'true' }}"
    assert push["env"]["TAGS"] == "${{ steps.meta.outputs.tags }}"
    assert job["steps"].index(build) < job["steps"].index(smoke) < job["steps"].index(push)
    assert "vars.IMAGE_REGISTRY" in job["env"]["PUSH"]
    assert "pull_request" in job["env"]["PUSH"]  # pull requests build without pushing
    (meta,) = [s for s in job["steps"] if s.get("id") == "meta"]
    assert meta["with"]["images"].startswith("${{ vars.IMAGE_REGISTRY")
    assert workflow["permissions"]["id-token"] == "write"


def _readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell commands that start with ``prefix``, as argument lists: continued lines
    joined, comments and ``[optional …]`` parts dropped, ``$HOST`` given a host."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line)
            words = shlex.split(line, comments=True)
            if " ".join(words).startswith(prefix):
                commands.append(
                    [
                        w
                        for word in words
                        for w in (["--host", "https://h"] if word == "$HOST" else [word])
                    ]
                )
    return commands


def test_the_readmes_pipeline_commands_are_what_kshot_takes() -> None:
    """Every `kshot pipeline …` and `kshot launch render …` the README shows parses as written
    (flags and their values; the hosts and images are the reader's)."""
    from kshot.cli import build_parser

    commands = _readme_commands("kshot pipeline") + _readme_commands("kshot launch render")
    actions = {command[2] for command in commands if command[1] == "pipeline"}
    assert actions == {"compile", "upload", "run"}
    for command in commands:
        build_parser().parse_args(command[1:])  # exits (a failure here) on an unknown flag

    def value(command: list[str], flag: str) -> str | None:
        return command[command.index(flag) + 1] if flag in command else None

    def of(action: str) -> list[list[str]]:
        return [c for c in commands if c[1:3] == ["pipeline", action]]

    # compiled for a cluster with its images; the file compiled is the file uploaded, and a run
    # runs a compiled file or an uploaded version
    assert all("--step-image" in c and "--job-image" in c for c in of("compile"))
    compiled = {value(c, "--output") for c in of("compile")}
    assert all(value(c, "--package") in compiled for c in of("upload"))
    uploaded = {value(c, "--version") for c in of("upload")}
    for run in of("run"):
        assert value(run, "--package") in compiled or (
            value(run, "--name") and value(run, "--version") in uploaded
        ), run
