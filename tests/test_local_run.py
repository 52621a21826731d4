"""The whole DAG (`kshot run --local`) and the K sweep through kfp.local on the built-in digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from kfp import local

from kshot import storage
from kshot.cli import main
from kshot.config import load_config, parse_overrides
from kshot.export import load_model
from kshot.pipeline.local_run import DEFAULT_CONFIG, pipeline_arguments, publish
from kshot.pipeline.sweep import kshot_k_sweep
from kshot.spaces import mbv2
from tests.conftest import MBV2_TINY

FLOPS_BUDGET = 0.25  # MFLOPs: about the median path of the tiny digits supernet
STANDALONE_PATHS = 4
TINY = [
    "epochs=2",
    "warmup_epochs=1",
    "population=4",
    "generations=2",
    "parents=2",
    "bn_images=128",
    f"standalone_paths={STANDALONE_PATHS}",
    "standalone_epochs=1",
    "retrain_epochs=1",
    "top_n=[2, 3]",
    f"flops_budget={FLOPS_BUDGET}",
    "k=2",
]


def _task_metrics(artifacts: Path, task: str) -> dict[str, float]:
    """The Metrics that ``task`` logged, from kfp.local's executor output."""
    (executor_output,) = artifacts.glob(f"kshot-nas-*/{task}/executor_output.json")
    outputs = json.loads(executor_output.read_text())["artifacts"]
    return outputs["metrics"]["artifacts"][0]["metadata"]


