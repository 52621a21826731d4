"""Datasets, train/valid/test splits and batched tensor transforms."""

from __future__ import annotations

from kshot.data.datasets import (
    ACCEPTED_LAYOUTS,
    DIGITS_URI,
    PARTS,
    ImageDataset,
    channel_stats,
    load_dataset,
)
from kshot.data.split import Split, make_split, split_from_dict, split_to_dict
from kshot.data.transforms import batches, normalize, random_crop_flip

__all__ = [
    "ACCEPTED_LAYOUTS",
    "DIGITS_URI",
    "PARTS",
    "ImageDataset",
    "channel_stats",
    "load_dataset",
    "Split",
    "make_split",
    "split_from_dict",
    "split_to_dict",
    "batches",
    "normalize",
    "random_crop_flip",
]
