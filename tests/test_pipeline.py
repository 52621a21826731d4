"""The compiled pipelines: stages, defaults, artifact wiring, the config step's validation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import dsl, local
from kfp.dsl.types.type_utils import InconsistentTypeException

from kshot.cli import main
from kshot.components import stages
from kshot.components.runtime import (
    NAMESPACE_ENV,
    PIPELINE_CONFIG_KEYS,
    build_config,
    handoff_uri,
    run_pipeline_stage,
)
from kshot.config import Config, ConfigError
from kshot.launch import LaunchError
from kshot.pipeline.cli import compile_pipeline
from kshot.pipeline.sweep import DEFAULT_K_VALUES, K_PARALLELISM
from kshot.stages import STAGES

CONFIG_OUTPUT = {"producerTask": "configure", "outputParameterKey": "config"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("pipelines") / "pipeline.yaml"
    assert compile_pipeline(str(path)) == "kshot-nas"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compiled_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("pipelines") / "sweep.yaml"
    assert compile_pipeline(str(path), sweep=True) == "kshot-nas-k-sweep"
    return yaml.safe_load(path.read_text())


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
        assert container["image"] == stages.component_image()


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
    assert parameters["image"]["defaultValue"] == stages.component_image()


def test_artifacts_flow_from_stage_to_stage(compiled: dict[str, Any]) -> None:
    tasks = _tasks(compiled)
    assert _artifact_source(tasks["warmup"], "split") == ("split", "split")
    assert _artifact_source(tasks["train"], "warmup_checkpoint") == ("warmup", "checkpoint")
    assert _artifact_source(tasks["search"], "checkpoint") == ("train", "checkpoint")
    assert _artifact_source(tasks["rank"], "checkpoint") == ("train", "checkpoint")
    assert _artifact_source(tasks["recalibrate"], "checkpoint") == ("train", "checkpoint")
    assert _artifact_source(tasks["recalibrate"], "search_results") == ("search", "results")
    assert _artifact_source(tasks["retrain"], "results") == ("recalibrate", "results")
    assert _artifact_source(tasks["rank"], "truth") == ("ground-truth", "table")
    assert _artifact_source(tasks["summarize"], "ranking") == ("rank", "ranking")
    assert _artifact_source(tasks["summarize"], "retrained") == ("retrain", "retrained")
    assert _artifact_source(tasks["summarize"], "truth") == ("ground-truth", "table")
    # rank runs beside search: neither waits for the other
    assert "search" not in tasks["rank"]["dependentTasks"]
    assert "rank" not in tasks["search"]["dependentTasks"]


def test_k_reaches_every_stage_through_the_config_step(compiled: dict[str, Any]) -> None:
    tasks = _tasks(compiled)
    configure = tasks["configure"]["inputs"]["parameters"]
    for key in (*PIPELINE_CONFIG_KEYS, "image", "launcher", "extra_config"):
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
    assert "split" in standalone["inputs"]["artifacts"]
    source = tasks["ground-truth"]["inputs"]["parameters"]["table_uri"]["taskOutputParameter"]
    assert source["producerTask"] == "condition-branches-1"


def test_the_sweep_fans_out_over_k_and_plots_tau(compiled_sweep: dict[str, Any]) -> None:
    parameters = compiled_sweep["root"]["inputDefinitions"]["parameters"]
    assert parameters["k_values"]["defaultValue"] == DEFAULT_K_VALUES
    assert "k" not in parameters
    tasks = _tasks(compiled_sweep)
    loop = next(task for task in tasks.values() if "parameterIterator" in task)
    assert loop["taskInfo"]["name"] == "for-each-k"
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--k_values"
    body = _tasks(compiled_sweep, loop["componentRef"]["name"])
    assert {"warmup", "train", "rank"} <= set(body)
    config_k = next(name for name in body if name.startswith("configure"))
    k_input = body[config_k]["inputs"]["parameters"]["k"]["componentInputParameter"]
    assert k_input == loop["parameterIterator"]["itemInput"]
    assert _artifact_source(body["rank"], "checkpoint") == ("train", "checkpoint")
    plot = tasks["plot-tau-vs-k"]["inputs"]["artifacts"]["rankings"]["taskOutputArtifact"]
    assert tasks[plot["producerTask"]] is loop
    outputs = compiled_sweep["components"][loop["componentRef"]["name"]]["outputDefinitions"]
    assert outputs["artifacts"][plot["outputArtifactKey"]]["isArtifactList"] is True


def test_the_sweep_trains_a_bounded_number_of_k_at_once(compiled_sweep: dict[str, Any]) -> None:
    loop = next(task for task in _tasks(compiled_sweep).values() if "parameterIterator" in task)
    assert K_PARALLELISM >= 1
    assert loop["iteratorPolicy"]["parallelismLimit"] == K_PARALLELISM


MINIO_RUN = "minio://mlpipeline/v2/artifacts/kshot-nas/run-1"


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_a_job_refuses_artifacts_its_pods_cannot_reach_before_it_starts(
    launcher: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(NAMESPACE_ENV, "team-a")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster"))
    split = dsl.Dataset(uri="gs://bucket/kshot-nas/run-1/split/split")
    checkpoint = dsl.Model(uri=f"{MINIO_RUN}/warmup/checkpoint")
    config = json.dumps(Config().to_dict())

    with pytest.raises(LaunchError) as failure:
        run_pipeline_stage("warmup", config, {"split": split}, {"checkpoint": checkpoint}, launcher)
    message = str(failure.value)
    assert f"warmup: output 'checkpoint' of the {launcher} job is {checkpoint.uri}" in message
    assert "minio:// pipeline root" in message and "--pipeline-root gs://" in message
    assert "s3://BUCKET/PREFIX" in message
    assert not Path(checkpoint.path).exists()


def test_a_uri_handed_to_a_later_step_must_reach_its_pod() -> None:
    table = dsl.Dataset(uri=f"{MINIO_RUN}/standalone/table")
    with pytest.raises(ValueError, match=f"output 'table' is {table.uri}, which other pods"):
        handoff_uri(table, "table")
    for bucket in ("gs://bucket", "s3://bucket"):
        in_store = dsl.Dataset(uri=f"{bucket}/run-1/standalone/table")
        assert handoff_uri(in_store, "table") == in_store.uri
    on_this_machine = dsl.Dataset(uri="/tmp/kfp-local/standalone/table")  # kfp.local
    assert handoff_uri(on_this_machine, "table") == on_this_machine.uri


def _arguments(**changes: Any) -> dict[str, Any]:
    defaults = Config()
    arguments = {key: getattr(defaults, key) for key in PIPELINE_CONFIG_KEYS}
    arguments.update(image=stages.component_image(), launcher="local", extra_config="")
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, "config key 'k' from pipeline parameters: 0 must be >= 1"),
        ({"m": 7}, "config key 'm' from pipeline parameters: 7 does not divide batch_size"),
        (
            {"extra_config": '{"chanels": 4}'},
            "unknown config key 'chanels' from pipeline parameter 'extra_config'",
        ),
        ({"extra_config": "k: 4"}, "pipeline parameter 'extra_config' sets k"),
        ({"launcher": "slurm"}, "pipeline parameter 'launcher': 'slurm' is not one of"),
        ({"image": "Not An Image"}, "pipeline parameter 'image'"),
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


@pytest.mark.filterwarnings(_SAME_IMAGE)
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, "config key 'k' from pipeline parameters: 0 must be >= 1"),
        ({"m": 7}, "config key 'm' from pipeline parameters: 7 does not divide batch_size"),
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
    assert main(["pipeline", "compile", "--sweep", "--output", str(output)]) == 0
    assert yaml.safe_load(output.read_text())["pipelineInfo"]["name"] == "kshot-nas-k-sweep"
    assert str(output) in capsys.readouterr().out
