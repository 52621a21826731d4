"""How well supernet scores rank architectures against their stand-alone (ground-truth) accuracy.

Kendall's τ-a is the paper's Eq. 18 (Su et al., ICML 2021): concordant minus discordant pairs over
all N(N − 1)/2 pairs, a pair tied on either side counting as neither. τ-b (scipy's default) divides
by the pairs untied on each side instead; the two differ only with ties, which supernet accuracies
on a few thousand images have often. Spearman's ρ and Pearson's r are scipy's. The top-group τ is
the paper's appendix C.1: the truly best ``n`` paths against the rest (:func:`kendall_tau_top_group`).

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
    "kendall_tau_a",
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


def _tied_pairs(values: np.ndarray) -> int:
    """Pairs of equal values."""
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau_a(truth: ArrayLike, scores: ArrayLike) -> float:
    """Kendall's τ-a, the paper's Eq. 18: ``(concordant − discordant) / (N(N − 1)/2)``.

    A pair tied in ground truth or in score is neither concordant nor discordant but stays in the
    denominator. Computed from scipy's τ-b and the tie counts: ``C − D = τ_b · √((n₀ − n₁)(n₀ −
    n₂))`` with n₀ = N(N − 1)/2 and n₁, n₂ the pairs tied in truth and in scores.

    Returns:
        τ-a in [-1, 1]; NaN when either side is constant (as τ-b).
    """
    truth_values, score_values = _paired(truth, scores)
    if _either_constant(truth_values, score_values):
        return math.nan
    n0 = len(truth_values) * (len(truth_values) - 1) // 2
    untied = (n0 - _tied_pairs(truth_values)) * (n0 - _tied_pairs(score_values))
    tau_b = stats.kendalltau(truth_values, score_values).statistic
    return float(tau_b * math.sqrt(untied) / n0)


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
    """The top-group Kendall τ of the paper's appendix C.1 (its Fig. 5).

    The high group is the ``n`` paths with the highest ground truth, the low group the other
    ``N − n`` (ties at the boundary are broken by position, the earlier path into the high group).
    Exactly the ``n(N − n)`` pairs ``(a_high, a_low)`` with ``a_high`` high and ``a_low`` low count;
    pairs inside either group do not. A pair is concordant when the supernet ranks ``a_high``
    above ``a_low`` (``scores[a_high] > scores[a_low]``), discordant when below, and neither when
    the scores tie (as in τ-a). A pair whose ground truth ties across the boundary still counts:
    the groups are the ground truth's ranking, cut at ``n``.

    Args:
        truth: Ground-truth accuracy of every path.
        scores: Supernet score of every path, in the same order.
        n: Size of the high group.

    Returns:
        ``(concordant − discordant) / (n(N − n))`` in [-1, 1]; NaN when ``n >= N`` (no low group).

    Raises:
        ValueError: ``n < 1``, or the sequences are unequal, shorter than 2 or non-finite.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"top-group size n must be an integer >= 1, got {n!r}")
    truth_values, score_values = _paired(truth, scores)
    total = len(truth_values)
    if n >= total:
        return math.nan
    order = np.argsort(-truth_values, kind="stable")
    group, low_scores = order[: int(n)], score_values[order[int(n) :]]
    rows_per_block = max(1, _MAX_BLOCK_ELEMENTS // len(low_scores))
    concordant = discordant = 0
    for start in range(0, len(group), rows_per_block):
        score_diff = score_values[group[start : start + rows_per_block], None] - low_scores[None, :]
        concordant += int((score_diff > 0).sum())
        discordant += int((score_diff < 0).sum())
    return (concordant - discordant) / (int(n) * (total - int(n)))


def ranking_metrics(
    truth: ArrayLike, scores: ArrayLike, top_n: Sequence[int] = ()
) -> dict[str, int | float | dict[str, float]]:
    """Every ranking metric of one set of scored paths, ready for ``json.dumps``.

    Args:
        truth: Ground-truth accuracy of every path.
        scores: Supernet score of every path, in the same order.
        top_n: Group sizes for :func:`kendall_tau_top_group`.

    Returns:
        ``{"n_paths", "kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r",
        "top_group_tau"}``, the last a dict ``{str(n): τ}`` (appendix C.1's) in the order of
        ``top_n``.

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
        "kendall_tau_a": kendall_tau_a(truth_values, score_values),
        "kendall_tau_b": kendall_tau(truth_values, score_values),
        "spearman_rho": spearman_rho(truth_values, score_values),
        "pearson_r": pearson_r(truth_values, score_values),
        "top_group_tau": {
            str(int(n)): kendall_tau_top_group(truth_values, score_values, int(n)) for n in top_n
        },
    }


def metrics_from_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A rank stage's metrics as read back from JSON: the ``null`` written for a correlation that
    is undefined (constant ground truth or scores) is NaN again, as :func:`ranking_metrics` gave it;
    the same for each baseline's metrics under ``baselines``."""

    def number(value: Any) -> Any:
        return math.nan if value is None else value

    out = dict(doc)
    for key in ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
        if key in out:
            out[key] = number(out[key])
    if isinstance(out.get("top_group_tau"), dict):
        out["top_group_tau"] = {n: number(v) for n, v in out["top_group_tau"].items()}
    if isinstance(out.get("baselines"), dict):
        out["baselines"] = {name: metrics_from_json(m) for name, m in out["baselines"].items()}
    return out
