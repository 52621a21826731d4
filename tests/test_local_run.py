"""The whole DAG (`kshot run --local`) and the K sweep through kfp.local on the built-in digits."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from kshot import report, storage
from kshot.cli import main
from kshot.config import load_config
from kshot.data.datasets import load_dataset
from kshot.data.transforms import normalize
from kshot.eval.ground_truth import write_ground_truth_csv
from kshot.eval.standalone_rank import TEST_IMAGES_COLUMN, best_standalone_rank
from kshot.export import load_model
from kshot.nn.simplex import code_statistics
from kshot.pipeline.local_run import DEFAULT_CONFIG, pipeline_arguments, publish, summary_lines
from kshot.spaces import NB201Space, mbv2, nb201
from kshot.stages.rank import SCORE_COLUMNS
from tests.conftest import MBV2_TINY
from tests.object_stores import Remote
from tests.test_report import pixels

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


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _top_group_tau(truth: list[float], scores: list[float], n: int) -> float:
    """The paper's top-group τ (appendix C.1), pair by pair: the n truly best against the rest."""
    order = sorted(range(len(truth)), key=lambda i: -truth[i])
    if n >= len(truth):
        return math.nan
    signs = [np.sign(scores[i] - scores[j]) for i in order[:n] for j in order[n:]]
    return float(sum(signs)) / len(signs)


def _tau_a(truth: list[float], scores: list[float]) -> float:
    """Eq. 18, pair by pair."""
    pairs = [(i, j) for i in range(len(truth)) for j in range(i + 1, len(truth))]
    total = sum(np.sign(truth[i] - truth[j]) * np.sign(scores[i] - scores[j]) for i, j in pairs)
    return float(total) / len(pairs)


def assert_ranking_recomputes(
    ranking: Mapping[str, Any],
    scores_csv: Path,
    truth: Mapping[str, float],
    k: int,
    sizes: Callable[[str], tuple[float, float]] | None = None,
) -> list[dict[str, str]]:
    """``ranking``'s τ, ρ, r and top-group τ are those of the scores table it came with, whose
    ground truth is ``truth``'s for every path and whose λ of every path is a point of K's simplex;
    so are the zero-cost baselines' (ranking by the table's parameter count and FLOPs), whose counts
    are ``sizes(arch)`` = (millions of parameters, MFLOPs) where given.

    Returns:
        The table's rows.
    """
    rows = _csv_rows(scores_csv)
    assert list(rows[0]) == [*SCORE_COLUMNS, *[f"lam_{i}" for i in range(k)]]
    assert [int(row["path_index"]) for row in rows] == list(range(len(rows)))
    assert len(rows) == ranking["n_paths"] == len({row["arch"] for row in rows})
    for row in rows:
        assert float(row["ground_truth"]) == pytest.approx(truth[row["arch"]]), row["arch"]
    lams = np.array([[float(row[f"lam_{i}"]) for i in range(k)] for row in rows])
    assert np.all(lams >= 0) and np.allclose(lams.sum(axis=1), 1.0, atol=1e-5)
    true = [float(row["ground_truth"]) for row in rows]
    score = [float(row["supernet_accuracy"]) for row in rows]
    assert ranking["kendall_tau_b"] == pytest.approx(stats.kendalltau(true, score).statistic)
    assert ranking["kendall_tau_a"] == pytest.approx(_tau_a(true, score))
    assert ranking["spearman_rho"] == pytest.approx(stats.spearmanr(true, score).statistic)
    assert ranking["pearson_r"] == pytest.approx(stats.pearsonr(true, score).statistic)
    for n, tau in ranking["top_group_tau"].items():
        assert tau == pytest.approx(_top_group_tau(true, score, int(n)), nan_ok=True), n
    for name in ("params", "flops"):
        count = [float(row[f"{name}_m"]) for row in rows]
        baseline = ranking["baselines"][name]
        assert baseline["kendall_tau_a"] == pytest.approx(_tau_a(true, count)), name
        assert baseline["kendall_tau_b"] == pytest.approx(stats.kendalltau(true, count).statistic)
        assert baseline["spearman_rho"] == pytest.approx(stats.spearmanr(true, count).statistic)
        assert baseline["pearson_r"] == pytest.approx(stats.pearsonr(true, count).statistic)
        for n, tau in baseline["top_group_tau"].items():
            assert tau == pytest.approx(_top_group_tau(true, count, int(n)), nan_ok=True), n
    if sizes is not None:
        for row in rows:
            counted = (float(row["params_m"]), float(row["flops_m"]))
            assert counted == pytest.approx(sizes(row["arch"]), rel=1e-12), row["arch"]
    stats_of = code_statistics(lams)["per_path"]
    for name in ("max", "sq_norm", "entropy", "tv"):
        recorded = [float(row[f"lam_{name}"]) for row in rows]
        assert recorded == pytest.approx(stats_of[name].tolist(), abs=1e-6), name
    return rows


