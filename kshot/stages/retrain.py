"""Stage ``retrain``: train the best path found from scratch (NAS-Bench-201 recipe)."""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.export import save_model
from kshot.stages.checks import read_search_results
from kshot.stages.context import StageContext
from kshot.train.standalone import train_standalone

__all__ = ["run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Read the best path from ``inputs["results"]``; write ``outputs["model"]`` (the stand-alone
    network, :func:`kshot.export.load_model` rebuilds it) and ``outputs["metrics"]`` (JSON curves
    and accuracy)."""
    cfg, inputs, outputs = ctx.config, ctx.inputs, ctx.outputs
    arch = read_search_results(inputs["results"], ctx.config_space)["best"]
    data = ctx.data
    space = ctx.space
    model, history = train_standalone(
        arch, cfg, data, ctx.device, cfg.retrain_epochs, cfg.seed, data_parallel=True
    )
    metrics = {
        "arch": arch,
        "test_accuracy": history["test_acc"][-1],
        "flops": space.flops(arch),
        "params": space.params(arch),
        "epochs": cfg.retrain_epochs,
        "curves": history,
    }
    if dist.is_main():
        save_model(
            outputs["model"],
            model,
            search_space=cfg.search_space,
            arch=arch,
            shape=space.shape,
            mean=data.mean,
            std=data.std,
        )
        storage.write_json(outputs["metrics"], metrics)
    return metrics
