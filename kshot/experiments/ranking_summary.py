"""The ranking experiment's statistics and its pre-registered verdict.

Over the runs of :mod:`kshot.experiments.ranking`: each arm's mean, standard deviation (ddof 1) and
95 % t interval over seeds of every ranking metric, the paired differences of τ-a between arms with
one-sided paired t and Wilcoxon signed-rank tests, and the verdict of :func:`verdict`. Beside the
arms stand the zero-cost baselines of each seed's paths (:mod:`kshot.eval.baselines`: ranking by
parameter count and by FLOPs), scored alike and compared paired with the arms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from kshot.eval.baselines import BASELINES
from kshot.experiments.arms import ARMS

__all__ = [
    "PRIMARY",
    "MIN_SEEDS",
    "MIN_GAIN",
    "METRICS",
    "interval",
    "paired_comparison",
    "verdict",
    "describe_codes",
    "baseline_runs",
    "summarise_runs",
]

# The decision rule, fixed before any reported run (docs/results/ranking_cpu_proxy.md).
MIN_GAIN = 0.03  # Δτ-a that counts as reproducing (the paper's K = 8 − K = 1 gap: +0.076)
MIN_SEEDS = 6  # fewer paired seeds: inconclusive whatever the figures
PRIMARY = (("C", "A"), ("C", "B"))  # the primary endpoint: paired Δτ-a of C against A and B
_SECONDARY = (
    ("B", "A"),
    ("A-lr", "A"),
    ("B", "A-lr"),
    ("C", "C-iter"),
    ("C", "D"),
    ("C", "params"),
    ("A", "params"),
)
METRICS = ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r")


def interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1) and the two-sided ``level`` t interval of the mean.

    With one value the spread and the interval are None.
    """
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    out: dict[str, Any] = {"n": len(data), "mean": float(data.mean()) if len(data) else None}
    if len(data) < 2:
        return {**out, "std": None, "ci95": None}
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(data) - 1)) * std / math.sqrt(len(data))
    return {**out, "std": std, "ci95": [out["mean"] - half, out["mean"] + half]}


def paired_comparison(
    runs: Sequence[dict[str, Any]], better: str, than: str, metric: str = "kendall_tau_a"
) -> dict[str, Any]:
    """Δ = ``metric`` of arm ``better`` − arm ``than`` on every seed both have, with its interval
    (:func:`interval`), a one-sided paired t-test and a one-sided Wilcoxon signed-rank test (H1:
    Δ > 0; p None when fewer than 2 seeds)."""
    by_arm: dict[str, dict[int, float]] = {}
    for run in runs:
        by_arm.setdefault(run["arm"], {})[run["seed"]] = run[metric]
    seeds = sorted(set(by_arm.get(better, {})) & set(by_arm.get(than, {})))
    deltas = [by_arm[better][s] - by_arm[than][s] for s in seeds]
    out = {"arms": [better, than], "metric": metric, "seeds": seeds, "deltas": deltas}
    out.update(interval(deltas))
    t_p = wilcoxon_p = None
    if len(deltas) >= 2 and np.ptp(deltas) > 0:
        a = [by_arm[better][s] for s in seeds]
        b = [by_arm[than][s] for s in seeds]
        t_p = float(stats.ttest_rel(a, b, alternative="greater").pvalue)
    if len(deltas) >= 2 and any(deltas):
        wilcoxon_p = float(stats.wilcoxon(deltas, alternative="greater").pvalue)
    return {**out, "t_test_p": t_p, "wilcoxon_p": wilcoxon_p}


def verdict(comparison: dict[str, Any], codes_non_uniform: bool) -> str:
    """The pre-registered rule for one primary comparison.

    "reproduces": at least :data:`MIN_SEEDS` paired seeds, mean Δ ≥ :data:`MIN_GAIN` and the 95 %
    interval above 0. "refuted on this proxy": at least :data:`MIN_SEEDS` seeds, the interval's
    upper bound below :data:`MIN_GAIN` while the learned codes are non-uniform on every seed.
    Otherwise "inconclusive, add seeds".
    """
    if comparison["n"] >= MIN_SEEDS and comparison["ci95"] is not None:
        low, high = comparison["ci95"]
        if comparison["mean"] >= MIN_GAIN and low > 0:
            return "reproduces"
        if high < MIN_GAIN and codes_non_uniform:
            return "refuted on this proxy"
    return "inconclusive, add seeds"


