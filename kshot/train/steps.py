"""The math of one training step: which λ a path gets, the loss of a batch split over paths, and
the channel regulariser of a simplex-net step.

* λ: 1/K in warmup (and whenever K = 1); after it, by config key ``lambda_mode``, π(a) of the
  simplex-net, 1/K, or a random code drawn once per path (paper Table 6).
* A supernet step (Eq. 9) runs the whole batch through one path with a fixed λ; a simplex-net step
  (Eq. 8) splits it into ``m`` equal groups, group i through path i with its own λ_i, Θ frozen, and
  with width search adds α · r_c over the m paths (Eq. 17). :func:`grouped_loss` is both losses;
  :func:`compile_grouped_loss` is the same loss through the path-masked forward, compiled once.

The optimisers, the schedule of steps and the checkpoints are :class:`kshot.train.trainer.KShotTrainer`'s.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kshot import seeds
from kshot.config import Config
from kshot.nn.simplex import SimplexNet, channel_regularizer, width_positives
from kshot.spaces import Path, Space

__all__ = [
    "uniform_lambda",
    "random_code",
    "code_of",
    "frozen",
    "grouped_loss",
    "compile_grouped_loss",
    "width_regularizer",
]


def uniform_lambda(k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.full((k,), 1.0 / k, device=device)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Θ frozen: gradients flow through the module to its inputs (λ) but not to its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def random_code(space: Space, seed: int, path: Path, k: int) -> np.ndarray:
    """The code of ``path`` under lambda_mode random (paper Table 6): drawn once from the uniform
    distribution on the K-simplex (Dirichlet(1, …, 1)), keyed by the seed and the path's string,
    so every step and the scoring see the same code."""
    key = int.from_bytes(hashlib.sha256(space.format(path).encode()).digest()[:8], "big")
    return seeds.rng(seed, seeds.RANDOM_LAMBDA, key).dirichlet(np.ones(k))


def code_of(
    cfg: Config, space: Space, simplex: SimplexNet, device: torch.device
) -> Callable[[Path], torch.Tensor]:
    """λ of a path after warmup, by config key ``lambda_mode``: π(a) of the simplex-net
    (learned), 1/K (fixed, and K = 1 where λ = [1]), or the path's fixed random code."""
    if cfg.k == 1 or cfg.lambda_mode == "fixed":
        return lambda path: uniform_lambda(cfg.k, device)
    if cfg.lambda_mode == "random":
        return lambda path: torch.as_tensor(
            random_code(space, cfg.seed, path, cfg.k), dtype=torch.float32, device=device
        )

    @torch.no_grad()
    def learned(path: Path) -> torch.Tensor:
        return simplex(*space.codes([path], device))[0]

    return learned


def compile_grouped_loss(supernet: nn.Module, device: torch.device) -> Callable[..., Any]:
    """:func:`grouped_loss` through ``supernet.forward_masked``, whose graph is the same for every
    path, under ``torch.compile`` (on CUDA in mode "reduce-overhead": CUDA graphs). Call it with
    the paths' one-hot codes (:meth:`Space.codes`) where :func:`grouped_loss` takes paths."""
    return torch.compile(
        functools.partial(grouped_loss, supernet.forward_masked),
        mode="reduce-overhead" if device.type == "cuda" else None,
        dynamic=False,
    )


def grouped_loss(
    forward: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    paths: Sequence[Any],
    lams: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over groups of the cross-entropy, correct predictions): the batch in ``len(paths)``
    equal groups, group i through ``forward(x_i, paths[i], lams[i])``."""
    losses, correct = [], torch.zeros((), dtype=torch.long, device=x.device)
    for xg, yg, path, lam in zip(
        x.chunk(len(paths)), y.chunk(len(paths)), paths, lams, strict=True
    ):
        logits = forward(xg, path, lam)
        losses.append(F.cross_entropy(logits, yg))
        correct = correct + (logits.argmax(1) == yg).sum()
    return torch.stack(losses).mean(), correct


def width_regularizer(
    cfg: Config, space: Space, choices: Sequence[Path], lams: torch.Tensor
) -> torch.Tensor:
    """r_c (Eq. 17) of a simplex-net step's codes ``lams`` of its ``choices`` (m paths of a space
    with width search), by config keys ``rc_threshold`` and ``tau``."""
    widths = torch.tensor([space.width_factors(c) for c in choices], dtype=torch.float64)
    positives = width_positives([space.ops(c) for c in choices], widths, cfg.rc_threshold)
    return channel_regularizer(lams, positives, cfg.tau)
