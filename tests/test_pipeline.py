"""The compiled pipelines: stages, defaults, how steps hand on their outputs, the steps' sizes,
retries, placement and security context, the config step's validation."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import dsl, local
from kfp.dsl.types.type_utils import InconsistentTypeException

from kshot.cli import main
from kshot.components import runtime, stages
from kshot.components.runtime import (
    LAUNCHER_STEP_SIZE,
    NAMESPACE_ENV,
    StepSize,
    build_config,
    handoff_uri,
    heavy_step_size,
    job_image,
    run_pipeline_stage,
    step_image,
)
from kshot.components.stages import PIPELINE_CONFIG_KEYS
from kshot.config import Config, ConfigError, load_config
from kshot.launch import LaunchError
from kshot.pipeline.cli import _PIPELINE_ONLY, _SWEEP_ONLY, compile_pipeline
from kshot.pipeline.pipeline import DEFAULT_STEP_CPU, DEFAULT_STEP_MEMORY, kshot_nas
from kshot.pipeline.platform import ACCELERATOR, HEAVY_RETRY, IMAGE_UID, LIGHT_STEP
from kshot.pipeline.sweep import DEFAULT_K_VALUES, K_PARALLELISM, kshot_k_sweep
from kshot.stages import HEAVY_STAGES, STAGES
from kshot.storage import s3 as s3_store
from tests.pod_security import read_only_root_violations, restricted_violations

CONFIG_OUTPUT = {"producerTask": "configure", "outputParameterKey": "config"}
STEP_IMAGE = "registry.example/kshot-cpu:1"
JOB_IMAGE = "registry.example/kshot:1"


def _compile(path: Path, sweep: bool) -> dict[str, Any]:
    """The pipeline spec, with the kubernetes platform spec (the second document) under
    ``"platform"``."""
    compile_pipeline(str(path), sweep, STEP_IMAGE, JOB_IMAGE)
    spec, platform = yaml.safe_load_all(path.read_text())
    return {**spec, "platform": platform["platforms"]["kubernetes"]}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = _compile(tmp_path_factory.mktemp("pipelines") / "pipeline.yaml", sweep=False)
    assert spec["pipelineInfo"]["name"] == "kshot-nas"
    return spec


@pytest.fixture(scope="module")
def compiled_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = _compile(tmp_path_factory.mktemp("pipelines") / "sweep.yaml", sweep=True)
    assert spec["pipelineInfo"]["name"] == "kshot-nas-k-sweep"
    return spec


@pytest.fixture(params=["pipeline", "sweep"])
def both(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each compiled pipeline in turn."""
    return request.getfixturevalue("compiled" if request.param == "pipeline" else "compiled_sweep")


def _all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task that runs a container, in the root DAG and every sub-DAG, by executor label
    (each executor once: a task name may repeat across sub-DAGs)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    found = {}
    for dag in dags:
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" in component:
                found[component["executorLabel"]] = task
    return found


def _parameter_source(task: dict[str, Any], name: str) -> tuple[str, str]:
    source = task["inputs"]["parameters"][name]["taskOutputParameter"]
    return source["producerTask"], source["outputParameterKey"]


def _tasks(spec: dict[str, Any], component: str = "") -> dict[str, Any]:
    """The tasks of the root DAG, or of the DAG component ``component``."""
    dag = spec["components"][component]["dag"] if component else spec["root"]["dag"]
    return dag["tasks"]


def _artifact_source(task: dict[str, Any], name: str) -> tuple[str, str]:
    source = task["inputs"]["artifacts"][name]["taskOutputArtifact"]
    return source["producerTask"], source["outputArtifactKey"]


def test_every_stage_is_a_component_of_the_pipeline(compiled: dict[str, Any]) -> None:
    components = set(compiled["components"])
    assert {f"comp-{stage}" for stage in STAGES} <= components
    tasks = set(_tasks(compiled))
    assert set(STAGES) - {"standalone"} <= tasks
    assert {"configure", "ground-truth", "summarize"} <= tasks
    executors = compiled["deploymentSpec"]["executors"].values()
    for executor in executors:
        container = executor["container"]
        assert "pip install" not in " ".join(container["command"])  # the image has kfp and kshot
        assert container["image"] == STEP_IMAGE  # chosen when compiling, not when importing


