"""The ranking experiment: its arms, its statistics and decision rule, a miniature run on real
CIFAR-10 images and NAS-Bench-201 ground truth, and the committed results recomputed."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from kshot import report as plots
from kshot.cli import main
from kshot.config import ConfigError
from kshot.eval.baselines import BASELINES, baseline_counts, baseline_metrics
from kshot.eval.ranking import ranking_metrics
from kshot.experiments.ranking_summary import (
    MIN_SEEDS,
    describe_codes,
    interval,
    paired_comparison,
    summarise_runs,
    verdict,
)
from kshot.experiments.simplex_pilot import choose_simplex_setting, pilot_variants
from kshot.nn.simplex import code_statistics
from kshot.spaces import NB201Space, Space
from kshot.train.checkpoint import load_latest
from tests.conftest import fake_run, shared_data
from tests.test_local_run import assert_ranking_recomputes
from tests.test_report import pixels

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"
RESULTS = RESULTS_DIR / "ranking_cpu_proxy"


def test_interval_is_the_t_interval_with_ddof_1():
    values = [0.31, 0.35, 0.29, 0.40, 0.33]
    row = interval(values)
    assert row["std"] == pytest.approx(np.std(values, ddof=1))
    expected = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert row["ci95"] == pytest.approx(list(expected))
    assert interval([0.3]) == {"n": 1, "mean": 0.3, "std": None, "ci95": None}


def _runs(a: list[float], b: list[float]) -> list[dict]:
    return [
        {"arm": arm, "seed": seed, "kendall_tau_a": tau}
        for arm, taus in (("C", a), ("A", b))
        for seed, tau in enumerate(taus)
    ]


def test_paired_comparison_pairs_by_seed_with_one_sided_tests():
    a, b = [0.40, 0.35, 0.42, 0.38, 0.45, 0.37], [0.33, 0.36, 0.35, 0.30, 0.41, 0.30]
    runs = _runs(a, b)
    runs.append({"arm": "C", "seed": 9, "kendall_tau_a": 0.9})  # no partner: left out
    row = paired_comparison(runs, "C", "A")
    assert row["seeds"] == list(range(6))
    assert row["deltas"] == pytest.approx(np.subtract(a, b).tolist())
    assert row["t_test_p"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    deltas = np.subtract(a, b)
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(deltas, alternative="greater").pvalue)
    assert row["t_test_p"] < 0.05  # one-sided: half the two-sided p
    assert row["t_test_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue / 2)


@pytest.mark.parametrize(
    ("deltas", "non_uniform", "expected"),
    [
        ([0.05, 0.06, 0.04, 0.05, 0.07, 0.05], True, "reproduces"),
        ([0.05, 0.06, 0.04, 0.05, 0.07], True, "inconclusive, add seeds"),  # 5 seeds
        ([0.0, 0.01, -0.01, 0.0, 0.01, -0.01], True, "refuted on this proxy"),
        ([0.0, 0.01, -0.01, 0.0, 0.01, -0.01], False, "inconclusive, add seeds"),  # λ uniform
        ([0.02, 0.04, 0.025, 0.015, 0.035, 0.025], True, "inconclusive, add seeds"),  # < +0.03
        ([0.2, -0.1, 0.15, -0.05, 0.1, 0.0], True, "inconclusive, add seeds"),  # CI spans 0
    ],
)
def test_the_decision_rule(deltas, non_uniform, expected):
    row = paired_comparison(_runs(deltas, [0.0] * len(deltas)), "C", "A")
    assert verdict(row, non_uniform) == expected
    assert MIN_SEEDS == 6


def test_pilot_rule_reads_only_the_simplex_loss_and_the_spread_of_codes():
    pilot = {
        "0.001": {"simplex_loss": 1.90, "lam_tv": 0.02},  # lowest loss, but codes stay uniform
        "0.01": {"simplex_loss": 1.95, "lam_tv": 0.15},
        "0.1": {"simplex_loss": 2.10, "lam_tv": 0.40},
    }
    assert choose_simplex_setting(pilot) == "0.01"
    uniform = {lr: {**row, "lam_tv": 0.01 * i} for i, (lr, row) in enumerate(pilot.items())}
    assert choose_simplex_setting(uniform) == "0.1"  # none spreads: the largest spread
    # codes that tell paths apart come first, even at a higher loss
    specific = {
        "base": {"simplex_loss": 1.95, "lam_tv": 0.5, "lam_pairwise_tv": 0.02},
        "m=2": {"simplex_loss": 2.00, "lam_tv": 0.3, "lam_pairwise_tv": 0.25},
        "simplex_hidden=256": {"simplex_loss": 2.05, "lam_tv": 0.3, "lam_pairwise_tv": 0.3},
        "simplex_lr=0.001": {"simplex_loss": 1.80, "lam_tv": 0.05, "lam_pairwise_tv": 0.2},
    }
    assert choose_simplex_setting(specific) == "m=2"
    specific["m=2"]["lam_pairwise_tv"] = 0.05
    assert choose_simplex_setting(specific) == "simplex_hidden=256"
    specific["simplex_hidden=256"]["lam_pairwise_tv"] = 0.05
    assert choose_simplex_setting(specific) == "base"  # none path-specific: the old rule


def test_pilot_variants_change_one_key_at_a_time_and_check_it(tiny_cfg):
    variants = pilot_variants(tiny_cfg, [("simplex_hidden", ["16", 64, 256]), ("m", ["2"])])
    assert tiny_cfg.simplex_hidden == 64  # so 64 is the base, tried once
    assert list(variants) == ["base", "simplex_hidden=16", "simplex_hidden=256", "m=2"]
    assert variants["simplex_hidden=16"] == tiny_cfg.replace(simplex_hidden=16)
    assert variants["m=2"] == tiny_cfg.replace(m=2)
    with pytest.raises(ConfigError, match="--vary simplex_hidden=0: .*simplex_hidden"):
        pilot_variants(tiny_cfg, [("simplex_hidden", ["0"])])
    with pytest.raises(ConfigError, match="--vary hidden=8: unknown config key 'hidden'"):
        pilot_variants(tiny_cfg, [("hidden", ["8"])])


def test_the_report_says_in_words_when_codes_stayed_near_uniform():
    def run(tv: float, cosine: float) -> dict:
        stats_ = {"tv": tv, "max": 0.125 + tv / 2, "cosine": cosine}
        return {"k": 8, "lam": stats_, "lam_near_uniform": tv < 0.1}

    uniform = describe_codes([run(0.05, 0.99), run(0.08, 0.99)])
    assert "stayed near uniform on every seed" in uniform and "no K-shot effect" in uniform
    assert "nearly parallel" in uniform
    moved = describe_codes([run(0.3, 0.5), run(0.4, 0.6)])
    assert "moved off uniform on every seed" in moved and "nearly parallel" not in moved
    assert "1 of 2 seeds" in describe_codes([run(0.05, 0.5), run(0.4, 0.5)])
    assert "no code" in describe_codes([{"k": 1}])


def _space_of_report(config: dict) -> Space:
    """The NAS-Bench-201 space at a CIFAR-10 ranking config's network shape and resolution."""
    shape = {"C": config["channels"], "N": config["cells"], "num_classes": 10, "in_channels": 3}
    return NB201Space(shape, resolution=config["resolution"])


