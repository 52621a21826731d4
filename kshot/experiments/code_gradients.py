"""The code-gradient experiment: where each trained supernet's simplex-net signal comes from, measured
(:mod:`kshot.eval.code_gradients`) on the probe paths of its run and a batch of the split's
validation images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kshot import seeds, storage
from kshot.config import Config, load_config
from kshot.eval.code_gradients import PARTS, code_gradients, common_fraction
from kshot.stages.context import device_of
from kshot.stages.data import load_train_data
from kshot.stages.trained import load_trained
from kshot.train.builders import space_of
from kshot.train.checkpoint import load_latest

__all__ = ["run_code_gradients"]


def run_code_gradients(
    cfg: Config, split: str, checkpoints: Sequence[str], out: str, images: int = 256
) -> dict[str, Any]:
    """Where each trained supernet's simplex-net signal comes from
    (:mod:`kshot.eval.code_gradients`): on its run's 64 probe paths and the first ``images``
    validation images of ``split``, each path's ∂L/∂λ through the shared layers, through its own
    operations and in total, with the fraction common to all paths and the mean norm of each.

    Args:
        cfg: the data's configuration (dataset, seed, device); each checkpoint is loaded with
            the configuration it records (a pilot's settings differ in the simplex-net's).
        split: the runs' split.
        checkpoints: trained checkpoint folders (e.g. a pilot's ``C-<setting>`` folders).
        out: the JSON report, rewritten after each checkpoint.
        images: validation images in the batch.
    """
    device = device_of(cfg)
    data = load_train_data(cfg, split)
    space = space_of(cfg, data)
    paths = [space.sample(seeds.rng(cfg.seed, seeds.CODE_PROBE, i)) for i in range(64)]
    x = data.prepare(data.valid_images[:images], device)
    y = data.valid_labels[:images].to(device)
    report: dict[str, Any] = {"seed": cfg.seed, "paths": len(paths), "images": len(y), "runs": {}}
    for folder in checkpoints:
        run_cfg = load_config(load_latest(folder)["config"], sources=[folder])
        supernet, simplex, _ = load_trained(run_cfg, data, folder, device)
        grads = code_gradients(supernet, simplex, space, paths, x, y)
        report["runs"][folder] = {
            part: {
                "common_fraction": common_fraction(grads[part]),
                "mean_norm": float(np.sqrt(np.mean(np.sum(grads[part] ** 2, axis=1)))),
            }
            for part in PARTS
        }
        storage.write_json(out, report)
    return report
