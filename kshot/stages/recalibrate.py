"""Stage ``recalibrate``: re-score the chosen paths with BN recalibrated on ``bn_images`` images.

The chosen paths are the search's Pareto front and its best path. They are scored again on the whole
validation split (the search may score on a subset, ``eval_images``), and the best path is chosen
again among them.
"""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.config import Config
from kshot.search.nsga2 import pareto_front
from kshot.stages.common import (
    device_of,
    load_train_data,
    load_trained,
    make_scorer,
    read_search_results,
    require,
    score_paths,
    space_of,
)
from kshot.stages.search import results_payload

__all__ = ["run"]


def run(cfg: Config, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """Read ``inputs["results"]`` (a search's JSON) and write the re-scored ``outputs["results"]``."""
    require(inputs, ("split", "checkpoint", "results"), "recalibrate", "input")
    require(outputs, ("results",), "recalibrate", "output")
    searched = read_search_results(inputs["results"], space_of(cfg))
    data = load_train_data(cfg, inputs["split"])
    space = space_of(cfg, data)
    archs = [space.parse(a) for a in dict.fromkeys([*searched["front"], searched["best"]])]
    device = device_of(cfg)
    supernet, simplex, _ = load_trained(cfg, data, inputs["checkpoint"], device, space)
    scorer = make_scorer(cfg, data, supernet, simplex, device, eval_images=0, space=space)
    records = score_paths(scorer, archs, desc="recalibrate")
    for rec, arch in zip(records, archs, strict=True):
        rec["flops"] = space.flops(arch)
        rec["bn_images"] = cfg.bn_images
    budget = searched["flops_budget"]
    in_budget = [r for r in records if budget is None or r["flops"] <= budget]
    best = max(in_budget, key=lambda r: (r["accuracy"], -r["flops"]))
    payload = results_payload(cfg, budget, records, pareto_front(records), best)
    if dist.is_main():
        storage.write_json(outputs["results"], payload)
    return best
