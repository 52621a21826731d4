"""Checks the stages make of what they are given before the work: a search's results, the
FLOPs budget, the number of BN images, and, at warmup, what the later stages will need.
"""

from __future__ import annotations

from typing import Any

from kshot import storage
from kshot.config import Config
from kshot.eval.ground_truth import check_ground_truth
from kshot.search.nsga2 import BudgetError
from kshot.spaces import Space
from kshot.train.run_data import TrainData

__all__ = ["read_search_results", "check_budget", "check_bn_images", "check_later_stages"]


def read_search_results(uri: str, space: Space) -> dict[str, Any]:
    """The front, best path and budget of a search / recalibrate results JSON, each arch checked.

    Returns:
        ``{"front": [arch, …], "best": arch, "flops_budget": float | None}`` with normalised archs.
    """
    results = storage.read_json(uri)
    if not isinstance(results, dict):
        raise ValueError(f"results {uri!r} must be a JSON object")
    recorded = results.get("search_space", space.name)
    if recorded != space.name:
        raise ValueError(
            f"results {uri!r} are of search space {recorded!r}, but config key 'search_space' is "
            f"{space.name!r}"
        )

    def arch_of(record: Any, where: str) -> str:
        if not isinstance(record, dict) or "arch" not in record:
            raise ValueError(f"results {uri!r} have no path with an 'arch' string at {where}")
        try:
            return space.format(space.parse(record["arch"]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"results {uri!r}, key {where}.arch: {e}") from None

    front = results.get("front", [])
    if not isinstance(front, list):
        raise ValueError(f"results {uri!r}: 'front' must be a list of paths")
    return {
        "front": [arch_of(r, f"front[{i}]") for i, r in enumerate(front)],
        "best": arch_of(results.get("best"), "best"),
        "flops_budget": results.get("flops_budget"),
    }


def check_budget(cfg: Config, space: Space) -> float | None:
    """The budget in MFLOPs (None: unconstrained); fails when no path of the space meets it."""
    if not cfg.flops_budget:
        return None
    cheapest = space.cheapest_flops()
    if cfg.flops_budget < cheapest:
        shape = ", ".join(f"{k}={v}" for k, v in space.shape.items())
        raise BudgetError(
            f"config key 'flops_budget' = {cfg.flops_budget} MFLOPs: no {cfg.search_space} path "
            f"meets it (the cheapest needs {cheapest:.6g} MFLOPs at {shape}, resolution "
            f"{space.resolution})"
        )
    return cfg.flops_budget


def check_bn_images(cfg: Config, data: TrainData) -> int:
    """The split's training image count; fails when BN recalibration would need more."""
    n_train = len(data.train_labels)
    if cfg.bn_images > n_train:
        raise ValueError(
            f"config key 'bn_images' = {cfg.bn_images} exceeds the {n_train} training images of "
            f"the split: recalibration needs that many"
        )
    return n_train


def check_later_stages(cfg: Config, data: TrainData, space: Space) -> None:
    """Refuse before the first epoch what the search and rank stages would refuse after training:
    a FLOPs budget no path meets, more recalibration images than the split holds, a ground-truth
    table (config key ``ground_truth``) that cannot be read or lacks its column. ``space`` is the
    run's at the data's shape (:func:`space_of`)."""
    check_budget(cfg, space)
    check_bn_images(cfg, data)
    if cfg.ranking and cfg.ground_truth:
        try:
            check_ground_truth(cfg.ground_truth, cfg.ground_truth_column, space)
        except (OSError, ValueError) as e:
            raise ValueError(f"config key 'ground_truth' = {cfg.ground_truth!r}: {e}") from e
