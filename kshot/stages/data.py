"""The data a stage works on: the dataset's images cut by the split file, held in memory or
streamed, and the validation images moved to the device.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from kshot import seeds, storage
from kshot.config import Config
from kshot.data.datasets import channel_stats, load_dataset
from kshot.data.folder_index import ImageFolderIndex
from kshot.data.shards import ShardIndex, is_sharded
from kshot.data.split import split_from_dict
from kshot.data.stream import StreamedPart
from kshot.train.run_data import TrainData

__all__ = ["load_train_data", "stream_index", "images_on_device"]

_DECODE_BATCH = 256  # images per decoded batch of a streamed part moved to the device
_STATS_IMAGES = 2000  # a seeded sample of streamed training images gives the channel statistics


def load_train_data(cfg: Config, split_uri: str) -> TrainData:
    """The dataset's images cut by the split file at ``split_uri``: held in memory, or (config key
    ``data_loading: stream``) the training part streamed from a class-folder tree."""
    split_doc = storage.read_json(split_uri)
    # Another dataset's split would otherwise fail (or, worse, pass) on its image count.
    recorded = split_doc.get("dataset") if isinstance(split_doc, dict) else None
    if recorded and recorded != cfg.dataset:
        raise ValueError(
            f"split {split_uri!r} was made for dataset {recorded!r}, but config key 'dataset' is "
            f"{cfg.dataset!r}"
        )
    split_digest = hashlib.sha256(json.dumps(split_doc, sort_keys=True).encode()).hexdigest()
    if cfg.data_loading == "stream":
        data = _streamed_train_data(cfg, split_doc, split_uri)
        data.split_digest = split_digest
        return data
    train = load_dataset(cfg.dataset, "train", resolution=cfg.resolution or None)
    content = hashlib.sha256(train.images.contiguous().numpy())  # hashed in place, no copy
    content.update(train.labels.contiguous().numpy())
    split = split_from_dict(split_doc, split_uri, num_images=len(train))
    tr, va = torch.from_numpy(split.train), torch.from_numpy(split.valid)
    mean, std = channel_stats(train.images[tr])
    if split.test is not None:
        te = torch.from_numpy(split.test)
        test_images, test_labels = train.images[te], train.labels[te]
    else:
        test = load_dataset(cfg.dataset, "test", resolution=cfg.resolution or None)
        test_images, test_labels = test.images, test.labels
    return TrainData(
        train_images=train.images[tr],
        train_labels=train.labels[tr],
        valid_images=train.images[va],
        valid_labels=train.labels[va],
        test_images=test_images,
        test_labels=test_labels,
        mean=mean,
        std=std,
        num_classes=train.num_classes,
        split_digest=split_digest,
        dataset_digest=content.hexdigest(),
    )


def stream_index(
    cfg: Config, part: str = "train", classes: list[str] | None = None
) -> ImageFolderIndex | ShardIndex:
    """The index of a streamed dataset (config key ``data_loading: stream``): a sharded dataset's
    (one object read, see :mod:`kshot.data.shards`) or a class-folder tree's (listed)."""
    try:
        if is_sharded(cfg.dataset):
            return ShardIndex.load(cfg.dataset, part)
        return ImageFolderIndex.scan(cfg.dataset, part, classes=classes)
    except FileNotFoundError:
        if part != "train":
            raise
        raise ValueError(
            f"config key 'data_loading' = 'stream' reads a class-folder tree "
            f"(train/<class>/*.jpg) or a sharded dataset (`kshot data shard`), but dataset "
            f"{cfg.dataset!r} is not a folder"
        ) from None
    except ValueError as e:
        raise ValueError(
            f"config key 'data_loading' = 'stream' reads a class-folder tree or a sharded "
            f"dataset: {e}"
        ) from None


def _streamed_train_data(cfg: Config, split_doc: Any, split_uri: str) -> TrainData:
    index = stream_index(cfg)
    recorded = split_doc.get("files_sha256")
    if recorded and recorded != index.fingerprint():
        raise ValueError(
            f"split {split_uri!r} was made on another list of files than dataset {cfg.dataset!r} "
            f"holds now ({len(index)} training images): make the split again"
        )
    split = split_from_dict(split_doc, split_uri, num_images=len(index))

    def part(source: ImageFolderIndex | ShardIndex, indices: np.ndarray) -> StreamedPart:
        return StreamedPart(source, indices, cfg.resolution, cfg.loader_workers)

    train = part(index, split.train)
    sample = seeds.rng(cfg.seed, seeds.CHANNEL_STATS).permutation(len(train))[:_STATS_IMAGES]
    mean, std = channel_stats(train[np.sort(sample)])
    if split.test is not None:
        test = part(index, split.test)
    else:
        test_index = stream_index(cfg, "test", classes=index.classes)
        test = part(test_index, np.arange(len(test_index)))
    valid = part(index, split.valid)
    return TrainData(
        train_images=train,
        train_labels=train.labels,
        valid_images=valid,
        valid_labels=valid.labels,
        test_images=test,
        test_labels=test.labels,
        mean=mean,
        std=std,
        num_classes=index.num_classes,
        dataset_digest=index.fingerprint(),
    )


def images_on_device(
    images: torch.Tensor | StreamedPart, count: int, device: torch.device
) -> torch.Tensor:
    """The first ``count`` images, uint8 (normalised per batch later), on ``device``. A streamed
    part is decoded batch by batch straight into the device tensor, so the host never holds them
    all at once (ImageNet's 50,000 held-out images at 224: 7.5 GB)."""
    if isinstance(images, torch.Tensor) or count == 0:
        return images[:count].to(device)
    head = StreamedPart(images.index, images.indices[:count], images.resolution, images.num_workers)
    out = torch.empty(head.shape, dtype=torch.uint8, device=device)
    filled = 0
    for batch, _ in head.batches(_DECODE_BATCH):
        out[filled : filled + len(batch)].copy_(batch, non_blocking=True)
        filled += len(batch)
    return out
