"""A miniature of the ranking experiment on real CIFAR-10 images and NAS-Bench-201 ground truth."""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import json

import numpy as np
import pytest

from kshot import report as plots
from kshot.cli import main
from tests.conftest import shared_data
from tests.test_local_run import assert_ranking_recomputes
from tests.test_report import pixels


@pytest.mark.slow
def test_ranking_experiment_reports_every_run_from_the_stated_number_of_paths(tmp_path):
    cifar = shared_data("cifar10")
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
        "rank_paths": 24,
        "bn_images": 64,
        "bn_batch_size": 64,
        "top_n": [5, 10],
        "num_threads": 1,
    }
    argv = [
        "experiment",
        "ranking",
        "--k",
        "1,2",
        "--seeds",
        "0,1",
        "--ablations",
        "--workdir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
    ]
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        argv += ["--set", f"{key}={text}"]
    assert main(argv) == 0
    report = json.loads(out.read_text())

    runs = report["runs"]
    assert {(r["k"], r["seed"], r["lambda_mode"]) for r in runs} == {
        (k, s, m)
        for s in (0, 1)
        for k, m in [(1, "learned"), (2, "learned"), (2, "fixed"), (2, "random")]
    }
    for run in runs:
        assert run["n_paths"] == 24
        for key in ("kendall_tau", "spearman_rho", "pearson_r"):
            assert -1 <= run[key] <= 1
        assert set(run["top_group_tau"]) == {"5", "10"}
    for row in report["summary"]:
        assert row["n_paths"] == 24 and row["seeds"] == [0, 1]
        values = [
            r["kendall_tau"]
            for r in runs
            if r["k"] == row["k"] and r["lambda_mode"] == row["lambda_mode"]
        ]
        assert row["kendall_tau"]["mean"] == pytest.approx(sum(values) / 2)
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")

    # every run's numbers are those of the scores table it wrote: 24 paths of NAS-Bench-201, one
    # seeded sample per seed, each with its CIFAR-10 accuracy from the table
    shipped = importlib.resources.files("kshot.eval") / "nb201_accuracy.csv.gz"
    with gzip.open(shipped.open("rb"), "rt", newline="") as f:
        table = {row["arch"]: float(row["cifar10_test"]) for row in csv.DictReader(f)}
    sampled: dict[int, set[str]] = {}
    for run in runs:
        folder = tmp_path / "runs" / f"seed{run['seed']}" / f"k{run['k']}-{run['lambda_mode']}"
        assert json.loads((folder / "rank.json").read_text())["k"] == run["k"]
        rows = assert_ranking_recomputes(run, folder / "scores.csv", table, run["k"])
        assert sampled.setdefault(run["seed"], {r["arch"] for r in rows}) == {
            r["arch"] for r in rows
        }
        lams = np.array([[float(row[f"lam_{i}"]) for i in range(run["k"])] for row in rows])
        if run["lambda_mode"] == "fixed" or run["k"] == 1:
            assert np.allclose(lams, 1.0 / run["k"])  # Table 6's fixed λ = 1/K, and K = 1
        if run["lambda_mode"] == "learned" and run["k"] > 1:
            assert np.ptp(lams[:, 0]) > 1e-4  # π(a): the simplex-net tells paths apart
    assert sampled[0] != sampled[1]
    # the ablations trained otherwise than the learned runs: their scores differ
    for seed in (0, 1):
        accuracy = {
            mode: (tmp_path / "runs" / f"seed{seed}" / f"k2-{mode}" / "scores.csv").read_text()
            for mode in ("learned", "fixed", "random")
        }
        assert len(set(accuracy.values())) == 3
    # the summary: mean and spread over the seeds of each (K, mode), for every metric
    for row in report["summary"]:
        group = [r for r in runs if (r["k"], r["lambda_mode"]) == (row["k"], row["lambda_mode"])]
        for key in ("kendall_tau", "spearman_rho", "pearson_r"):
            values = [r[key] for r in group]
            assert row[key] == pytest.approx({"mean": np.mean(values), "std": np.std(values)})
        for n in ("5", "10"):
            values = [r["top_group_tau"][n] for r in group]
            assert row["top_group_tau"][n] == pytest.approx(
                {"mean": np.mean(values), "std": np.std(values)}
            )
    # the figure beside the report is this summary's τ against K, every mode
    assert np.array_equal(
        pixels((tmp_path / "report.png").read_bytes()),
        pixels(plots.ranking_summary_plot(report["summary"])),
    )

    # resumable: a second call reads the finished runs back instead of training again
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("rank.json")}
    assert main(argv) == 0
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("rank.json")}
    assert json.loads(out.read_text()) == report  # and reports the same


def test_the_ranking_experiment_refuses_ranking_off_before_training(tiny_cfg, tmp_path):
    from kshot.eval.experiment import run_ranking_experiment

    cfg = tiny_cfg.replace(ranking=False, ground_truth="gt.csv")
    with pytest.raises(ValueError, match="'ranking' to be true"):
        run_ranking_experiment(
            cfg, [1], [0], False, str(tmp_path / "work"), str(tmp_path / "r.json")
        )
    assert not (tmp_path / "work").exists()
