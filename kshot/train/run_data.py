"""The data contract of a run: the split's images as the trainers hold them, and the batch of an
iteration.

:class:`TrainData` holds the split's images as uint8 (in memory, or the training part streamed from
a class-folder tree) with what checkpoints record of them; :func:`training_batch` is the batch of
iteration ``step``, which depends on ``(seed, step)`` only: the epoch's order on ``(seed, epoch)``
and the augmentation on ``(seed, step)``, both drawn for the global batch and then sliced per rank.
The supernet trainer and stand-alone training read their batches through it, so a resumed or
re-sharded run sees the same images in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kshot import distributed as dist
from kshot import seeds
from kshot.data.stream import StreamedPart
from kshot.data.transforms import normalize, random_crop_flip

__all__ = ["TrainData", "training_batch"]


@dataclass
class TrainData:
    """Images of a run's split as uint8 (normalised per batch): held in memory, or the training
    part streamed from a class-folder tree (config key ``data_loading``)."""

    train_images: torch.Tensor | StreamedPart
    train_labels: torch.Tensor
    valid_images: torch.Tensor | StreamedPart
    valid_labels: torch.Tensor
    mean: list[float]
    std: list[float]
    num_classes: int
    test_images: torch.Tensor | StreamedPart | None = None
    test_labels: torch.Tensor | None = None
    # Digests of the split file's content and of the dataset's training part (stream: its list of
    # files): checkpoints record them, so that a supernet is never scored on another split, whose
    # validation images it may have trained on.
    split_digest: str = ""
    dataset_digest: str = ""

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.train_images.shape[-1])

    def prepare(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 images → normalised float32 on ``device``, channels-last (faster convolutions and
        pooling on CPU and GPU alike)."""
        x = normalize(images.to(device), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last)


def training_batch(
    data: TrainData,
    *,
    seed: int,
    step: int,
    steps_per_epoch: int,
    batch_size: int,
    augment: bool,
    device: torch.device,
    shard: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of iteration ``step`` (this rank's share of it when ``shard``), normalised.

    The epoch's order comes from ``(seed, epoch)`` and the augmentation from ``(seed, step)``; both
    are drawn for the global batch and then sliced, so the split over ranks changes nothing. A
    streamed training part follows the same contract with ImageNet's augmentation
    (:mod:`kshot.data.stream`).
    """
    if isinstance(data.train_images, StreamedPart):
        sharded = shard and dist.world_size() > 1
        images, labels = data.train_images.batch(
            seed=seed,
            step=step,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            augment=augment,
            rank=dist.rank() if sharded else 0,
            world=dist.world_size() if sharded else 1,
        )
        return data.prepare(images, device), labels.to(device)
    epoch, pos = divmod(step, steps_per_epoch)
    order = seeds.rng(seed, epoch, seeds.EPOCH_ORDER).permutation(len(data.train_labels))
    idx = torch.from_numpy(order[pos * batch_size : (pos + 1) * batch_size])
    x = data.prepare(data.train_images[idx], device)
    if augment:  # on the device, drawn on the CPU: the same crops and flips wherever it runs
        gen = torch.Generator().manual_seed(
            int(seeds.rng(seed, step, seeds.AUGMENT).integers(2**62))
        )
        x = random_crop_flip(
            x, gen, pad=4 if data.resolution >= 16 else 1, flip=data.in_channels == 3
        ).contiguous(memory_format=torch.channels_last)
    y = data.train_labels[idx].to(device)
    if not shard or dist.world_size() == 1:
        return x, y
    share = batch_size // dist.world_size()
    mine = slice(dist.rank() * share, (dist.rank() + 1) * share)
    return x[mine], y[mine]