def test_parameters_default_to_the_config_defaults(compiled: dict[str, Any]) -> None:
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    defaults = Config()
    for key in PIPELINE_CONFIG_KEYS:
        assert parameters[key]["defaultValue"] == getattr(defaults, key), key
        assert parameters[key]["description"]
    assert parameters["k"]["parameterType"] == "NUMBER_INTEGER"
    assert parameters["alpha"]["parameterType"] == "NUMBER_DOUBLE"
    assert parameters["launcher"]["defaultValue"] == "local"
    assert parameters["extra_config"]["defaultValue"] == ""
    assert parameters["image"]["defaultValue"] == JOB_IMAGE
    assert parameters["step_cpu"]["defaultValue"] == DEFAULT_STEP_CPU
    assert parameters["step_memory"]["defaultValue"] == DEFAULT_STEP_MEMORY
    assert parameters["step_tolerations"]["defaultValue"] == []
    assert parameters["step_node_selector"]["defaultValue"] == {}


# The config step's parameters that are not config keys.
_CONFIG_STEP_ONLY = {"image", "launcher", "extra_config", "step_cpu", "step_memory"}


def test_every_parameter_that_is_a_config_key_is_as_config_has_it() -> None:
    """The config step's signature is written out (KFP ships its source to the pod), the
    pipelines' are built from Config and PIPELINE_CONFIG_KEYS is read from the config step: each
    parameter that is a config key has its field's type (and in a pipeline its default), the
    pipelines take the config step's keys, and their other parameters are those the CLI sets."""
    types = typing.get_type_hints(Config)
    defaults = Config()
    drift = []
    step = inspect.signature(stages.configure.python_func).parameters
    for name, parameter in step.items():
        if name not in types and name not in _CONFIG_STEP_ONLY:
            drift.append(f"configure: parameter {name!r} is not a config key")
        elif name in types and parameter.annotation is not types[name]:
            drift.append(
                f"configure: parameter {name!r} is {parameter.annotation}, "
                f"Config.{name} {types[name]}"
            )
    pipelines = {
        "kshot_nas": (kshot_nas, set(PIPELINE_CONFIG_KEYS), set(_PIPELINE_ONLY)),
        "kshot_k_sweep": (
            kshot_k_sweep,
            set(PIPELINE_CONFIG_KEYS) - {"k"},  # k_values instead
            {*_PIPELINE_ONLY, *_SWEEP_ONLY},
        ),
    }
    for pipeline, (function, keys, own) in pipelines.items():
        parameters = inspect.signature(function.pipeline_func).parameters
        given = {name for name in parameters if name in types}
        for name in sorted(given ^ keys):
            has = "has" if name in given else "lacks"
            drift.append(f"{pipeline}: {has} parameter {name!r}, the config step's keys do not")
        others, expected = set(parameters) - given, {"extra_config", *own}
        for name in sorted(others - expected):
            drift.append(
                f"{pipeline}: parameter {name!r} is neither a config key nor one that "
                "kshot.pipeline.cli passes on as it is"
            )
        for name in sorted(expected - others):
            drift.append(f"{pipeline}: lacks parameter {name!r}, which kshot.pipeline.cli passes")
        for name in sorted(given):
            parameter, default = parameters[name], getattr(defaults, name)
            if parameter.annotation is not types[name]:
                drift.append(
                    f"{pipeline}: parameter {name!r} is {parameter.annotation}, "
                    f"Config.{name} {types[name]}"
                )
            if parameter.default != default or type(parameter.default) is not type(default):
                drift.append(
                    f"{pipeline}: parameter {name!r} defaults to {parameter.default!r}, "
                    f"Config.{name} to {default!r}"
                )
    assert not drift, "\n".join(drift)


