"""Zero-cost baselines of a ranking: the same paths ranked by parameter count and by FLOPs.

A supernet's ranking means something only where it beats ranking the paths by how big they are.
On NAS-Bench-201, ordering all 15,625 cells by parameter count against their CIFAR-10 test accuracy
gives τ-a 0.552 and τ-b 0.578 (ρ 0.753): about the paper's one-shot τ (0.550, Table 9) and below
its K = 8 (0.626). Every ranking the project reports therefore carries these two baselines, scored
on the same paths against the same ground truth with the same metrics
(:func:`kshot.eval.ranking.ranking_metrics`), and says in words whether the supernet beats them.

The counts are exact, from :class:`kshot.spaces.Space` at the run's network shape and resolution
(the order of NAS-Bench-201 cells by either count does not depend on C or N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kshot.eval.ranking import ranking_metrics
from kshot.spaces import Space

__all__ = ["BASELINES", "baseline_counts", "baseline_metrics", "compare_with_baselines"]

BASELINES: dict[str, str] = {
    "params": "counting parameters",
    "flops": "counting FLOPs",
}
"""The baselines: key (as in metrics JSON and the scores CSV's ``<key>_m`` column) → name."""


def baseline_counts(space: Space, archs: Sequence[str]) -> dict[str, list[float]]:
    """Millions of parameters and MFLOPs of each path of ``archs``, in their order."""
    paths = [space.parse(a) for a in archs]
    return {
        "params": [space.params(p) for p in paths],
        "flops": [space.flops(p) for p in paths],
    }


def baseline_metrics(
    truth: Sequence[float], counts: Mapping[str, Sequence[float]], top_n: Sequence[int] = ()
) -> dict[str, dict[str, Any]]:
    """:func:`~kshot.eval.ranking.ranking_metrics` of each baseline's counts against ``truth``."""
    return {name: ranking_metrics(truth, counts[name], top_n) for name in BASELINES}


def compare_with_baselines(metrics: Mapping[str, Any], key: str = "kendall_tau_a") -> str:
    """In words: whether the supernet's ``key`` beats each baseline's on the same paths.

    Args:
        metrics: a rank result holding ``key`` and ``baselines`` (:func:`baseline_metrics`).
        key: the metric compared (default the paper's τ-a, Eq. 18).

    Returns:
        e.g. "the supernet ranks worse than counting parameters (τ-a 0.120 against 0.540) and
        worse than counting FLOPs (0.120 against 0.530)"; an empty string when there is nothing
        to compare.
    """
    ours = metrics.get(key)
    baselines = metrics.get("baselines") or {}
    if not isinstance(ours, (int, float)) or not baselines:
        return ""
    label = {"kendall_tau_a": "τ-a", "kendall_tau_b": "τ-b"}.get(key, key)
    parts = []
    for name, title in BASELINES.items():
        theirs = baselines.get(name, {}).get(key)
        if not isinstance(theirs, (int, float)):
            continue
        side = "better than" if ours > theirs else "as well as" if ours == theirs else "worse than"
        figures = f"{ours:.3f} against {theirs:.3f}"
        parts.append(f"{side} {title} ({label + ' ' if not parts else ''}{figures})")
    if not parts:
        return ""
    return "the supernet ranks " + " and ".join(parts)
