"""Stage ``split``: seeded train / local-validation indices of the dataset's training part."""

from __future__ import annotations

from typing import Any

from kshot import storage
from kshot.data.datasets import load_dataset
from kshot.data.split import make_split, split_to_dict
from kshot.stages.context import StageContext
from kshot.stages.data import stream_index

__all__ = ["run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Write ``outputs["split"]`` (JSON of index arrays); a test share is carved when the dataset
    has no test part."""
    cfg, outputs = ctx.config, ctx.outputs
    fingerprint = {}
    if cfg.data_loading == "stream":  # list the tree; decode nothing
        index = stream_index(cfg)
        num_images = len(index)
        fingerprint = {"files_sha256": index.fingerprint()}
        try:
            stream_index(cfg, "test", classes=index.classes)
            has_test = True
        except FileNotFoundError:
            has_test = False
    else:
        num_images = len(load_dataset(cfg.dataset, "train", resolution=cfg.resolution or None))
        has_test = load_dataset(cfg.dataset, "test", resolution=cfg.resolution or None) is not None
    try:
        split = make_split(
            num_images,
            cfg.valid_fraction,
            cfg.seed,
            carve_test=not has_test,
            subset=cfg.train_subset,
            held_out=cfg.valid_size,
        )
    except ValueError as e:
        raise ValueError(
            f"dataset {cfg.dataset!r} ({num_images} training images), config keys "
            f"train_subset={cfg.train_subset}, valid_size={cfg.valid_size}, "
            f"valid_fraction={cfg.valid_fraction}: {e}"
        ) from None
    storage.write_json(
        outputs["split"],
        {
            **split_to_dict(split, cfg.dataset, cfg.seed, cfg.valid_fraction, num_images),
            **fingerprint,
        },
    )
    return {
        "train": len(split.train),
        "valid": len(split.valid),
        "test": len(split.test) if split.test is not None else None,
    }