def test_outputs_flow_from_stage_to_stage_as_uris(compiled: dict[str, Any]) -> None:
    tasks = _tasks(compiled)
    assert _parameter_source(tasks["warmup"], "split") == ("split", "Output")
    assert _parameter_source(tasks["train"], "warmup_checkpoint") == ("warmup", "Output")
    assert _parameter_source(tasks["search"], "checkpoint") == ("train", "Output")
    assert _parameter_source(tasks["rank"], "checkpoint") == ("train", "Output")
    assert _parameter_source(tasks["recalibrate"], "checkpoint") == ("train", "Output")
    assert _parameter_source(tasks["recalibrate"], "search_results") == ("search", "Output")
    assert _parameter_source(tasks["retrain"], "results") == ("recalibrate", "Output")
    assert _parameter_source(tasks["rank"], "truth") == ("ground-truth", "Output")
    assert _artifact_source(tasks["summarize"], "ranking") == ("rank", "ranking")
    assert _artifact_source(tasks["summarize"], "retrained") == ("retrain", "retrained")
    assert _artifact_source(tasks["summarize"], "truth") == ("ground-truth", "table")
    # the producers still declare the artifacts whose URIs they return (the UI shows them)
    for producer, artifact in [("warmup", "checkpoint"), ("train", "checkpoint")]:
        outputs = compiled["components"][f"comp-{producer}"]["outputDefinitions"]
        assert outputs["artifacts"][artifact]["artifactType"]["schemaTitle"] == "system.Model"
        assert outputs["parameters"]["Output"]["parameterType"] == "STRING"
    # rank runs beside search: neither waits for the other
    assert "search" not in tasks["rank"]["dependentTasks"]
    assert "rank" not in tasks["search"]["dependentTasks"]


# What a step receives as input artifacts, which KFP's launcher downloads into its pod: the
# reports' small files only.
_DOWNLOADED = {
    "summarize": {
        "truth",
        "results",
        "retrained",
        "ranking",
        "training_page",
        "search_page",
        "retrain_page",
        "rank_page",
    },
    "plot-tau-vs-k": {"rankings"},
}


def test_no_step_downloads_a_checkpoint_or_the_split(both: dict[str, Any]) -> None:
    """KFP's launcher copies into a step's pod exactly the artifacts of its executor input, which
    are the task's ``inputs.artifacts`` (backend/src/v2/component/launcher_v2.go,
    downloadArtifacts); a task input parameter reaches the pod as its string value. So a step
    whose checkpoint input is a parameter fed by the producer's returned URI never downloads the
    checkpoint: its stage (or its job) reads what it needs from the URI."""
    tasks = _all_tasks(both)
    for executor, task in tasks.items():
        name = task["taskInfo"]["name"]
        downloaded = set(task.get("inputs", {}).get("artifacts", {}))
        assert downloaded <= _DOWNLOADED.get(name, set()), (executor, downloaded)
    heavy = {e: t for e, t in tasks.items() if t["taskInfo"]["name"] in HEAVY_STAGES}
    assert {t["taskInfo"]["name"] for t in heavy.values()} >= {"warmup", "train", "rank"}
    for executor, task in heavy.items():
        component = both["components"][task["componentRef"]["name"]]
        assert "artifacts" not in component.get("inputDefinitions", {}), executor
        assert component["inputDefinitions"]["parameters"]["split"]["parameterType"] == "STRING"
    train = next(t for t in heavy.values() if t["taskInfo"]["name"] == "train")
    assert train["inputs"]["parameters"]["warmup_checkpoint"]["taskOutputParameter"] == {
        "producerTask": "warmup",
        "outputParameterKey": "Output",
    }


