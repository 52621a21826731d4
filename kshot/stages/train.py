"""Stage ``train``: alternating K-shot supernet / simplex-net training (Algorithm 2)."""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.stages.checks import check_later_stages
from kshot.stages.context import StageContext
from kshot.train import checkpoint as ckpt
from kshot.train.trainer import KShotTrainer, curves

__all__ = ["run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Continue from the warmup checkpoint (or resume this stage's own) until epoch ``epochs``.

    Writes checkpoints to ``outputs["checkpoint"]`` and, when given, the per-epoch curves to
    ``outputs["curves"]`` (JSON).
    """
    cfg, inputs, outputs = ctx.config, ctx.inputs, ctx.outputs
    device = ctx.device  # before the data: a missing GPU fails at once
    data = ctx.data
    space = ctx.space
    check_later_stages(cfg, data, space)
    trainer = KShotTrainer(cfg, data, device, space)
    if trainer.resume(outputs["checkpoint"], inputs["checkpoint"]) is None:
        raise ckpt.CheckpointError(
            f"checkpoint folder {inputs['checkpoint']!r} holds no checkpoint"
        )
    trainer.fit(cfg.epochs, outputs["checkpoint"])
    if not ckpt.list_checkpoints(outputs["checkpoint"]):  # nothing left to train after warmup
        trainer.save(outputs["checkpoint"])
    if outputs.get("curves") and dist.is_main():
        storage.write_json(
            outputs["curves"], {**curves(trainer.history), "warmup_epochs": cfg.warmup_epochs}
        )
    return {"epoch": trainer.epochs_done(), "step": trainer.step}
