"""Where the simplex-net's training signal comes from: each path's ∂L/∂λ, split by layers.

The simplex-net learns λ = π(a) from the gradient of each sampled path's loss with respect to its
code (Eq. 8). A path's loss depends on λ through every layer the path runs: the layers that every
path shares (the stem, the reduction blocks, the last BN and the classifier) and the path's own
operations (the convolutions on its cell's edges). When the gradients of different paths point the
same way, the simplex-net can only learn one code for all of them, however it is sized or trained.

For a trained NAS-Bench-201 supernet and a set of paths, :func:`code_gradients` measures each
path's gradient with the shared layers' and the path's own layers' contributions apart (each part
merged with its own copy of the code), and :func:`common_fraction` how much of them is common to
all paths. Each gradient is first projected on the simplex (its mean over the K slots removed: the
softmax output moves only along the simplex, so the rest cannot change λ).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kshot.nn.kshot import merge_path
from kshot.nn.simplex import SimplexNet
from kshot.spaces import NB201Space, Space

__all__ = ["PARTS", "code_gradients", "common_fraction", "is_own_layer"]

PARTS = ("shared", "own", "total")
"""The gradient's parts: through the layers every path shares, the path's own operations, both."""


def is_own_layer(name: str) -> bool:
    """Whether layer ``name`` (as :meth:`NB201Supernet.path_layers` names it) is one of the path's
    own operations (a cell edge's convolution) rather than a layer every path shares."""
    return ".edges." in name


def code_gradients(
    supernet: nn.Module,
    simplex: SimplexNet,
    space: Space,
    paths: Sequence[Sequence[int]],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, np.ndarray]:
    """``∂L/∂λ`` of each path's cross-entropy on ``images`` at its code ``λ = π(a)``, split by
    layers and projected on the simplex.

    The supernet runs as in a simplex-net step (BN on the batch's statistics); its weights and
    running statistics are left as they were.

    Args:
        supernet: a trained NAS-Bench-201 K-shot supernet.
        simplex: its simplex-net.
        space: the run's space (nb201).
        paths: the paths' choice vectors.
        images: one normalised batch ``(B, C, H, W)``.
        labels: its labels ``(B,)``.

    Returns:
        ``{part: (P, K) array}`` for each of :data:`PARTS`; ``total`` is ``shared + own``.

    Raises:
        ValueError: the space is not nb201 (mbv2's widths merge each layer's slots apart).
    """
    if not isinstance(space, NB201Space):
        raise ValueError(f"code gradients are measured on the nb201 space, not {space.name!r}")
    state = {k: v.clone() for k, v in supernet.state_dict().items()}
    was_training = supernet.training
    supernet.train()
    out: dict[str, list[np.ndarray]] = {part: [] for part in PARTS}
    try:
        for path in paths:
            choice = tuple(path)
            with torch.no_grad():
                lam = simplex(*space.codes([choice], images.device))[0]
            layers = supernet.path_layers(choice)
            codes = {part: lam.clone().requires_grad_(True) for part in ("shared", "own")}
            merged = {}
            for part in ("shared", "own"):
                group = [layer for name, layer in layers if is_own_layer(name) == (part == "own")]
                merged.update(merge_path(group, codes[part]))
            loss = F.cross_entropy(supernet.forward_merged(images, choice, merged), labels)
            # a path without convolutions on its edges has no own weights: its own part is 0
            shared, own = (
                torch.zeros_like(lam) if g is None else g
                for g in torch.autograd.grad(
                    loss, [codes["shared"], codes["own"]], allow_unused=True
                )
            )
            for part, grad in (("shared", shared), ("own", own), ("total", shared + own)):
                out[part].append((grad - grad.mean()).cpu().double().numpy())
    finally:
        supernet.load_state_dict(state)
        supernet.train(was_training)
    return {part: np.stack(rows) for part, rows in out.items()}


def common_fraction(grads: np.ndarray) -> float:
    """How much of the paths' gradients ``(P, K)`` is common to all of them:
    ``‖mean_a g_a‖² / mean_a ‖g_a‖²``: 1 when every path has the same gradient, 0 when the
    gradients cancel out; NaN when every gradient is zero."""
    total = float(np.mean(np.sum(grads**2, axis=1)))
    if total == 0.0:
        return float("nan")
    return float(np.sum(grads.mean(axis=0) ** 2) / total)
