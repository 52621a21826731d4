"""Stage ``search``: NSGA-II over the trained supernet under a hard FLOPs budget."""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.config import Config
from kshot.search.nsga2 import nsga2_search
from kshot.stages.checks import check_budget
from kshot.stages.context import StageContext
from kshot.stages.trained import load_trained, make_scorer, score_paths

__all__ = ["run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Write ``outputs["results"]``: every evaluated path, the Pareto front and the best path."""
    cfg, inputs, outputs = ctx.config, ctx.inputs, ctx.outputs
    data = ctx.data
    space = ctx.space
    budget = check_budget(cfg, space)
    device = ctx.device
    supernet, simplex, _ = load_trained(cfg, data, inputs["checkpoint"], device, space)
    scorer = make_scorer(cfg, data, supernet, simplex, device, space=space)
    result = nsga2_search(
        space,
        lambda archs: score_paths(scorer, archs, desc="generation"),
        space.flops,
        budget=budget,
        population=cfg.population,
        generations=cfg.generations,
        parents=cfg.parents,
        mutation_prob=cfg.mutation_prob,
        seed=cfg.seed,
        progress=dist.is_main(),
    )
    payload = results_payload(cfg, budget, result.evaluated, result.front, result.best)
    if dist.is_main():
        storage.write_json(outputs["results"], payload)
    return payload["best"]


def results_payload(
    cfg: Config, budget: float | None, evaluated: list[dict], front: list[dict], best: dict
) -> dict[str, Any]:
    """The JSON document of a search (also what ``recalibrate`` writes)."""

    def clean(record: dict) -> dict:
        return {k: v for k, v in record.items() if k != "choice"}

    return {
        "k": cfg.k,
        "search_space": cfg.search_space,
        "flops_budget": budget,
        "evaluated": [clean(r) for r in evaluated],
        "front": [clean(r) for r in front],
        "best": clean(best),
    }
