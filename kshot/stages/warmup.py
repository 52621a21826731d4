"""Stage ``warmup``: T_w epochs of uniform single-path training with λ = 1/K (Algorithm 1)."""

from __future__ import annotations

from typing import Any

from kshot.config import Config
from kshot.stages.common import (
    check_later_stages,
    device_of,
    load_train_data,
    require,
    space_of,
)
from kshot.train import checkpoint as ckpt
from kshot.train.trainer import KShotTrainer

__all__ = ["run"]


def run(cfg: Config, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """Train from scratch (or resume from ``outputs["checkpoint"]``) until epoch ``warmup_epochs``."""
    require(inputs, ("split",), "warmup", "input")
    require(outputs, ("checkpoint",), "warmup", "output")
    device = device_of(cfg)  # before the data: a missing GPU fails at once
    data = load_train_data(cfg, inputs["split"])
    space = space_of(cfg, data)
    check_later_stages(cfg, data, space)
    trainer = KShotTrainer(cfg, data, device, space)
    trainer.resume(outputs["checkpoint"])
    trainer.fit(cfg.warmup_epochs, outputs["checkpoint"])
    if not ckpt.list_checkpoints(outputs["checkpoint"]):  # T_w = 0: hand on the initial weights
        trainer.save(outputs["checkpoint"])
    return {"epoch": trainer.epochs_done(), "step": trainer.step}
