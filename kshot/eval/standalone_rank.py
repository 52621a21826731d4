"""Where the path a search picked lands among paths trained from scratch: the run's end-to-end check.

The ``standalone`` stage trains a seeded sample of paths of the space from scratch; ``retrain``
trains the path the search picked. When both use the same recipe and budget, the picked path's
retrained accuracy ranked among the sample's says whether the search beat a random draw of the
space, which τ over the sample alone cannot say — provided the sample's accuracies differ by more
than the noise of measuring them: :func:`sample_noise` says whether they do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from kshot import storage
from kshot.config import Config
from kshot.eval.ground_truth import load_ground_truth
from kshot.spaces import Space

__all__ = [
    "CONFIDENCE",
    "RANKING_EXPERIMENT",
    "TEST_IMAGES_COLUMN",
    "best_standalone_rank",
    "binomial_sd",
    "describe_rank",
    "noise_range",
    "rank_in_sample",
    "sample_noise",
]

TEST_IMAGES_COLUMN = "test_images"
"""The stand-alone table's column of how many test images each accuracy was measured on."""

CONFIDENCE = 0.95
"""The confidence of :func:`noise_range`: test-set noise alone spreads accuracies that are equal
beyond it in 5 % of samples."""

RANKING_EXPERIMENT = (
    "the CIFAR-10 ranking experiment (`kshot experiment ranking`, its pages in docs/results/)"
)
"""Where a ranking that can separate paths is measured, for a sample that cannot."""


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
    others = _others(sample, arch)
    ranks = stats.rankdata(-np.array([accuracy, *others], dtype=np.float64), method="min")
    return {"rank": int(ranks[0]), "of": len(others) + 1}


def binomial_sd(accuracy: float, test_images: int) -> float:
    """The binomial standard deviation, in percentage points, of an accuracy (in %) measured on
    ``test_images`` images: ``100 · sqrt(p (1 − p) / n)`` with ``p = accuracy / 100``."""
    if test_images < 1:
        raise ValueError(f"an accuracy measured on {test_images} test images has no noise to tell")
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / test_images)


def noise_range(paths: int, sd: float) -> float:
    """The widest spread (max − min) that test-set noise alone gives ``paths`` equally accurate
    paths, each measured with standard deviation ``sd``, at :data:`CONFIDENCE`: Tukey's range test,
    ``q(CONFIDENCE; paths, ∞) · sd`` with ``q`` the studentized range. For two paths it is the
    two-sided 95 % test of their difference, 1.96 · √2 · sd = 2.77 sd; for 13, 4.68 sd."""
    if paths < 2:
        raise ValueError(f"a spread needs at least 2 paths, not {paths}")
    return float(stats.studentized_range.ppf(CONFIDENCE, paths, np.inf)) * sd


def sample_noise(accuracy: float, others: Sequence[float], test_images: int) -> dict[str, Any]:
    """Whether the picked path's accuracy and the sample's can be told apart from test-set noise.

    The rule. Every accuracy here is measured once, on the same ``test_images`` test images, so it
    carries binomial noise of standard deviation σ = 100 · √(p (1 − p) / n) pp, taken at the mean
    p of the ranked accuracies (:func:`binomial_sd`). If all m ranked paths were equally accurate,
    that noise alone would spread their measured accuracies by at most ``q · σ`` in 95 % of
    samples (:func:`noise_range`; q is the studentized range of m values, Tukey's range test: 2.77
    for 2 paths, 4.68 for 13). So the sample is **within noise** — it cannot separate its paths
    and the rank orders noise — when its spread (max − min of the m accuracies, the picked
    path's included) is at most ``q · σ``. Beyond it, a pair of paths differs by more than noise
    (Tukey's honest significant difference): the picked path's rank is then pinned only as far as
    the paths that differ from it by more than ``q · σ`` pin it, which ``rank_bounds`` gives.

    Why the range and not a multiple of σ per pair: with m paths the widest of their m(m − 1)/2
    differences is the one read, and pure noise makes it 3.3 σ wide on average for 13 paths,
    beyond a pairwise 2-σ rule. What the rule leaves out, both ways: the paths share their test
    images, so a paired test (McNemar's, on per-image predictions, which the table does not keep)
    would separate closer paths; and each path is trained once, so the noise of the training
    seed, often larger than the test set's, is not in σ at all. The rule flags only what the test
    set's noise alone explains.

    Args:
        accuracy: the picked path's stand-alone accuracy (%).
        others: the sample's other paths' accuracies (%), trained alike.
        test_images: how many test images each accuracy was measured on.

    Returns:
        ``spread_pp`` (max − min over the picked path and the others), ``binomial_sd_pp`` (σ),
        ``noise_range_pp`` (q · σ), ``test_images``, ``within_noise`` (spread ≤ q · σ) and
        ``rank_bounds``: the best and worst rank of the picked path that the noise allows (1 +
        the others more accurate by over q · σ; n − those less accurate by over q · σ).
    """
    values = np.array([accuracy, *others], dtype=np.float64)
    sd = binomial_sd(float(values.mean()), test_images)
    widest = noise_range(len(values), sd)
    spread = float(values.max() - values.min())
    better = int(np.sum(values[1:] - accuracy > widest))
    worse = int(np.sum(accuracy - values[1:] > widest))
    return {
        "spread_pp": spread,
        "binomial_sd_pp": sd,
        "noise_range_pp": widest,
        "test_images": int(test_images),
        "within_noise": bool(spread <= widest),
        "rank_bounds": [1 + better, len(values) - worse],
    }


