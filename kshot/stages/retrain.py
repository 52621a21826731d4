"""Stage ``retrain``: train the best path found from scratch (NAS-Bench-201 recipe)."""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.config import Config
from kshot.export import save_model
from kshot.stages.common import (
    device_of,
    load_train_data,
    read_search_results,
    require,
    space_of,
)
from kshot.train.standalone import train_standalone

__all__ = ["run"]


def run(cfg: Config, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """Read the best path from ``inputs["results"]``; write ``outputs["model"]`` (the stand-alone
    network, :func:`kshot.export.load_model` rebuilds it) and ``outputs["metrics"]`` (JSON curves
    and accuracy)."""
    require(inputs, ("split", "results"), "retrain", "input")
    require(outputs, ("model", "metrics"), "retrain", "output")
    arch = read_search_results(inputs["results"], space_of(cfg))["best"]
    data = load_train_data(cfg, inputs["split"])
    space = space_of(cfg, data)
    model, history = train_standalone(
        arch, cfg, data, device_of(cfg), cfg.retrain_epochs, cfg.seed, data_parallel=True
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
