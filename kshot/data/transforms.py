"""Batched tensor transforms for training: normalisation, random crop and flip, index batches.

They work on whole ``(N, C, H, W)`` batches with tensor operations (no per-image Python loop, no
PIL), and every random choice comes from an explicit :class:`torch.Generator`, so a seeded run
repeats exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["normalize", "random_crop_flip", "batches"]


def normalize(
    images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Scale ``uint8`` images to 0..1 and standardise each channel.

    Args:
        images_uint8: ``uint8`` tensor of shape ``(N, C, H, W)``.
        mean: Per-channel mean in 0..1 units (e.g. from :func:`kshot.data.channel_stats`).
        std: Per-channel standard deviation in 0..1 units, each > 0.

    Returns:
        ``float32`` tensor ``(images / 255 - mean) / std`` of the same shape and device.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(
            f"normalize needs a uint8 tensor (N, C, H, W), got {images_uint8.dtype} of shape "
            f"{tuple(images_uint8.shape)}"
        )
    channels = images_uint8.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"normalize: images have {channels} channels but mean has {len(mean)} values and std "
            f"{len(std)}"
        )
    if any(value <= 0 for value in std):
        raise ValueError(f"normalize: every std must be > 0, got {list(std)}")
    shape = (1, channels, 1, 1)
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=images_uint8.device).view(shape)
    std_tensor = torch.tensor(std, dtype=torch.float32, device=images_uint8.device).view(shape)
    return (images_uint8.to(torch.float32) / 255.0 - mean_tensor) / std_tensor


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Zero-pad by ``pad``, take a random ``H x W`` crop and (if ``flip``) flip each image at random.

    The crop offsets are drawn first, then (if ``flip``) one coin per image, all from
    ``generator``; the result is gathered in one indexing operation.

    Args:
        x: Float tensor of shape ``(N, C, H, W)``.
        generator: Source of randomness (on the CPU or on ``x``'s device).
        pad: Padding on each side, >= 0; ``pad=0`` crops nothing.
        flip: Whether to flip each image horizontally with probability 1/2.

    Returns:
        A new tensor of the shape, dtype and device of ``x``.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"random_crop_flip needs a float tensor (N, C, H, W), got {x.dtype} of shape "
            f"{tuple(x.shape)}"
        )
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"random_crop_flip: pad must be an int >= 0, got {pad!r}")
    count, channels, height, width = x.shape
    draw_device = generator.device
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    offset_y = torch.randint(0, 2 * pad + 1, (count,), generator=generator, device=draw_device)
    offset_x = torch.randint(0, 2 * pad + 1, (count,), generator=generator, device=draw_device)
    rows = offset_y.to(x.device)[:, None] + torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device).expand(count, width)
    if flip:
        flipped = torch.rand(count, generator=generator, device=draw_device) < 0.5
        cols = torch.where(flipped.to(x.device)[:, None], cols.flip(-1), cols)
    cols = offset_x.to(x.device)[:, None] + cols
    return padded[
        torch.arange(count, device=x.device)[:, None, None, None],
        torch.arange(channels, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def batches(indices: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    """Consecutive slices of ``indices`` of ``batch_size`` (the last one shorter unless dropped).

    Args:
        indices: 1-D index array, already in the desired (e.g. shuffled) order.
        batch_size: Size of each batch, >= 1.
        drop_last: Whether to drop a final batch smaller than ``batch_size``.

    Yields:
        Views of ``indices``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if indices.ndim != 1:
        raise ValueError(f"batches needs a 1-D index array, got shape {indices.shape}")
    end = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    for start in range(0, end, batch_size):
        yield indices[start : start + batch_size]
