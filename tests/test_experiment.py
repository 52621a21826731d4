"""A miniature of the ranking experiment on real CIFAR-10 images and NAS-Bench-201 ground truth."""

from __future__ import annotations

import json

import pytest

from kshot.cli import main
from tests.conftest import shared_data


@pytest.mark.slow
def test_ranking_experiment_reports_every_run_from_the_stated_number_of_paths(tmp_path):
    cifar, truth = shared_data("cifar10"), shared_data("nb201", "nb201_accuracy.csv")
    out = tmp_path / "report.json"
    overrides = {
        "dataset": str(cifar),
        "ground_truth": str(truth),
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

    # resumable: a second call reads the finished runs back instead of training again
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("rank.json")}
    assert main(argv) == 0
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("rank.json")}


def test_the_ranking_experiment_refuses_ranking_off_before_training(tiny_cfg, tmp_path):
    from kshot.eval.experiment import run_ranking_experiment

    cfg = tiny_cfg.replace(ranking=False, ground_truth="gt.csv")
    with pytest.raises(ValueError, match="'ranking' to be true"):
        run_ranking_experiment(
            cfg, [1], [0], False, str(tmp_path / "work"), str(tmp_path / "r.json")
        )
    assert not (tmp_path / "work").exists()
