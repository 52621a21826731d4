"""From a run's configuration to what trains: its search space at the data's shape, the
simplex-net, the two optimisers with the supernet's learning-rate schedule, and the forward passes'
autocast context.

The supernet optimiser is SGD with Nesterov momentum and a per-iteration cosine schedule from
``lr`` to ``lr_min`` spanning warmup and alternating training (the paper's recipe); the
simplex-net's is Adam at a constant ``simplex_lr`` (see :class:`kshot.config.Config`). The supernet
itself is built by :func:`kshot.nn.supernets.build_supernet`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kshot.config import Config
from kshot.nn.simplex import SimplexNet
from kshot.spaces import Space, space_from_config
from kshot.train.run_data import TrainData

__all__ = [
    "space_of",
    "build_simplex",
    "supernet_optimizer",
    "simplex_optimizer",
    "cosine_lambda",
    "autocast",
]


def space_of(cfg: Config, data: TrainData | None = None) -> Space:
    """The run's search space; with ``data``, at its network shape (``space.shape``: the supernet's
    and the space's ``build`` / ``flops`` / ``params`` arguments) and image resolution (what
    FLOPs and networks need; parsing and encoding paths need neither)."""
    if data is None:
        return space_from_config(cfg)
    return space_from_config(
        cfg,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        resolution=data.resolution,
    )


def build_simplex(cfg: Config, space: Space) -> SimplexNet:
    """The simplex-net over ``space``'s path codes."""
    return SimplexNet(space.arch_dim, cfg.k, hidden=cfg.simplex_hidden, width_dim=space.width_dim)


def autocast(cfg: Config, device: torch.device) -> torch.autocast:
    """The forward passes' autocast context for config key ``precision`` on ``device`` (auto: bf16
    on GPUs with native bf16, compute capability 8.0 and up; fp32 elsewhere)."""
    native_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def supernet_optimizer(
    cfg: Config, supernet: nn.Module, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """Θ's optimiser (SGD, Nesterov when there is momentum) and its per-iteration cosine schedule
    from ``lr`` to ``lr_min`` over ``total_steps``."""
    opt = torch.optim.SGD(
        supernet.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_lambda(total_steps, cfg.lr_min / cfg.lr)
    )
    return opt, scheduler


def simplex_optimizer(cfg: Config, simplex: SimplexNet) -> torch.optim.Adam:
    """σ's optimiser: Adam at the constant ``simplex_lr``."""
    return torch.optim.Adam(simplex.parameters(), lr=cfg.simplex_lr)


def cosine_lambda(total_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """Per-step cosine annealing from 1 to ``floor`` over ``total_steps`` (a LambdaLR factor;
    ``floor`` = lr_min / lr)."""
    return lambda it: (
        floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(it, total_steps) / total_steps))
    )
