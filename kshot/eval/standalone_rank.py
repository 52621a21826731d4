"""Where the path a search picked lands among paths trained from scratch: the run's end-to-end check.

The ``standalone`` stage trains a seeded sample of paths of the space from scratch; ``retrain``
trains the path the search picked. When both use the same recipe and budget, the picked path's
retrained accuracy ranked among the sample's says whether the search beat a random draw of the
space, which τ over the sample alone cannot say.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

from kshot.config import Config
from kshot.eval.ground_truth import load_ground_truth
from kshot.spaces import Space

__all__ = ["rank_in_sample", "best_standalone_rank"]


def rank_in_sample(accuracy: float, sample: Mapping[str, float], arch: str) -> dict[str, int]:
    """The rank (1 = most accurate) of ``accuracy`` among the sample's accuracies.

    Args:
        accuracy: the picked path's stand-alone accuracy.
        sample: stand-alone accuracy of every sampled path, by arch string.
        arch: the picked path's arch string (normalised as the sample's keys); when the sample
            holds it too, that entry is left out, as another training of the same path.

    Returns:
        ``{"rank": r, "of": n}``: n counts the picked path and the sample's other paths; a tie
        shares the better rank (scipy's ``rankdata(method="min")``).

    Raises:
        ValueError: the sample holds no other path.
    """
    others = [value for name, value in sample.items() if name != arch]
    if not others:
        raise ValueError(f"the stand-alone sample holds no path other than {arch!r} to rank it by")
    ranks = stats.rankdata(-np.array([accuracy, *others], dtype=np.float64), method="min")
    return {"rank": int(ranks[0]), "of": len(others) + 1}


def best_standalone_rank(
    cfg: Config, arch: str, accuracy: float, sample_uri: str, space: Space
) -> dict[str, int] | None:
    """:func:`rank_in_sample` of the retrained path, or ``None`` where the comparison is not fair.

    It is fair when the sample is the ``standalone`` stage's (config key ``ground_truth`` empty)
    and retraining ran the sample's recipe for as many epochs (config keys ``retrain_epochs`` and
    ``standalone_epochs`` equal); a benchmark table's accuracies come from another budget.

    Args:
        cfg: the run configuration.
        arch: the retrained path's arch string.
        accuracy: its test accuracy after retraining.
        sample_uri: the ``standalone`` stage's table (CSV arch,accuracy).
        space: the run's search space (parses the table's arch strings).
    """
    if not cfg.ranking or cfg.ground_truth or cfg.retrain_epochs != cfg.standalone_epochs:
        return None
    sample = load_ground_truth(sample_uri, "accuracy", space)
    return rank_in_sample(accuracy, sample, space.format(space.parse(arch)))