def _recompute(record: dict, rows: list[dict[str, str]], space: Space | None = None) -> None:
    """A run's record holds exactly the metrics of its per-path scores, and its baselines those of
    the paths' exact sizes in ``space`` (the table's own ``params_m`` / ``flops_m`` where it has
    them, which must be those sizes)."""
    truth = [float(r["ground_truth"]) for r in rows]
    scores = [float(r["supernet_accuracy"]) for r in rows]
    top_n = [int(n) for n in record["top_group_tau"]]
    metrics = ranking_metrics(truth, scores, top_n)
    for key in ("n_paths", "kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
        assert record[key] == pytest.approx(metrics[key], abs=1e-12), key
    assert record["top_group_tau"] == pytest.approx(metrics["top_group_tau"], nan_ok=True)
    if space is not None:
        counts = baseline_counts(space, [r["arch"] for r in rows])
        if "params_m" in rows[0]:
            for name in BASELINES:
                listed = [float(r[f"{name}_m"]) for r in rows]
                assert listed == pytest.approx(counts[name], rel=1e-12), name
        expected = baseline_metrics(truth, counts, top_n)
        for name in BASELINES:
            got = record["baselines"][name]
            for key in ("n_paths", "kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
                assert got[key] == pytest.approx(expected[name][key], abs=1e-12), (name, key)
            top = expected[name]["top_group_tau"]
            assert got["top_group_tau"] == pytest.approx(top, nan_ok=True), name
    lams = np.array([[float(r[f"lam_{i}"]) for i in range(record["k"])] for r in rows])
    codes = code_statistics(lams)
    assert record["lam"] == pytest.approx(codes["mean"], abs=1e-6)
    assert record["lam_near_uniform"] == codes["near_uniform"]
    archs = "\n".join(r["arch"] for r in rows)
    assert record["path_set_sha256"] == hashlib.sha256(archs.encode()).hexdigest()


def _sizes(space: Space):
    return lambda arch: (space.params(arch), space.flops(arch))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(p.stem for p in RESULTS_DIR.glob("ranking_cpu*.json")))
def test_the_committed_runs_recompute_from_their_scores(name):
    """docs/results/<name>: every run's metrics and its baselines' from its own per-path scores,
    every arm of a seed on the same paths, and the report's summary that of these runs."""
    results = RESULTS_DIR / name
    report = json.loads(results.with_suffix(".json").read_text())
    records = [json.loads(p.read_text()) for p in sorted(results.glob("seed*-*.json"))]
    assert records, f"no run in {results}"
    space = _space_of_report(report["config"])
    for record in records:
        _recompute(record, _csv(results / f"seed{record['seed']}-{record['arm']}.csv"), space)
    for seed in {r["seed"] for r in records}:
        assert len({r["path_set_sha256"] for r in records if r["seed"] == seed}) == 1
    by_key = {(r["arm"], r["seed"]): r for r in records}
    assert {(r["arm"], r["seed"]) for r in report["runs"]} == set(by_key)
    ordered = [by_key[(r["arm"], r["seed"])] for r in report["runs"]]
    assert json.loads(json.dumps(summarise_runs(ordered))) == report["summary"]


def test_the_summary_sets_the_arms_beside_the_baselines_of_their_paths():
    """Each seed's baselines are counted once (its arms rank the same paths) and compared paired
    with the arms: C − counting parameters is a secondary reading, never a verdict."""

    def run(arm: str, seed: int, tau: float, params_tau: float) -> dict:
        sizes = {"kendall_tau_a": params_tau, "kendall_tau_b": params_tau, "spearman_rho": 0.7}
        base = {**sizes, "pearson_r": 0.3, "top_group_tau": {"5": 0.4}}
        lam = {"tv": 0.3, "max": 0.4, "cosine": 0.5}
        flops = {**base, "kendall_tau_a": params_tau - 0.1}
        return fake_run(arm, seed, tau, lam=lam, baselines={"params": base, "flops": flops})

    runs = [
        run(arm, s, tau + s / 100, 0.5 + s / 50)
        for s in range(3)
        for arm, tau in (("A", 0.3), ("C", 0.4))
    ]
    summary = summarise_runs(runs)
    sizes = summary["baselines"]["params"]
    assert sizes["seeds"] == [0, 1, 2]
    assert sizes["kendall_tau_a"]["mean"] == pytest.approx(0.52)
    assert summary["baselines"]["flops"]["kendall_tau_a"]["mean"] == pytest.approx(0.42)
    (c_vs_params,) = [c for c in summary["comparisons"] if c["arms"] == ["C", "params"]]
    assert c_vs_params["deltas"] == pytest.approx([0.4 + s / 100 - 0.5 - s / 50 for s in range(3)])
    assert set(summary["verdicts"]) == {"C vs A"}  # C vs B: no B; the baselines give no verdict
    assert "params" not in summary["arms"]


@pytest.mark.slow
def test_ranking_experiment_runs_paired_arms_and_reports_them(tmp_path):
    cifar, truth = shared_data("cifar10"), shared_data("nb201", "nb201_accuracy.csv")
    out = tmp_path / "report.json"
    overrides = {
        "dataset": str(cifar),
        "ground_truth": "nb201",
        "resolution": 8,
        "train_subset": 700,
        "valid_fraction": 0.1,
        "channels": 4,
        "cells": 1,
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 64,
        "m": 4,
        "lr_min": 0.001,
        "simplex_lr": 0.05,
        "rank_paths": 24,
        "bn_images": 64,
        "bn_batch_size": 64,
        "top_n": [5, 10],
        "num_threads": 1,
    }
    arms = ["A", "B", "C", "C-iter", "D", "A-lr"]
    argv = ["experiment", "ranking", "--k", "2", "--seeds", "0,1", "--arms", ",".join(arms)]
    argv += ["--workdir", str(tmp_path / "runs"), "--out", str(out)]
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        argv += ["--set", f"{key}={text}"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    results = tmp_path / "report"

    runs = report["runs"]
    assert [(r["seed"], r["arm"]) for r in runs] == [(s, a) for s in (0, 1) for a in arms]
    expected = {
        "A": (1, "learned", "supernet_steps"),
        "A-lr": (1, "learned", "supernet_steps"),
        "B": (2, "fixed", "supernet_steps"),
        "C": (2, "learned", "supernet_steps"),
        "C-iter": (2, "learned", "iterations"),
        "D": (2, "random", "supernet_steps"),
    }
    with truth.open(newline="") as f:
        table = {row["arch"]: float(row["cifar10_test"]) for row in csv.DictReader(f)}
    rows_of = {}
    for run in runs:
        assert (run["k"], run["lambda_mode"], run["budget"]) == expected[run["arm"]]
        assert run["lr"] == pytest.approx(0.1 / 2 if run["arm"] == "A-lr" else 0.1)
        record = json.loads((results / f"seed{run['seed']}-{run['arm']}.json").read_text())
        assert {k: v for k, v in record.items() if k != "curves"} == run
        csv_path = results / f"seed{run['seed']}-{run['arm']}.csv"
        space = _space_of_report(report["config"])
        rows = assert_ranking_recomputes(run, csv_path, table, run["k"], _sizes(space))
        _recompute(record, rows, space)
        rows_of[(run["seed"], run["arm"])] = rows
    # paired: every arm of a seed ranks the same paths, another seed other paths
    for seed in (0, 1):
        assert len({r["path_set_sha256"] for r in runs if r["seed"] == seed}) == 1
    assert runs[0]["path_set_sha256"] != runs[-1]["path_set_sha256"]
    lams = {
        key: np.array([[float(r[f"lam_{i}"]) for i in range(2)] for r in rows])
        for key, rows in rows_of.items()
        if expected[key[1]][0] == 2
    }
    assert np.allclose(lams[(0, "B")], 0.5)  # fixed 1/K
    assert np.ptp(lams[(0, "D")][:, 0]) > 0.3  # one random code per path, scored with it
    assert np.ptp(lams[(0, "C")][:, 0]) > 1e-4  # π(a) tells paths apart
    assert runs[0]["lam_near_uniform"] and not runs[4]["lam_near_uniform"]  # A; D
    # equal Θ updates: C takes one simplex-net step per Θ update, C′ (Algorithm 2) shares them
    steps = {
        arm: load_latest(str(tmp_path / "runs" / "seed0" / arm / "checkpoint"))["step"]
        for arm in ("A", "C", "C-iter")
    }
    assert steps["C"] == 2 * steps["A"] and steps["C-iter"] == steps["A"]
    # the summary: ddof-1 intervals per arm, paired differences, the rule's verdict
    summary = report["summary"]
    for arm in arms:
        values = [r["kendall_tau_a"] for r in runs if r["arm"] == arm]
        expected, row = interval(values), summary["arms"][arm]["kendall_tau_a"]
        assert row.keys() == expected.keys()
        for key, value in expected.items():  # approx compares no nested containers
            assert row[key] == pytest.approx(value), (arm, key)
    (c_vs_a,) = [c for c in summary["comparisons"] if c["arms"] == ["C", "A"]]
    by = {(r["arm"], r["seed"]): r["kendall_tau_a"] for r in runs}
    assert c_vs_a["deltas"] == pytest.approx([by["C", s] - by["A", s] for s in (0, 1)])
    assert summary["verdicts"] == {
        "C vs A": "inconclusive, add seeds",
        "C vs B": "inconclusive, add seeds",
    }
    assert summary["verdict"] == "inconclusive, add seeds"  # 2 seeds < 6, whatever the figures
    assert np.array_equal(
        pixels((tmp_path / "report.png").read_bytes()), pixels(plots.ranking_summary_plot(report))
    )

    # resumable run by run: a second call reads the finished runs back instead of training again
    before = {p: p.stat().st_mtime for p in results.glob("*.json")}
    assert main(argv) == 0
    assert before == {p: p.stat().st_mtime for p in results.glob("*.json")}
    assert json.loads(out.read_text()) == report


def test_the_ranking_experiment_refuses_bad_requests_before_training(tiny_cfg, tmp_path):
    from kshot.experiments.ranking import run_ranking_experiment

    work, out = str(tmp_path / "work"), str(tmp_path / "r.json")
    cfg = tiny_cfg.replace(ranking=False, ground_truth="gt.csv")
    with pytest.raises(ValueError, match="'ranking' to be true"):
        run_ranking_experiment(cfg, ["A"], [0], 8, work, out)
    cfg = tiny_cfg.replace(ground_truth="gt.csv")
    with pytest.raises(ValueError, match="unknown arm.*E"):
        run_ranking_experiment(cfg, ["A", "E"], [0], 8, work, out)
    with pytest.raises(ValueError, match="--k 1"):
        run_ranking_experiment(cfg, ["A"], [0], 1, work, out)
    assert not (tmp_path / "work").exists()
