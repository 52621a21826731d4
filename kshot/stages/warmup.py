"""Stage ``warmup``: T_w epochs of uniform single-path training with λ = 1/K (Algorithm 1)."""

from __future__ import annotations

from typing import Any

from kshot.stages.checks import check_later_stages
from kshot.stages.context import StageContext
from kshot.train import checkpoint as ckpt
from kshot.train.trainer import KShotTrainer

__all__ = ["run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Train from scratch (or resume from ``outputs["checkpoint"]``) until epoch ``warmup_epochs``."""
    cfg, outputs = ctx.config, ctx.outputs
    device = ctx.device  # before the data: a missing GPU fails at once
    data = ctx.data
    space = ctx.space
    check_later_stages(cfg, data, space)
    trainer = KShotTrainer(cfg, data, device, space)
    trainer.resume(outputs["checkpoint"])
    trainer.fit(cfg.warmup_epochs, outputs["checkpoint"])
    if not ckpt.list_checkpoints(outputs["checkpoint"]):  # T_w = 0: hand on the initial weights
        trainer.save(outputs["checkpoint"])
    return {"epoch": trainer.epochs_done(), "step": trainer.step}
