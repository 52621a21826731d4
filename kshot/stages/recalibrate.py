"""Stage ``recalibrate``: re-score the chosen paths with BN recalibrated on ``bn_images`` images.

The chosen paths are the search's Pareto front and its best path. They are scored again on the whole
validation split (the search may score on a subset, ``eval_images``), and the best path is chosen
again among them.
"""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.search.nsga2 import pareto_front
from kshot.stages.checks import read_search_results
from kshot.stages.context import StageContext
from kshot.stages.search import results_payload
from kshot.stages.trained import load_trained, make_scorer, score_paths

__all__ = ["run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Read ``inputs["results"]`` (a search's JSON) and write the re-scored ``outputs["results"]``."""
    cfg, inputs, outputs = ctx.config, ctx.inputs, ctx.outputs
    searched = read_search_results(inputs["results"], ctx.config_space)
    data = ctx.data
    space = ctx.space
    archs = [space.parse(a) for a in dict.fromkeys([*searched["front"], searched["best"]])]
    device = ctx.device
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
