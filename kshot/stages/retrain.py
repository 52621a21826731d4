"""Stage ``retrain``: train the best path found from scratch (NAS-Bench-201 recipe)."""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.config import Config
from kshot.spaces import nb201
from kshot.stages.common import (
    device_of,
    flops_of,
    load_train_data,
    network_shape,
    read_search_results,
    require,
)
from kshot.train.standalone import train_standalone

__all__ = ["run"]


def run(cfg: Config, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """Read the best path from ``inputs["results"]``; write ``outputs["model"]`` (a torch file with
    the arch and the stand-alone state dict) and ``outputs["metrics"]`` (JSON curves and accuracy)."""
    require(inputs, ("split", "results"), "retrain", "input")
    require(outputs, ("model", "metrics"), "retrain", "output")
    arch = read_search_results(inputs["results"])["best"]
    data = load_train_data(cfg, inputs["split"])
    model, history = train_standalone(
        arch, cfg, data, device_of(cfg), cfg.retrain_epochs, cfg.seed, data_parallel=True
    )
    metrics = {
        "arch": arch,
        "test_accuracy": history["test_acc"][-1],
        "flops": flops_of(cfg, data)(arch),
        "params": nb201.params(arch, **network_shape(cfg, data)),
        "epochs": cfg.retrain_epochs,
        "curves": history,
    }
    if dist.is_main():
        storage.save_torch(
            {
                "arch": arch,
                "search_space": cfg.search_space,
                **network_shape(cfg, data),
                "mean": data.mean,
                "std": data.std,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            },
            outputs["model"],
        )
        storage.write_json(outputs["metrics"], metrics)
    return metrics