@pytest.mark.slow
def test_the_local_run_completes_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    overrides = [arg for pair in TINY for arg in ("--set", pair)]
    assert main(["run", "--local", *overrides, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((output / "summary.json").read_text())
    assert json.loads(printed[printed.rindex("\n{\n") + 1 :]) == summary  # printed last

    assert summary["k"] == 2
    assert summary["best_arch"].startswith("|") and summary["best_arch"].count("~") == 6
    assert 0.0 < summary["best_flops"] <= FLOPS_BUDGET
    assert 0.0 <= summary["best_accuracy"] <= 100.0
    assert 0.0 <= summary["retrained_test_accuracy"] <= 100.0
    assert summary["n_paths"] == STANDALONE_PATHS
    for name in ("kendall_tau", "spearman_rho", "pearson_r"):
        assert math.isfinite(summary[name]) and -1.0 <= summary[name] <= 1.0, name
    assert set(summary["top_group_tau"]) == {"2", "3"}
    assert summary["wall_time_s"] > 0

    reports = summary["reports"]
    for name in ("training", "search", "retrain", "rank"):
        page = Path(reports[name]).read_text()
        assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page, name
    markdown = Path(reports["summary_markdown"]).read_text()
    assert summary["best_arch"].replace("|", "\\|") in markdown
    assert "kendall_tau" in markdown

    artifacts = output / "artifacts"
    rank_metrics = _task_metrics(artifacts, "rank")
    assert rank_metrics["kendall_tau"] == pytest.approx(summary["kendall_tau"])
    assert rank_metrics["n_paths"] == STANDALONE_PATHS
    run_metrics = _task_metrics(artifacts, "summarize")
    assert run_metrics["best_flops"] == pytest.approx(summary["best_flops"])
    assert run_metrics["retrained_test_accuracy"] == pytest.approx(
        summary["retrained_test_accuracy"]
    )
    (table,) = artifacts.glob("kshot-nas-*/ground-truth/table")
    assert len(table.read_text().splitlines()) == 1 + STANDALONE_PATHS


@pytest.mark.slow
def test_the_local_run_searches_the_mbv2_space_on_class_folders(
    tmp_path: Path, cifar_folders: Path
) -> None:
    """The paper's ImageNet space through the same DAG, on a tiny class-folder tree, with ranking
    off as for ImageNet (the rank and standalone stages run on mbv2 in test_mbv2_run)."""
    budget = 0.15  # MFLOPs at width 1/8 and 16x16: about the median path
    settings = {
        key: MBV2_TINY[key]
        for key in (
            "search_space",
            "width_mult",
            "channel_divisor",
            "resolution",
            "valid_fraction",
            "batch_size",
            "m",
            "bn_images",
            "bn_batch_size",
            "retrain_recipe",
            "retrain_batch_size",
            "retrain_ema_decay",
        )
    }
    overrides = [*TINY, f"flops_budget={budget}", "ranking=false", f"dataset={cifar_folders}"]
    overrides += [f"{key}={value}" for key, value in settings.items()]
    output = tmp_path / "run"
    argv = [
        "run",
        "--local",
        *[a for o in overrides for a in ("--set", o)],
        "--output",
        str(output),
    ]
    # the default config file's NAS-Bench-201 shape is named as ignored, not silently dropped
    with pytest.warns(UserWarning, match=r"'channels' \(from .*digits-tiny.yaml\).* 'mbv2'"):
        assert main(argv) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["search_space"] == "mbv2"
    assert mbv2.parse(summary["best_arch"]) and 0 < summary["best_flops"] <= budget
    assert 0.0 <= summary["retrained_test_accuracy"] <= 100.0
    # no ground truth for an ImageNet-style search: ranking is switched off, and says so
    assert summary["n_paths"] == 0 and summary["kendall_tau"] is None
    assert "ranking is off" in summary["ground_truth"]
    assert "ranking is off" in Path(summary["reports"]["rank"]).read_text()
    (model_file,) = (output / "artifacts").glob("kshot-nas-*/retrain/model")
    model, meta = load_model(str(model_file))
    assert meta["arch"] == summary["best_arch"]
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_pipeline_arguments_put_other_keys_in_extra_config() -> None:
    cfg = load_config(DEFAULT_CONFIG, {"k": 4})
    arguments = pipeline_arguments(cfg)
    assert arguments["k"] == 4 and arguments["dataset"] == "digits"
    assert arguments["launcher"] == "local"
    extra = json.loads(arguments["extra_config"])
    assert extra["channels"] == cfg.channels and extra["cells"] == cfg.cells
    assert "k" not in extra and "epochs" not in extra


def test_a_bad_override_stops_the_local_run_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--local", "--set", "m=5", "--output", str(tmp_path)]) == 2
    assert "config key 'm' from --set" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_gcs_output_gets_the_artifacts_and_the_summary(tmp_path: Path, gcs_bucket: str) -> None:
    artifacts = tmp_path / "artifacts"
    page = artifacts / "kshot-nas-run" / "rank" / "rank_page"
    page.parent.mkdir(parents=True)
    page.write_text("<!DOCTYPE html>")
    prefix = f"{gcs_bucket}/runs/one"
    summary = publish({"k": 2, "reports": {"rank": str(page)}}, artifacts, prefix)
    page_uri = f"{prefix}/artifacts/kshot-nas-run/rank/rank_page"
    assert summary["reports"]["rank"] == page_uri
    assert storage.read_text(page_uri) == "<!DOCTYPE html>"
    assert storage.read_json(f"{prefix}/summary.json") == summary


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning")
def test_the_k_sweep_runs_locally_and_plots_tau_against_k(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG, parse_overrides(TINY))
    arguments = pipeline_arguments(cfg)
    del arguments["k"]
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    kshot_k_sweep(k_values=[1, 2], **arguments)

    (plot,) = tmp_path.glob("kshot-nas-k-sweep-*/plot-tau-vs-k")
    outputs = json.loads((plot / "executor_output.json").read_text())["artifacts"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    for k in (1, 2):
        assert -1.0 <= metrics[f"kendall_tau_k{k}"] <= 1.0
    page = (plot / "page").read_text()
    assert "Kendall τ against K" in page and "data:image/png;base64," in page
    rankings = sorted(tmp_path.glob("kshot-nas-k-sweep-*/for-loop-*-iteration-*/rank/ranking"))
    assert sorted(json.loads(p.read_text())["k"] for p in rankings) == [1, 2]