def assert_page_shows(page: str, pngs: list[bytes]) -> None:
    """The HTML page's figures are, pixel for pixel, ``pngs`` (drawn here from the run's data)."""
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pngs)
    for number, (data, png) in enumerate(zip(embedded, pngs, strict=True)):
        assert np.array_equal(pixels(base64.b64decode(data)), pixels(png)), f"figure {number}"


def assert_best_path_in_budget(
    run: Path, summary: Mapping[str, Any], flops: Callable[[str], float], population: int
) -> None:
    """The search scored ``population`` x generations distinct paths, each within the budget at
    its true FLOPs; recalibration re-scored its front and best; the summary's path is the most
    accurate of those, within the budget, its FLOPs the space's formula's."""
    budget = summary["flops_budget"]
    searched = json.loads((run / "search" / "results").read_text())
    archs = [path["arch"] for path in searched["evaluated"]]
    assert len(archs) == population * 2 == len(set(archs))  # generations=2
    for path in searched["evaluated"]:
        assert path["flops"] == pytest.approx(flops(path["arch"])) and path["flops"] <= budget
    rescored = json.loads((run / "recalibrate" / "results").read_text())
    assert {path["arch"] for path in rescored["evaluated"]} == {
        path["arch"] for path in [*searched["front"], searched["best"]]
    }
    in_budget = [path for path in rescored["evaluated"] if path["flops"] <= budget]
    assert summary["best_supernet_accuracy"] == max(path["accuracy"] for path in in_budget)
    assert summary["best_arch"] in {
        path["arch"] for path in in_budget if path["accuracy"] == summary["best_supernet_accuracy"]
    }
    assert summary["best_flops"] == pytest.approx(flops(summary["best_arch"]), rel=1e-9)
    assert summary["best_flops"] <= budget


