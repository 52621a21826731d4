"""How well supernet scores rank architectures against their stand-alone (ground-truth) accuracy.

The global correlations are scipy's: Kendall's τ-b, Spearman's ρ and Pearson's r. The top-group
Kendall τ is the one of the paper's Fig. 5 (Su et al., ICML 2021): it asks whether the supernet
ranks each of the truly best ``n`` paths above every path that is truly worse than it.

All functions take two equally long 1-D sequences of finite numbers, ``truth[i]`` and ``scores[i]``
belonging to the same path ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "kendall_tau",
    "spearman_rho",
    "pearson_r",
    "kendall_tau_top_group",
    "ranking_metrics",
    "metrics_from_json",
]

# Upper bound on the elements of one (group rows x paths) comparison block, to bound memory when the
# group is large (all 15,625 NAS-Bench-201 cells against all of them would be 244 M pairs at once).
_MAX_BLOCK_ELEMENTS = 1 << 22


def _paired(truth: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (truth, scores) pair to float64 vectors."""
    truth_values = np.asarray(truth, dtype=np.float64)
    score_values = np.asarray(scores, dtype=np.float64)
    for name, values in (("truth", truth_values), ("scores", score_values)):
        if values.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence, got shape {values.shape}")
    if len(truth_values) != len(score_values):
        raise ValueError(
            f"truth and scores differ in length: {len(truth_values)} truth values, "
            f"{len(score_values)} scores"
        )
    if len(truth_values) < 2:
        raise ValueError(f"ranking needs at least 2 paths, got {len(truth_values)}")
    for name, values in (("truth", truth_values), ("scores", score_values)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"{name} holds {bad.size} non-finite value(s), the first {values[bad[0]]!r} at "
                f"position {bad[0]}"
            )
    return truth_values, score_values


def _either_constant(truth_values: np.ndarray, score_values: np.ndarray) -> bool:
    """Whether a correlation is undefined because one side holds a single value."""
    return bool(np.ptp(truth_values) == 0 or np.ptp(score_values) == 0)


def kendall_tau(truth: ArrayLike, scores: ArrayLike) -> float:
    """Kendall's τ-b between ground truth and supernet scores (``scipy.stats.kendalltau``).

    Returns:
        τ in [-1, 1]; NaN when either side is constant.
    """
    truth_values, score_values = _paired(truth, scores)
    if _either_constant(truth_values, score_values):
        return math.nan
    return float(stats.kendalltau(truth_values, score_values).statistic)


def spearman_rho(truth: ArrayLike, scores: ArrayLike) -> float:
    """Spearman's rank correlation ρ (``scipy.stats.spearmanr``); NaN if either side is constant."""
    truth_values, score_values = _paired(truth, scores)
    if _either_constant(truth_values, score_values):
        return math.nan
    return float(stats.spearmanr(truth_values, score_values).statistic)


def pearson_r(truth: ArrayLike, scores: ArrayLike) -> float:
    """Pearson's linear correlation r (``scipy.stats.pearsonr``); NaN if either side is constant."""
    truth_values, score_values = _paired(truth, scores)
    if _either_constant(truth_values, score_values):
        return math.nan
    return float(stats.pearsonr(truth_values, score_values).statistic)


def kendall_tau_top_group(truth: ArrayLike, scores: ArrayLike, n: int) -> float:
    """The top-group Kendall τ of the paper's Fig. 5.

    The group is the ``n`` paths with the highest ground truth (ties at the group's boundary are
    broken by position, the earlier path first). Every pair ``(a_high, a_low)`` with ``a_high`` in
    the group and ``truth[a_high] > truth[a_low]`` counts, ``a_low`` being any path inside or
    outside the group. A pair is concordant when ``scores[a_high] > scores[a_low]``, discordant when
    ``scores[a_high] < scores[a_low]``, and neither when the scores tie.

    Args:
        truth: Ground-truth accuracy of every path.
        scores: Supernet score of every path, in the same order.
        n: Size of the top group; larger than the number of paths means all paths (then the value
            is Kendall's τ-a over the pairs that the ground truth orders).

    Returns:
        ``(concordant - discordant) / pairs`` in [-1, 1]; NaN when no pair exists (the whole group
        ties in ground truth with every other path).

    Raises:
        ValueError: ``n < 1``, or the sequences are unequal, shorter than 2 or non-finite.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"top-group size n must be an integer >= 1, got {n!r}")
    truth_values, score_values = _paired(truth, scores)
    group_size = min(int(n), len(truth_values))
    group = np.argsort(-truth_values, kind="stable")[:group_size]
    rows_per_block = max(1, _MAX_BLOCK_ELEMENTS // len(truth_values))
    concordant = discordant = pairs = 0
    for start in range(0, group_size, rows_per_block):
        high = group[start : start + rows_per_block]
        ordered = truth_values[high, None] > truth_values[None, :]
        score_diff = score_values[high, None] - score_values[None, :]
        pairs += int(ordered.sum())
        concordant += int((ordered & (score_diff > 0)).sum())
        discordant += int((ordered & (score_diff < 0)).sum())
    if pairs == 0:
        return math.nan
    return (concordant - discordant) / pairs


def ranking_metrics(
    truth: ArrayLike, scores: ArrayLike, top_n: Sequence[int] = ()
) -> dict[str, int | float | dict[str, float]]:
    """Every ranking metric of one set of scored paths, ready for ``json.dumps``.

    Args:
        truth: Ground-truth accuracy of every path.
        scores: Supernet score of every path, in the same order.
        top_n: Group sizes for :func:`kendall_tau_top_group`.

    Returns:
        ``{"n_paths", "kendall_tau", "spearman_rho", "pearson_r", "top_group_tau"}``, the last a
        dict ``{str(n): τ}`` in the order of ``top_n``.

    Raises:
        ValueError: unequal lengths, fewer than 2 paths, non-finite values or an ``n < 1``, all
            checked before any metric is computed.
    """
    truth_values, score_values = _paired(truth, scores)
    for n in top_n:
        if int(n) != n or n < 1:
            raise ValueError(f"top_n holds {n!r}: every top-group size must be an integer >= 1")
    return {
        "n_paths": len(truth_values),
        "kendall_tau": kendall_tau(truth_values, score_values),
        "spearman_rho": spearman_rho(truth_values, score_values),
        "pearson_r": pearson_r(truth_values, score_values),
        "top_group_tau": {
            str(int(n)): kendall_tau_top_group(truth_values, score_values, int(n)) for n in top_n
        },
    }


def metrics_from_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A rank stage's metrics as read back from JSON: the ``null`` written for a correlation that
    is undefined (constant ground truth or scores) is NaN again, as :func:`ranking_metrics` gave it."""

    def number(value: Any) -> Any:
        return math.nan if value is None else value

    out = dict(doc)
    for key in ("kendall_tau", "spearman_rho", "pearson_r"):
        if key in out:
            out[key] = number(out[key])
    if isinstance(out.get("top_group_tau"), dict):
        out["top_group_tau"] = {n: number(v) for n, v in out["top_group_tau"].items()}
    return out
