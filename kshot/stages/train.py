"""Stage ``train``: alternating K-shot supernet / simplex-net training (Algorithm 2)."""

from __future__ import annotations

from typing import Any

from kshot import distributed as dist
from kshot import storage
from kshot.config import Config
from kshot.stages.common import (
    check_later_stages,
    device_of,
    load_train_data,
    require,
    space_of,
)
from kshot.train import checkpoint as ckpt
from kshot.train.trainer import KShotTrainer, curves

__all__ = ["run"]


def run(cfg: Config, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """Continue from the warmup checkpoint (or resume this stage's own) until epoch ``epochs``.

    Writes checkpoints to ``outputs["checkpoint"]`` and, when given, the per-epoch curves to
    ``outputs["curves"]`` (JSON).
    """
    require(inputs, ("split", "checkpoint"), "train", "input")
    require(outputs, ("checkpoint",), "train", "output")
    device = device_of(cfg)  # before the data: a missing GPU fails at once
    data = load_train_data(cfg, inputs["split"])
    space = space_of(cfg, data)
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
