"""Ranking evaluation on NAS-Bench-201: ground-truth tables and rank-correlation metrics."""

from __future__ import annotations

from kshot.eval.ground_truth import (
    BENCHMARK_DATASETS,
    align_scores,
    load_ground_truth,
    write_ground_truth_csv,
)
from kshot.eval.ranking import (
    kendall_tau,
    kendall_tau_a,
    kendall_tau_top_group,
    pearson_r,
    ranking_metrics,
    spearman_rho,
)

__all__ = [
    "BENCHMARK_DATASETS",
    "align_scores",
    "load_ground_truth",
    "write_ground_truth_csv",
    "kendall_tau",
    "kendall_tau_a",
    "kendall_tau_top_group",
    "pearson_r",
    "ranking_metrics",
    "spearman_rho",
]
