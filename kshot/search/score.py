"""Scoring a path on the supernet: λ = π(a), BN recalibration, validation accuracy."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from kshot.nn.simplex import SimplexNet
from kshot.search.recalibrate import recalibrate_bn
from kshot.spaces import Space

__all__ = ["PathScorer"]


class PathScorer:
    """Scores paths of a trained supernet on fixed recalibration and validation images.

    Args:
        space: the supernet's search space (parsing and encoding paths).
        supernet: the trained K-shot supernet.
        simplex: its simplex-net (λ = π(a)); ``None`` scores with λ = 1/K.
        bn_images: the N normalised training images used to recalibrate BN, on the device.
        valid_images: validation images as stored (e.g. uint8), on the device; ``prepare``
            normalises one batch at a time, so ImageNet's 50,000 need no float copy.
        valid_labels: their labels, on the device.
        bn_batch_size: micro-batch of the recalibration pass.
        eval_batch_size: batch of the validation pass.
        prepare: turns a batch of ``valid_images`` into the network's input.
        autocast: the forward passes' precision context (default: none).
        code: λ of a path, overriding ``simplex`` (e.g. :func:`kshot.train.steps.code_of`,
            which follows config key ``lambda_mode``).
    """

    def __init__(
        self,
        space: Space,
        supernet: nn.Module,
        simplex: SimplexNet | None,
        bn_images: torch.Tensor,
        valid_images: torch.Tensor,
        valid_labels: torch.Tensor,
        bn_batch_size: int,
        eval_batch_size: int,
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        code: Callable[[Sequence[int]], torch.Tensor] | None = None,
    ) -> None:
        self.space, self.supernet, self.simplex = space, supernet, simplex
        self.bn_images, self.valid_images, self.valid_labels = bn_images, valid_images, valid_labels
        self.bn_batch_size, self.eval_batch_size = bn_batch_size, eval_batch_size
        self.prepare, self.autocast, self.code = prepare, autocast, code
        self.device = bn_images.device

    @torch.no_grad()
    def lam(self, arch: Sequence[int]) -> torch.Tensor:
        if self.code is not None:
            return self.code(arch)
        if self.simplex is None:
            return torch.full((self.supernet.k,), 1.0 / self.supernet.k, device=self.device)
        return self.simplex(*self.space.codes([arch], self.device))[0]

    @torch.no_grad()
    def score(self, arch: str | Sequence[int]) -> tuple[float, list[float]]:
        """(validation accuracy in %, λ) of ``arch`` after BN recalibration."""
        choice = self.space.parse(arch)
        lam = self.lam(choice)
        with self.autocast():
            recalibrate_bn(
                self.supernet,
                lambda x: self.supernet(x, choice, lam),
                self.bn_images,
                self.bn_batch_size,
            )
            self.supernet.eval()
            correct = torch.zeros((), dtype=torch.long, device=self.device)  # read once, at the end
            for x, y in zip(
                self.valid_images.split(self.eval_batch_size),
                self.valid_labels.split(self.eval_batch_size),
                strict=True,
            ):
                logits = self.supernet(self.prepare(x), choice, lam)
                correct += (logits.argmax(1) == y).sum()
        return 100.0 * int(correct) / len(self.valid_labels), lam.tolist()
