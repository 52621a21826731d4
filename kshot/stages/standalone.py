"""Stage ``standalone``: ground truth where no benchmark exists.

Trains a seeded sample of ``standalone_paths`` paths from scratch (the retraining recipe on a short
budget, ``standalone_epochs``) and records their test accuracies as a table ``arch,accuracy`` that
the ``rank`` stage reads like NAS-Bench-201's, with a column ``test_images``: how many test images
every accuracy was measured on, which sets its binomial noise
(:func:`kshot.eval.standalone_rank.sample_noise`). Paths are spread over the ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kshot import distributed as dist
from kshot.eval.ground_truth import write_ground_truth_csv
from kshot.eval.standalone_rank import TEST_IMAGES_COLUMN
from kshot.spaces import NB201Space, Path, Space
from kshot.stages import skipped
from kshot.stages.context import StageContext
from kshot.train.standalone import train_standalone

__all__ = ["run", "sample_paths"]


def sample_paths(count: int, seed: int, space: Space | None = None) -> list[Path]:
    """``count`` distinct paths of ``space`` (default: nb201) drawn uniformly, seeded."""
    space = space or NB201Space()
    if count > space.size:
        raise ValueError(
            f"config key 'standalone_paths' = {count} exceeds the {space.size} paths of "
            f"{space.name}"
        )
    return space.distinct_sample(count, seed)


def run(ctx: StageContext) -> dict[str, Any]:
    """Write ``outputs["table"]``: CSV ``arch,accuracy,test_images`` of the sampled paths."""
    cfg, outputs = ctx.config, ctx.outputs
    reason = skipped("standalone", cfg)
    if reason:
        if dist.is_main():
            write_ground_truth_csv(outputs["table"], {}, column="accuracy")
        return {"paths": 0, "skipped": reason}
    space = ctx.config_space
    archs = sample_paths(cfg.standalone_paths, cfg.seed, space)
    data = ctx.data
    device = ctx.device
    mine = []
    for i in range(dist.rank(), len(archs), dist.world_size()):
        _, history = train_standalone(
            archs[i], cfg, data, device, cfg.standalone_epochs, cfg.seed + i, data_parallel=False
        )
        mine.append((i, history["test_acc"][-1]))
    results = sorted(dist.gather_lists(mine))
    table = {space.format(archs[i]): acc for i, acc in results}
    if dist.is_main():
        write_ground_truth_csv(
            outputs["table"],
            table,
            column="accuracy",
            space=space,
            constants={TEST_IMAGES_COLUMN: len(data.test_labels)},
        )
    return {"paths": len(table), "accuracy_mean": float(np.mean(list(table.values())))}
