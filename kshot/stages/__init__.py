"""The pipeline's stages, each a function ``run(config, inputs, outputs)`` on artifact URIs."""

from __future__ import annotations

__all__ = ["STAGES", "HEAVY_STAGES"]

# In the paper's order; the KFP pipeline and the CLI both read this list.
STAGES: tuple[str, ...] = (
    "split",
    "warmup",
    "train",
    "search",
    "recalibrate",
    "retrain",
    "standalone",
    "rank",
)
# Stages that train or score networks: they run as distributed jobs (torchrun / PyTorchJob).
HEAVY_STAGES: frozenset[str] = frozenset({"warmup", "train", "search", "rank", "retrain", "standalone"})