def test_recalibrate_runs_as_a_job_when_the_launcher_is_one(both: dict[str, Any]) -> None:
    """Re-scoring the front on the whole validation part is a heavy stage: its step hands the
    pipeline's launcher, image and run id to the launcher (a PyTorchJob or TrainJob with GPUs, or
    torchrun in the step's own pod with ``launcher=local``), asks for the GPUs and retries the
    config step gives heavy steps, and so adopts its job on a retry as they do."""
    assert "recalibrate" in HEAVY_STAGES
    for executor, task in _all_tasks(both).items():
        if task["taskInfo"]["name"] != "recalibrate":
            continue
        parameters = task["inputs"]["parameters"]
        launcher = parameters["launcher"]
        assert launcher.get("componentInputParameter", "").endswith("launcher"), launcher
        assert parameters["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
        assert parameters["image"]["componentInputParameter"].endswith("image")
        resources = _resources(both, executor)
        assert resources["accelerator"]["resourceCount"] == _sized_by_config_step(task, "step_gpus")
        assert resources["resourceCpuRequest"] == _sized_by_config_step(task, "step_cpu")
        assert "retryPolicy" in task
        component = both["components"][task["componentRef"]["name"]]
        assert {"launcher", "image", "run_id"} <= set(component["inputDefinitions"]["parameters"])


def _resources(spec: dict[str, Any], executor: str) -> dict[str, Any]:
    return spec["deploymentSpec"]["executors"][executor]["container"]["resources"]


def _sized_by_config_step(task: dict[str, Any], field: str) -> str:
    """The placeholder of the task's input that carries the config step's output ``field`` (the
    step's own output, or the sub-DAG's input of that channel inside a branch)."""
    (name,) = [n for n in task["inputs"]["parameters"] if n.endswith(f"-{field}")]
    assert re.fullmatch(rf"pipelinechannel--configure(-\d+)?-{field}", name), name
    source = task["inputs"]["parameters"][name]
    if "taskOutputParameter" in source:
        assert source["taskOutputParameter"]["outputParameterKey"] == field
    else:
        assert source == {"componentInputParameter": name}
    return f"{{{{$.inputs.parameters['{name}']}}}}"


def test_every_step_requests_cpu_and_memory_and_heavy_ones_gpus_and_retries(
    both: dict[str, Any],
) -> None:
    retry = {
        "maxRetryCount": HEAVY_RETRY["num_retries"],
        "backoffDuration": HEAVY_RETRY["backoff_duration"],
        "backoffFactor": HEAVY_RETRY["backoff_factor"],
        "backoffMaxDuration": HEAVY_RETRY["backoff_max_duration"],
    }
    for executor, task in _all_tasks(both).items():
        name = task["taskInfo"]["name"]
        resources = _resources(both, executor)
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"], executor
        if name in HEAVY_STAGES:
            assert resources["resourceCpuRequest"] == _sized_by_config_step(task, "step_cpu")
            memory = _sized_by_config_step(task, "step_memory")
            assert resources["resourceMemoryRequest"] == memory
            assert resources["accelerator"] == {
                "resourceType": ACCELERATOR,
                "type": ACCELERATOR,
                "resourceCount": _sized_by_config_step(task, "step_gpus"),
            }
            assert task["retryPolicy"] == retry, executor
        else:
            assert resources["resourceCpuRequest"] == LIGHT_STEP.cpu, executor
            assert resources["resourceMemoryRequest"] == LIGHT_STEP.memory, executor
            assert "accelerator" not in resources and "retryPolicy" not in task, executor


def test_every_step_pod_is_placed_and_runs_as_the_image_user(both: dict[str, Any]) -> None:
    platform = both["platform"]["deploymentSpec"]["executors"]
    assert set(platform) == set(_all_tasks(both))
    for executor, settings in platform.items():
        assert settings["securityContext"] == {
            "runAsUser": str(IMAGE_UID),
            "runAsGroup": str(IMAGE_UID),
            "runAsNonRoot": True,
        }, executor
        (toleration,) = settings["tolerations"]
        assert toleration["tolerationJson"]["componentInputParameter"].endswith("step_tolerations")
        selector = settings["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
        assert selector.endswith("step_node_selector")


def test_the_images_run_as_the_uid_the_steps_require() -> None:
    root = Path(__file__).resolve().parents[1]
    for dockerfile in (root / "images").glob("Dockerfile*"):
        users = re.findall(r"^USER (\S+)", dockerfile.read_text(), flags=re.M)
        assert users == [f"{IMAGE_UID}:{IMAGE_UID}"], dockerfile


def test_k_reaches_every_stage_through_the_config_step(compiled: dict[str, Any]) -> None:
    tasks = _tasks(compiled)
    configure = tasks["configure"]["inputs"]["parameters"]
    for key in (
        *PIPELINE_CONFIG_KEYS,
        "image",
        "launcher",
        "extra_config",
        "step_cpu",
        "step_memory",
    ):
        assert configure[key] == {"componentInputParameter": key}
    for stage in set(STAGES) - {"standalone"}:
        assert tasks[stage]["inputs"]["parameters"]["config"]["taskOutputParameter"] == (
            CONFIG_OUTPUT
        ), stage


def test_standalone_is_the_ground_truth_only_without_a_table(compiled: dict[str, Any]) -> None:
    tasks = _tasks(compiled)
    branches = tasks["condition-branches-1"]
    # beside the supernet stages: the branch waits for the config and the split only
    assert sorted(branches["dependentTasks"]) == ["configure", "split"]
    inner = _tasks(compiled, branches["componentRef"]["name"])
    conditions = {
        name: inner[name]["triggerPolicy"]["condition"] for name in inner if "condition" in name
    }
    standalone_branch = next(n for n, c in conditions.items() if c.endswith("== ''"))
    table_branch = next(n for n, c in conditions.items() if "!(" in c)
    assert "ground_truth" in conditions[standalone_branch]
    assert "standalone" in _tasks(compiled, inner[standalone_branch]["componentRef"]["name"])
    assert "benchmark-table" in _tasks(compiled, inner[table_branch]["componentRef"]["name"])
    standalone = _tasks(compiled, inner[standalone_branch]["componentRef"]["name"])["standalone"]
    assert "split" in standalone["inputs"]["parameters"]
    source = tasks["ground-truth"]["inputs"]["parameters"]["table_uri"]["taskOutputParameter"]
    assert source["producerTask"] == "condition-branches-1"


def test_the_sweep_fans_out_over_k_and_plots_tau(compiled_sweep: dict[str, Any]) -> None:
    parameters = compiled_sweep["root"]["inputDefinitions"]["parameters"]
    assert parameters["k_values"]["defaultValue"] == DEFAULT_K_VALUES
    assert "k" not in parameters
    tasks = _tasks(compiled_sweep)
    loop = next(task for task in tasks.values() if "parameterIterator" in task)
    assert loop["taskInfo"]["name"] == "for-each-k"
    items = tasks["sweep-items"]["inputs"]["parameters"]
    assert items["k_values"] == {"componentInputParameter": "k_values"}
    assert _parameter_source(tasks["sweep-items"], "split") == ("split", "Output")
    assert _parameter_source(tasks["sweep-items"], "truth") == ("ground-truth", "Output")
    assert (
        loop["parameterIterator"]["items"]["inputParameter"]
        == "pipelinechannel--sweep-items-Output"
    )
    item = loop["parameterIterator"]["itemInput"]
    body = _tasks(compiled_sweep, loop["componentRef"]["name"])
    assert {"warmup", "train", "rank"} <= set(body)
    config_k = next(name for name in body if name.startswith("configure"))
    k_input = body[config_k]["inputs"]["parameters"]["k"]
    assert k_input == {
        "componentInputParameter": item,
        "parameterExpressionSelector": 'parseJson(string_value)["k"]',
    }
    assert _parameter_source(body["rank"], "checkpoint") == ("train", "Output")
    plot = tasks["plot-tau-vs-k"]["inputs"]["artifacts"]["rankings"]["taskOutputArtifact"]
    assert tasks[plot["producerTask"]] is loop
    outputs = compiled_sweep["components"][loop["componentRef"]["name"]]["outputDefinitions"]
    assert outputs["artifacts"][plot["outputArtifactKey"]]["isArtifactList"] is True


def test_the_sweep_trains_a_bounded_number_of_k_at_once(compiled_sweep: dict[str, Any]) -> None:
    loop = next(task for task in _tasks(compiled_sweep).values() if "parameterIterator" in task)
    assert K_PARALLELISM >= 1
    assert loop["iteratorPolicy"]["parallelismLimit"] == K_PARALLELISM


# A root in a store kshot does not reach (KFP would take any scheme its launcher is built with).
FOREIGN_RUN = "oss://mlpipeline/v2/artifacts/kshot-nas/run-1"


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_a_job_refuses_artifacts_its_pods_cannot_reach_before_it_starts(
    launcher: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "team-a")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster"))
    split = "gs://bucket/kshot-nas/run-1/split/split"
    checkpoint = dsl.Model(uri=f"{FOREIGN_RUN}/warmup/checkpoint")
    config = json.dumps(Config().to_dict())

    with pytest.raises(LaunchError) as failure:
        run_pipeline_stage("warmup", config, {"split": split}, {"checkpoint": checkpoint}, launcher)
    message = str(failure.value)
    assert f"warmup: output 'checkpoint' of the {launcher} job is {checkpoint.uri}" in message
    assert "not oss://" in message and "--pipeline-root gs://" in message
    assert "s3://BUCKET/PREFIX" in message and "minio://BUCKET/PREFIX" in message
    assert not Path(checkpoint.path).exists()


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_a_heavy_step_gives_its_job_the_configs_requests_queue_and_priority(
    launcher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "team-a")
    launched: list[Any] = []
    monkeypatch.setattr(runtime, "launch", lambda spec, backend, log: launched.append(spec))
    scheduling = {
        "job_cpu": "6",
        "job_memory": "24Gi",
        "queue_name": "team-a-gpus",
        "priority_class": "high-priority",
    }
    config = json.dumps(load_config(scheduling).to_dict())
    checkpoint = dsl.Model(uri="gs://bucket/kshot-nas/run-1/warmup/checkpoint")
    split = "gs://bucket/kshot-nas/run-1/split/split"
    run_pipeline_stage("warmup", config, {"split": split}, {"checkpoint": checkpoint}, launcher)
    (spec,) = launched
    assert (spec.cpu, spec.memory, spec.queue_name, spec.priority_class) == tuple(
        scheduling.values()
    )


def test_a_uri_handed_to_a_later_step_must_reach_its_pod() -> None:
    table = dsl.Dataset(uri=f"{FOREIGN_RUN}/standalone/table")
    with pytest.raises(ValueError, match=f"output 'table' is {table.uri}, which other pods"):
        handoff_uri(table, "table")
    for bucket in ("gs://bucket", "s3://bucket", "minio://mlpipeline/v2/artifacts"):
        in_store = dsl.Dataset(uri=f"{bucket}/run-1/standalone/table")
        assert handoff_uri(in_store, "table") == in_store.uri
    on_this_machine = dsl.Dataset(uri="/tmp/kfp-local/standalone/table")  # kfp.local
    assert handoff_uri(on_this_machine, "table") == on_this_machine.uri


def _arguments(**changes: Any) -> dict[str, Any]:
    defaults = Config()
    arguments = {key: getattr(defaults, key) for key in PIPELINE_CONFIG_KEYS}
    arguments.update(image=job_image(), launcher="local", extra_config="")
    arguments.update(step_cpu=DEFAULT_STEP_CPU, step_memory=DEFAULT_STEP_MEMORY)
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, "config key 'k' from pipeline parameters: 0 must be >= 1"),
        ({"m": 7}, "config key 'm' from pipeline parameters: 7 does not divide batch_size"),
        (
            {"workers": 3},
            "config key 'batch_size' = 256 must be divisible by the 3 processes (config key "
            "'workers' = 3)",
        ),
        (
            {"extra_config": '{"chanels": 4}'},
            "unknown config key 'chanels' from pipeline parameter 'extra_config'",
        ),
        ({"extra_config": "k: 4"}, "pipeline parameter 'extra_config' sets k"),
        ({"launcher": "slurm"}, "pipeline parameter 'launcher': 'slurm' is not one of"),
        ({"image": "Not An Image"}, "pipeline parameter 'image'"),
        ({"step_cpu": "four"}, "pipeline parameter 'step_cpu': 'four' is not a positive"),
        ({"step_memory": "0"}, "pipeline parameter 'step_memory': '0' is not a positive"),
    ],
)
def test_build_config_names_the_bad_parameter(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(_arguments(**changes))


def test_build_config_layers_extra_config_under_the_parameters() -> None:
    cfg = build_config(_arguments(k=4, extra_config='{"channels": 4, "cells": 1}'))
    assert (cfg.k, cfg.channels, cfg.cells) == (4, 4, 1)


# kfp warns that the components' image is not this environment: for kshot it is, by design.
_SAME_IMAGE = "ignore:.*non-Python base image:RuntimeWarning"


@pytest.fixture
def local_session(tmp_path: Path) -> Path:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    return tmp_path


@pytest.mark.filterwarnings(_SAME_IMAGE)
def test_the_config_step_emits_the_config_as_json(local_session: Path) -> None:
    task = stages.configure(**_arguments(k=4, extra_config="channels: 4"))
    values = json.loads(task.outputs["config"])
    assert values == {**Config().to_dict(), "k": 4, "channels": 4}
    assert task.outputs["ground_truth"] == ""
    sized = (task.outputs["step_cpu"], task.outputs["step_memory"], task.outputs["step_gpus"])
    assert sized == (DEFAULT_STEP_CPU, DEFAULT_STEP_MEMORY, 0)


@pytest.mark.filterwarnings(_SAME_IMAGE)
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, "config key 'k' from pipeline parameters: 0 must be >= 1"),
        ({"m": 7}, "config key 'm' from pipeline parameters: 7 does not divide batch_size"),
        (
            {"workers": 3},
            "config key 'batch_size' = 256 must be divisible by the 3 processes (config key "
            "'workers' = 3)",
        ),
        ({"extra_config": '{"chanels": 4}'}, "unknown config key 'chanels'"),
    ],
)
def test_a_bad_parameter_fails_the_config_step(
    local_session: Path, capfd: pytest.CaptureFixture[str], changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(RuntimeError, match="configure"):
        stages.configure(**_arguments(**changes))
    captured = capfd.readouterr()
    assert message in captured.out + captured.err


def test_kfp_rejects_a_wrongly_typed_parameter_at_compile_time() -> None:
    def typed():  # no return annotation: KFP would read this module's string annotation
        stages.configure(**_arguments(k="four"))

    with pytest.raises(InconsistentTypeException, match="input 'k' of component 'configure'"):
        dsl.pipeline(name="typed")(typed)


def test_kshot_pipeline_compile_writes_the_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "sweep.yaml"
    images = ["--step-image", STEP_IMAGE, "--job-image", JOB_IMAGE]
    assert main(["pipeline", "compile", "--sweep", "--output", str(output), *images]) == 0
    spec = next(yaml.safe_load_all(output.read_text()))
    assert spec["pipelineInfo"]["name"] == "kshot-nas-k-sweep"
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        STEP_IMAGE
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == JOB_IMAGE
    assert capsys.readouterr().out == f"compiled pipeline 'kshot-nas-k-sweep' to {output}\n"


@pytest.mark.parametrize(
    ("environment", "flags", "named"),
    [
        ({}, [], ["--step-image or $KSHOT_STEP_IMAGE", "--job-image or $KSHOT_JOB_IMAGE"]),
        ({"KSHOT_STEP_IMAGE": STEP_IMAGE}, [], ["--job-image or $KSHOT_JOB_IMAGE"]),
        ({"KSHOT_JOB_IMAGE": ""}, ["--job-image", JOB_IMAGE], ["--step-image or $KSHOT_STEP"]),
    ],
)
def test_compiling_without_the_images_fails_naming_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environment: dict[str, str],
    flags: list[str],
    named: list[str],
) -> None:
    for variable in ("KSHOT_STEP_IMAGE", "KSHOT_JOB_IMAGE", "KSHOT_IMAGE"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    output = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "--output", str(output), *flags]) == 2
    error = capsys.readouterr().err
    assert all(name in error for name in named) and "$KSHOT_IMAGE" in error, error
    assert not output.exists()