def describe_codes(runs: Sequence[dict[str, Any]]) -> str:
    """In words: whether an arm's codes λ stayed near uniform on its seeds and how alike the codes
    of different paths are (the ranked paths' mean statistics, :func:`code_statistics`)."""
    if runs[0]["k"] == 1:
        return "K = 1: λ = [1], no code to learn"
    near = sum(r["lam_near_uniform"] for r in runs)
    tv = float(np.mean([r["lam"]["tv"] for r in runs]))
    top = float(np.mean([r["lam"]["max"] for r in runs]))
    cosine = float(np.mean([r["lam"]["cosine"] for r in runs]))
    k = runs[0]["k"]
    if near == len(runs):
        words = (
            f"the codes stayed near uniform on every seed (mean distance from 1/K {tv:.3f} < "
            f"0.1, mean max λ {top:.3f} against 1/K = {1 / k:.3f}): no K-shot effect can show"
        )
    elif near:
        words = (
            f"the codes stayed near uniform on {near} of {len(runs)} seeds (mean distance {tv:.3f})"
        )
    else:
        words = (
            f"the codes moved off uniform on every seed (mean distance from 1/K {tv:.3f}, mean "
            f"max λ {top:.3f} against 1/K = {1 / k:.3f})"
        )
    apart = [r["lam"]["pairwise_tv"] for r in runs if "pairwise_tv" in r["lam"]]
    distance = (
        f", mean distance between two paths' codes {float(np.mean(apart)):.3f}" if apart else ""
    )
    if cosine > 0.95:
        words += (
            f"; the codes of different paths are nearly parallel (mean cosine {cosine:.3f}"
            f"{distance}): λ reweights the slots alike for all paths more than it tells paths apart"
        )
    else:
        words += f"; mean cosine between the codes of different paths {cosine:.3f}{distance}"
    return words


def baseline_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pseudo-run per seed and baseline (``arm`` the baseline's key, e.g. ``params``) from the
    runs' recorded baselines: each seed's arms rank the same paths, so its first run's serve."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for run in runs:
        if run["seed"] in seen or not run.get("baselines"):
            continue
        seen.add(run["seed"])
        for name in BASELINES:
            out.append({"arm": name, "seed": run["seed"], **run["baselines"][name]})
    return out


def _intervals(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every metric's :func:`interval` over the seeds of one arm (or baseline)."""
    row: dict[str, Any] = {key: interval([r[key] for r in group]) for key in METRICS}
    row["top_group_tau"] = {
        n: interval([r["top_group_tau"][n] for r in group]) for n in group[0]["top_group_tau"]
    }
    return row


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: every metric's :func:`interval` over seeds and the codes' mean statistics; the same
    for the zero-cost baselines (:func:`baseline_runs`); the paired comparisons; the verdict per
    primary comparison and overall ("reproduces" when both reproduce, "refuted on this proxy" when
    either is refuted, else "inconclusive, add seeds")."""
    arms: dict[str, Any] = {}
    for name in ARMS:
        group = [r for r in runs if r["arm"] == name]
        if not group:
            continue
        row: dict[str, Any] = {
            "label": ARMS[name].label,
            "seeds": [r["seed"] for r in group],
            "k": group[0]["k"],
            **_intervals(group),
        }
        row["lam"] = {s: interval([r["lam"][s] for r in group]) for s in group[0]["lam"]}
        row["lam_near_uniform"] = [r["lam_near_uniform"] for r in group]
        row["lam_in_words"] = describe_codes(group)
        arms[name] = row
    sizes = baseline_runs(runs)
    baselines = {
        name: {
            "label": f"{title} (zero-cost)",
            "seeds": [r["seed"] for r in group],
            **_intervals(group),
        }
        for name, title in BASELINES.items()
        if (group := [r for r in sizes if r["arm"] == name])
    }
    compared = [*runs, *sizes]
    comparisons = [
        paired_comparison(compared, a, b)
        for a, b in (*PRIMARY, *_SECONDARY)
        if a in arms and (b in arms or b in baselines)
    ]
    learned = [r for r in runs if r["arm"] == "C"]
    non_uniform = bool(learned) and not any(r["lam_near_uniform"] for r in learned)
    verdicts = {
        f"{c['arms'][0]} vs {c['arms'][1]}": verdict(c, non_uniform)
        for c in comparisons
        if tuple(c["arms"]) in PRIMARY
    }
    if len(verdicts) == len(PRIMARY) and all(v == "reproduces" for v in verdicts.values()):
        overall = "reproduces"
    elif any(v == "refuted on this proxy" for v in verdicts.values()):
        overall = "refuted on this proxy"
    else:
        overall = "inconclusive, add seeds"
    summary: dict[str, Any] = {"arms": arms}
    if baselines:
        summary["baselines"] = baselines
    return {
        **summary,
        "comparisons": comparisons,
        "learned_codes_non_uniform": non_uniform,
        "verdicts": verdicts,
        "verdict": overall,
    }