def assert_exported_model_scores(
    model_file: Path | str, summary: Mapping[str, Any], images: torch.Tensor, labels: torch.Tensor
) -> None:
    """The exported network is the best path retrained: on the test images, normalised by its own
    metadata, it gets the test accuracy the summary reports."""
    model, meta = load_model(str(model_file))
    assert meta["arch"] == summary["best_arch"]
    with torch.no_grad():
        predictions = model(normalize(images, meta["mean"], meta["std"])).argmax(1)
    accuracy = 100.0 * float((predictions == labels).double().mean())
    assert accuracy == pytest.approx(summary["retrained_test_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_the_local_run_completes_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    overrides = [arg for pair in TINY for arg in ("--set", pair)]
    assert main(["run", "--local", *overrides, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((output / "summary.json").read_text())
    # a quiet console: one line per step start and end, then the summary a person wants
    lines = printed.splitlines()
    assert len(lines) < 60, printed
    last = summary_lines(summary, str(output))
    assert lines[-len(last) :] == last
    for figure in (
        summary["best_arch"],
        f"retrained test accuracy {summary['retrained_test_accuracy']:.2f} %",
        f"τ-a {summary['kendall_tau_a']:.3f}, τ-b {summary['kendall_tau_b']:.3f}, "
        f"ρ {summary['spearman_rho']:.3f}, r {summary['pearson_r']:.3f}",
        str(output / "summary.json"),
        "rank among the stand-alone sample: ",
    ):
        assert figure in printed, figure
    assert "✓ retrain" in printed and "executor_input" not in printed
    # the details are in the logs: kfp.local's in pipeline.log, each step's in its own
    logs = output / "logs"
    assert "Got executor_input" in (logs / "pipeline.log").read_text()
    assert "kshot result: retrain: " in (logs / "retrain.log").read_text()

    assert summary["k"] == 2
    assert summary["best_arch"].startswith("|") and summary["best_arch"].count("~") == 6
    assert 0.0 < summary["best_flops"] <= FLOPS_BUDGET
    assert 0.0 <= summary["best_supernet_accuracy"] <= 100.0
    assert 0.0 <= summary["retrained_test_accuracy"] <= 100.0
    assert summary["n_paths"] == STANDALONE_PATHS
    for name in ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
        assert math.isfinite(summary[name]) and -1.0 <= summary[name] <= 1.0, name
    assert set(summary["top_group_tau"]) == {"2", "3"}
    assert summary["wall_time_s"] > 0

    reports = summary["reports"]
    for name in ("training", "search", "retrain", "rank"):
        page = Path(reports[name]).read_text()
        assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page, name
    # the pages again as OUTPUT/report/NAME.html, linked by relative path from its index.html
    index = Path(summary["report"])
    assert index == (output / "report" / "index.html").resolve()
    hrefs = re.findall(r'href="([^"]+)"', index.read_text())
    assert sorted(hrefs) == ["rank.html", "retrain.html", "search.html", "training.html"]
    for href in hrefs:
        assert (index.parent / href).read_text() == Path(reports[href[: -len(".html")]]).read_text()
    markdown = Path(reports["summary_markdown"]).read_text()
    assert summary["best_arch"].replace("|", "\\|") in markdown
    assert "kendall_tau_a" in markdown

    artifacts = output / "artifacts"
    rank_metrics = _task_metrics(artifacts, "rank")
    assert rank_metrics["kendall_tau_a"] == pytest.approx(summary["kendall_tau_a"])
    assert rank_metrics["n_paths"] == STANDALONE_PATHS
    run_metrics = _task_metrics(artifacts, "summarize")
    assert run_metrics["best_flops"] == pytest.approx(summary["best_flops"])
    assert run_metrics["retrained_test_accuracy"] == pytest.approx(
        summary["retrained_test_accuracy"]
    )
    (table,) = artifacts.glob("kshot-nas-*/ground-truth/table")
    assert len(table.read_text().splitlines()) == 1 + STANDALONE_PATHS

    # the search: the most accurate recalibrated path within the budget, at its true FLOPs (digits:
    # 8x8 grey images, 10 classes, C = 8, N = 1)
    (run,) = artifacts.glob("kshot-nas-*")
    digits_shape = {"C": 8, "N": 1, "num_classes": 10, "in_channels": 1, "resolution": 8}
    assert_best_path_in_budget(run, summary, lambda a: nb201.flops(a, **digits_shape), 4)
    assert summary["retrained_params"] == pytest.approx(
        nb201.params(summary["best_arch"], **digits_shape)
    )
    # the ranking: the standalone stage's sample, every path of it scored, the correlations those
    # of the scores table; the standalone accuracies spread, so the ranking has something to rank
    truth = {row["arch"]: float(row["accuracy"]) for row in _csv_rows(table)}
    assert truth == {
        row["arch"]: float(row["accuracy"]) for row in _csv_rows(run / "standalone" / "table")
    }
    assert max(truth.values()) - min(truth.values()) > 20.0  # measured: 8.5 to 76.6 %
    ranking = json.loads((run / "rank" / "ranking").read_text())
    correlations = ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r")
    assert {name: summary[name] for name in correlations} == {
        name: ranking[name] for name in correlations
    }
    assert summary["top_group_tau"] == ranking["top_group_tau"]

    def sizes(arch: str) -> tuple[float, float]:
        return nb201.params(arch, **digits_shape), nb201.flops(arch, **digits_shape)

    rows = assert_ranking_recomputes(ranking, run / "rank" / "scores", truth, 2, sizes)
    assert {row["arch"] for row in rows} == set(truth)
    # beside them, the same paths ranked by counting parameters, and in words whether it is beaten
    for name in correlations:
        assert summary[f"params_{name}"] == ranking["baselines"]["params"][name]
        assert summary[f"flops_{name}"] == ranking["baselines"]["flops"][name]
    assert summary["against_baselines"].startswith("the supernet ranks ")
    assert summary["against_baselines"] in printed
    # the retrained path (as many epochs as the sample: TINY) ranked among the sample's other
    # paths: 1 + those more accurate, out of them and it
    retrained = json.loads((run / "retrain" / "retrained").read_text())
    assert retrained["arch"] == summary["best_arch"]
    others = [acc for arch, acc in truth.items() if arch != summary["best_arch"]]
    better = sum(acc > retrained["test_accuracy"] for acc in others)
    rank = summary["best_standalone_rank"]
    assert (rank["rank"], rank["of"]) == (1 + better, len(others) + 1)
    # with what it means: the spread of those accuracies against the binomial noise of one
    # measured on the split's test images (one epoch spreads the sample far beyond it)
    split = json.loads((run / "split" / "split").read_text())
    ranked = [retrained["test_accuracy"], *others]
    assert rank["test_images"] == len(split["test"])
    assert rank["spread_pp"] == pytest.approx(max(ranked) - min(ranked))
    mean = np.mean(ranked) / 100
    sd = 100 * math.sqrt(mean * (1 - mean) / len(split["test"]))
    assert rank["binomial_sd_pp"] == pytest.approx(sd)
    assert rank["within_noise"] is (rank["spread_pp"] <= rank["noise_range_pp"])
    assert " ".join(rank["reading"].split()) in " ".join(printed.split())
    # the rank page draws that table: the scatter, Fig. 5's curve and the λ histograms
    labels = {
        "kendall_tau_a": "Kendall τ-a",
        "kendall_tau_b": "Kendall τ-b",
        "spearman_rho": "Spearman ρ",
        "pearson_r": "Pearson r",
    }
    title = ", ".join(f"{label} = {ranking[name]:.3f}" for name, label in labels.items())
    columns = {name: [float(row[name]) for row in rows] for name in rows[0] if name != "arch"}
    rankers = {
        "supernet": ranking,
        "counting parameters": ranking["baselines"]["params"],
        "counting FLOPs": ranking["baselines"]["flops"],
    }
    bars = {
        ranker: {label: metrics[name] for name, label in labels.items()}
        for ranker, metrics in rankers.items()
    }
    assert_page_shows(
        Path(reports["rank"]).read_text(),
        [
            report.scatter_plot(columns["ground_truth"], columns["supernet_accuracy"], title),
            report.baseline_bars(bars),
            report.top_group_plot(ranking["top_group_tau"]),
            report.lambda_histogram(np.array([columns["lam_0"], columns["lam_1"]]).T),
        ],
    )
    # retraining: one epoch on digits takes the best path well above chance (10 %; measured 40 %),
    # and the exported network is that one
    assert summary["retrained_test_accuracy"] > 25.0
    digits = load_dataset("digits", "train")
    test = torch.as_tensor(split["test"])
    assert_exported_model_scores(
        run / "retrain" / "model", summary, digits.images[test], digits.labels[test]
    )


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
    assert summary["n_paths"] == 0 and summary["kendall_tau_a"] is None
    assert summary["best_standalone_rank"] is None
    assert "ranking is off" in summary["ground_truth"]
    assert "ranking is off" in Path(summary["reports"]["rank"]).read_text()
    (model_file,) = (output / "artifacts").glob("kshot-nas-*/retrain/model")
    model, meta = load_model(str(model_file))
    assert meta["arch"] == summary["best_arch"]
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    # the most accurate recalibrated path within the budget, at its FLOPs at width 1/8 and 16x16
    (run,) = (output / "artifacts").glob("kshot-nas-*")
    shape = {"width_mult": 0.125, "divisor": 1, "num_classes": 10, "in_channels": 3}
    assert_best_path_in_budget(
        run, summary, lambda a: mbv2.flops(a, resolution=16, **shape), population=4
    )


def test_the_console_says_when_the_stand_alone_sample_cannot_separate_its_paths(
    tmp_path: Path,
) -> None:
    """The digits default's case: 12 paths spanning 0.89 pp on 449 test images and a pick 0.67 pp
    below them (13 of 13), all within test-set noise; the rank is printed with that meaning."""
    space = NB201Space()
    archs = [space.format(path) for path in space.distinct_sample(13, 0)]
    sample = {arch: 97.33 + 0.0809 * i for i, arch in enumerate(archs[:12])}
    table = str(tmp_path / "table.csv")
    write_ground_truth_csv(table, sample, space=space, constants={TEST_IMAGES_COLUMN: 449})
    cfg = load_config(DEFAULT_CONFIG)
    rank = best_standalone_rank(cfg, archs[12], 96.66, table, space)
    summary = {
        "k": 8,
        "best_arch": archs[12],
        "best_supernet_accuracy": 96.66,
        "best_flops": 0.45,
        "retrained_test_accuracy": 96.66,
        "best_standalone_rank": rank,
        "n_paths": 12,
        "ground_truth": "standalone stage (paths trained from scratch)",
        "report": "runs/local/report/index.html",
        "logs": "runs/local/logs",
        "wall_time_s": 200.0,
    }
    printed = " ".join(" ".join(summary_lines(summary, "runs/local")).split())
    assert "rank among the stand-alone sample: 13 of 13 the 13 accuracies span 1.56 pp" in printed
    assert "this sample cannot separate its paths, so the rank is noise" in printed
    assert "`kshot experiment ranking`" in printed and "docs/results/" in printed
    assert " ".join(rank["reading"].split()) in printed


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


def test_a_bucket_output_gets_the_artifacts_and_the_summary(tmp_path: Path, remote: Remote) -> None:
    artifacts = tmp_path / "artifacts"
    page = artifacts / "kshot-nas-run" / "rank" / "rank_page"
    page.parent.mkdir(parents=True)
    page.write_text("<!DOCTYPE html>")
    prefix = f"{remote.bucket}/runs/one"
    summary = publish({"k": 2, "reports": {"rank": str(page)}}, artifacts, prefix)
    page_uri = f"{prefix}/artifacts/kshot-nas-run/rank/rank_page"
    assert summary["reports"]["rank"] == page_uri
    assert storage.read_text(page_uri) == "<!DOCTYPE html>"
    assert storage.read_json(f"{prefix}/summary.json") == summary


@pytest.mark.slow
def test_a_local_run_to_s3_writes_the_summary_and_the_artifacts(
    s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kshot run --local --output s3://BUCKET/run`` against the local S3 server: the summary
    lands in the bucket and names the artifacts' s3:// URIs, which hold the reports and the
    exported model (loaded from the bucket, it scores what the summary says)."""
    prefix = storage.join(s3_bucket, "runs", "one")
    overrides = [arg for pair in TINY for arg in ("--set", pair)]
    assert main(["run", "--local", *overrides, "--output", prefix]) == 0
    printed = capsys.readouterr().out
    summary = storage.read_json(storage.join(prefix, "summary.json"))
    assert printed.endswith("\n".join(summary_lines(summary, prefix)) + "\n")

    objects = storage.list_uris(prefix)
    artifacts = storage.join(prefix, "artifacts")
    assert storage.join(prefix, "summary.json") in objects
    assert not [uri for uri in objects if uri.endswith(".partial")]
    for name in ("training", "search", "retrain", "rank"):
        assert summary["reports"][name] in objects and summary["reports"][name].startswith(
            artifacts
        )
        page = storage.read_text(summary["reports"][name])
        assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page, name
    (model,) = [uri for uri in objects if uri.endswith("/retrain/model")]
    (split,) = [uri for uri in objects if uri.endswith("/split/split")]
    test = torch.as_tensor(storage.read_json(split)["test"])
    digits = load_dataset("digits", "train")
    assert_exported_model_scores(model, summary, digits.images[test], digits.labels[test])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning")
def test_the_k_sweep_runs_locally_and_plots_tau_against_k(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "sweep"
    overrides = [arg for pair in TINY for arg in ("--set", pair)]
    assert main(["run", "--local", "--sweep", "k=1,2", *overrides, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((output / "summary.json").read_text())
    assert len(printed.splitlines()) < 60, printed
    assert printed.endswith("\n".join(summary_lines(summary, str(output))) + "\n")
    artifacts = output / "artifacts"

    (plot,) = artifacts.glob("kshot-nas-k-sweep-*/plot-tau-vs-k")
    outputs = json.loads((plot / "executor_output.json").read_text())["artifacts"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    page = (plot / "page").read_text()
    assert "Kendall τ-a against K" in page and "data:image/png;base64," in page
    rankings = sorted(artifacts.glob("kshot-nas-k-sweep-*/for-loop-*-iteration-*/rank/ranking"))
    assert sorted(json.loads(p.read_text())["k"] for p in rankings) == [1, 2]

    # every K ranked the one shared ground truth with its own K slots, and the plot step reports
    # each K's correlations as recomputed from that K's scores table
    (table,) = artifacts.glob("kshot-nas-k-sweep-*/ground-truth/table")
    truth = {row["arch"]: float(row["accuracy"]) for row in _csv_rows(table)}
    assert len(truth) == STANDALONE_PATHS
    points = []
    for path in rankings:
        ranking = json.loads(path.read_text())
        k = ranking["k"]
        rows = assert_ranking_recomputes(ranking, path.parent / "scores", truth, k)
        assert {row["arch"] for row in rows} == set(truth)
        for name in ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
            assert metrics[f"{name}_k{k}"] == pytest.approx(ranking[name]), (name, k)
        points.append((k, ranking["kendall_tau_a"]))
        for name in ("kendall_tau_a", "spearman_rho"):
            sized = ranking["baselines"]["params"][name]
            assert metrics[f"params_{name}_k{k}"] == pytest.approx(sized), (name, k)
    assert len(metrics) == 2 * 12  # per K: 4 correlations, and 4 of each of the 2 baselines
    # the summary printed and written is that artifact's: τ-a, ρ, r of each K and the τ-against-K page
    assert summary["k_values"] == [1, 2]
    for row, (k, tau) in zip(summary["per_k"], points, strict=True):
        assert (row["k"], row["kendall_tau_a"]) == (k, tau)
        assert f"K = {k:>2}: τ-a {tau:.3f}" in printed
    assert Path(summary["reports"]["tau_vs_k"]).read_text() == page
    # τ against K of these rankings, beside ranking the same paths by parameters and by FLOPs
    baselines = {
        "counting parameters": ranking["baselines"]["params"]["kendall_tau_a"],
        "counting FLOPs": ranking["baselines"]["flops"]["kendall_tau_a"],
    }
    assert_page_shows(page, [report.tau_vs_k_plot(points, baselines)])