def test_a_malformed_image_is_refused_naming_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KSHOT_JOB_IMAGE", "Registry/KSHOT:1")
    output = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "--output", str(output), "--step-image", STEP_IMAGE]) == 2
    assert "$KSHOT_JOB_IMAGE 'Registry/KSHOT:1' is not a valid image reference" in (
        capsys.readouterr().err
    )
    assert not output.exists()


def test_a_step_that_runs_its_stage_gets_the_workers_gpus_a_job_watcher_none() -> None:
    cfg = Config(workers=2, gpus_per_worker=4)
    assert heavy_step_size(cfg, "local", "8", "32Gi") == StepSize("8", "32Gi", 8)
    for launcher in ("pytorchjob", "trainjob"):
        assert heavy_step_size(cfg, launcher, "8", "32Gi") == LAUNCHER_STEP_SIZE
    assert LAUNCHER_STEP_SIZE.gpus == 0


def test_the_step_image_and_the_job_image_are_set_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSHOT_IMAGE", "registry.example/kshot:1")
    monkeypatch.delenv("KSHOT_STEP_IMAGE", raising=False)
    monkeypatch.delenv("KSHOT_JOB_IMAGE", raising=False)
    assert step_image() == job_image() == "registry.example/kshot:1"
    monkeypatch.setenv("KSHOT_STEP_IMAGE", "registry.example/kshot-cpu:1")
    assert (step_image(), job_image()) == (
        "registry.example/kshot-cpu:1",
        "registry.example/kshot:1",
    )
    monkeypatch.setenv("KSHOT_JOB_IMAGE", "registry.example/kshot-gpu:1")
    assert (step_image(), job_image()) == (
        "registry.example/kshot-cpu:1",
        "registry.example/kshot-gpu:1",
    )