def describe_rank(rank: Mapping[str, Any]) -> str:
    """One sentence on what a :func:`best_standalone_rank` says, for the console and the summary."""
    if rank.get("within_noise") is None:
        return (
            "the sample's test image count is unknown, so its noise cannot be told from its spread"
        )
    spread, sd = rank["spread_pp"], rank["binomial_sd_pp"]
    measured = (
        f"the {rank['of']} accuracies span {spread:.2f} pp on {rank['test_images']} test images; "
        f"test-set noise alone (binomial s.d. {sd:.2f} pp each) spreads {rank['of']} equally "
        f"accurate paths by up to {rank['noise_range_pp']:.2f} pp ({CONFIDENCE * 100:.0f} %)"
    )
    if rank["within_noise"]:
        return (
            f"{measured}: this sample cannot separate its paths, so the rank is noise; for a "
            f"ranking that can, see {RANKING_EXPERIMENT}"
        )
    low, high = rank["rank_bounds"]
    if low == high:
        return f"{measured}: this path's rank stands beyond noise"
    return (
        f"{measured}: some of its paths differ beyond noise, and within noise this path could "
        f"rank anywhere from {low} to {high}"
    )


def best_standalone_rank(
    cfg: Config, arch: str, accuracy: float, sample_uri: str, space: Space
) -> dict[str, Any] | None:
    """:func:`rank_in_sample` of the retrained path with its meaning, or ``None`` where the
    comparison is not fair.

    It is fair when the sample is the ``standalone`` stage's (config key ``ground_truth`` empty)
    and retraining ran the sample's recipe for as many epochs (config keys ``retrain_epochs`` and
    ``standalone_epochs`` equal); a benchmark table's accuracies come from another budget.

    Args:
        cfg: the run configuration.
        arch: the retrained path's arch string.
        accuracy: its test accuracy after retraining.
        sample_uri: the ``standalone`` stage's table (CSV arch,accuracy,test_images).
        space: the run's search space (parses the table's arch strings).

    Returns:
        ``rank`` and ``of`` (:func:`rank_in_sample`), the sample's noise (:func:`sample_noise`;
        ``None`` each for a table without its test image count) and ``reading``: one sentence
        on what the rank means (:func:`describe_rank`).
    """
    if not cfg.ranking or cfg.ground_truth or cfg.retrain_epochs != cfg.standalone_epochs:
        return None
    sample = load_ground_truth(sample_uri, "accuracy", space)
    arch = space.format(space.parse(arch))
    result: dict[str, Any] = dict(rank_in_sample(accuracy, sample, arch))
    test_images = _test_images(sample_uri, space)
    if test_images is None:
        result.update(dict.fromkeys(("spread_pp", "binomial_sd_pp", "noise_range_pp")))
        result.update(test_images=None, within_noise=None, rank_bounds=None)
    else:
        result.update(sample_noise(accuracy, _others(sample, arch), test_images))
    result["reading"] = describe_rank(result)
    return result


def _others(sample: Mapping[str, float], arch: str) -> list[float]:
    """The sample's accuracies other than ``arch``'s; a ValueError when there are none."""
    others = [value for name, value in sample.items() if name != arch]
    if not others:
        raise ValueError(f"the stand-alone sample holds no path other than {arch!r} to rank it by")
    return others


def _test_images(sample_uri: str, space: Space) -> int | None:
    """The table's test image count (:data:`TEST_IMAGES_COLUMN`), ``None`` for a table without
    it; a ValueError when its rows disagree."""
    header = storage.read_text(sample_uri).partition("\n")[0].strip().split(",")
    if TEST_IMAGES_COLUMN not in header:
        return None
    counts = set(load_ground_truth(sample_uri, TEST_IMAGES_COLUMN, space).values())
    if len(counts) != 1:
        raise ValueError(
            f"stand-alone table {sample_uri!r}: its accuracies were measured on different test "
            f"image counts {sorted(counts)}"
        )
    return int(counts.pop())
