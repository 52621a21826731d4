"""BatchNorm recalibration: statistics recomputed for the path being scored, as the paper scores paths in its search.

Running statistics accumulated while training many paths (and widths) belong to none of them. Before
a path is scored, every BN layer's statistics are reset and recomputed from ``N`` training images
(paper: one batch of 2,048), and the path is then evaluated with them.

The statistics are the exact mean and (unbiased) variance of each BN layer's input over the N images,
accumulated as sums in float64. In one batch this is what ``nn.BatchNorm2d`` stores with momentum 1;
in micro-batches the sums are the same, with each micro-batch normalised by its own statistics on the
way through (as in training), so layers after the first see slightly different inputs than in the
one-batch pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kshot.nn.kshot import KShotBatchNorm2d

__all__ = ["recalibrate_bn", "bn_layers"]

_BN_TYPES = (nn.BatchNorm2d, KShotBatchNorm2d)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    forward: Callable[[torch.Tensor], object],
    images: torch.Tensor,
    batch_size: int,
) -> int:
    """Reset every BN layer of ``model`` and recompute its statistics from ``images``.

    Args:
        model: the module holding the BN layers (supernet or stand-alone network).
        forward: runs one batch through the path being scored (e.g. ``lambda x: net(x, arch, lam)``).
        images: the N recalibration images, already normalised, on the model's device.
        batch_size: micro-batch size (``>= N`` for the paper's single batch).

    Returns:
        The number of images that went through the network (N).
    """
    layers = bn_layers(model)
    sums: dict[nn.Module, list[torch.Tensor | int]] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        acc = sums.setdefault(module, [0.0, 0.0, 0])
        acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
        acc[1] = acc[1] + (x * x).sum(dim=(0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    was_training = model.training
    model.train()
    seen = 0
    try:
        for batch in images.split(batch_size):
            forward(batch)
            seen += len(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for layer in layers:
        layer.reset_running_stats()
        if layer in sums:
            s, sq, n = sums[layer]
            mean = s / n
            var = (sq / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
            # a narrower width of the path only uses (and recalibrates) its first channels
            layer.running_mean[: len(mean)].copy_(mean)
            layer.running_var[: len(var)].copy_(var)
            layer.num_batches_tracked.fill_(1)
    return seen