def test_a_pipeline_compiled_with_two_images_runs_steps_in_one_and_jobs_in_the_other(
    tmp_path: Path,
) -> None:
    """The images are read when the components are defined: compile in a fresh interpreter."""
    output = tmp_path / "pipeline.yaml"
    env = {
        **os.environ,
        "KSHOT_STEP_IMAGE": "registry.example/kshot-cpu:1",
        "KSHOT_JOB_IMAGE": "registry.example/kshot:1",
        "KSHOT_IMAGE": "registry.example/unused:1",
    }
    command = [sys.executable, "-m", "kshot.cli", "pipeline", "compile", "--output", str(output)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    spec = next(yaml.safe_load_all(output.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/kshot-cpu:1"}
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["image"]["defaultValue"] == "registry.example/kshot:1"


# The "restricted" rules that a compiled pipeline has no field for (kfp-kubernetes 2.17 states
# only runAsUser, runAsGroup and runAsNonRoot): the KFP backend sets them on the executor.
_SET_BY_THE_BACKEND = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _stated_pod(spec: dict[str, Any], executor: str) -> dict[str, Any]:
    """The pod spec that the compiled pipeline states for one step's executor: its container with
    the platform spec's security context (and no volumes, no host namespaces, no ports)."""
    context = spec["platform"]["deploymentSpec"]["executors"][executor]["securityContext"]
    numeric = {"runAsUser", "runAsGroup"}  # protobuf's JSON writes int64 as strings
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    return {
        "containers": [
            {
                "name": "main",
                "image": container["image"],
                "securityContext": {
                    key: int(value) if key in numeric else value for key, value in context.items()
                },
            }
        ]
    }


def test_every_step_reaches_a_minio_root_with_the_keys_of_kfps_secret(
    both: dict[str, Any],
) -> None:
    """On KFP's default minio:// root each step reads and writes the store itself: every executor
    takes the keys from KFP's Secret, optional so that a namespace without it (a gs:// or s3://
    root) still runs."""
    executors = both["platform"]["deploymentSpec"]["executors"]
    assert set(executors) == set(_all_tasks(both))  # every step that runs a container
    for name, executor in executors.items():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretNameParameter"]["runtimeValue"]["constant"] == s3_store.MINIO_SECRET
        assert secret["optional"] is True, name
        assert {
            e["secretKey"]: e["envVar"] for e in secret["keyToEnv"]
        } == s3_store.MINIO_SECRET_KEYS


def test_step_pods_are_restricted_as_far_as_the_compiled_pipeline_can_state(
    both: dict[str, Any],
) -> None:
    for executor in both["platform"]["deploymentSpec"]["executors"]:
        pod = _stated_pod(both, executor)
        # what the pipeline states breaks no rule; only the fields it cannot state are missing
        assert restricted_violations(pod) == [
            "containers[main]: allowPrivilegeEscalation is not false",
            "containers[main]: capabilities do not drop ALL",
            "containers[main]: seccompProfile None is not RuntimeDefault/Localhost",
        ], executor
        pod["containers"][0]["securityContext"].update(_SET_BY_THE_BACKEND)
        assert restricted_violations(pod) == [], executor
        # nor can it make the root filesystem read-only (kfp-kubernetes has no such setting)
        assert read_only_root_violations(pod) == [
            "containers[main]: readOnlyRootFilesystem is not true"
        ]
