"""The simplex-net π(a; σ) → λ: a code on the K-simplex for every path (Su et al., ICML 2021).

A two-layer MLP reads the one-hot architecture encoding (L × O) and outputs a softmax over the K
supernets. With channel search a second branch reads the width encoding; its hidden features are
added to the architecture branch's before the output layer. The output layer starts at zero, so every
path starts at λ = 1/K, the code used during warmup.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SimplexNet", "channel_regularizer", "width_positives"]


class SimplexNet(nn.Module):
    """π(a; σ): architecture (and optionally width) encodings → λ on the simplex.

    Args:
        arch_dim: length of the one-hot architecture encoding (L × O).
        k: number of supernets K (the output size).
        hidden: hidden units of the MLP.
        width_dim: length of the width encoding; 0 disables the channel branch.
    """

    def __init__(self, arch_dim: int, k: int, hidden: int = 64, width_dim: int = 0) -> None:
        super().__init__()
        self.k = k
        self.arch_branch = nn.Linear(arch_dim, hidden)
        self.width_branch = nn.Linear(width_dim, hidden) if width_dim else None
        self.out = nn.Linear(hidden, k)
        nn.init.zeros_(self.out.weight)  # softmax(0) = 1/K for every path
        nn.init.zeros_(self.out.bias)

    def forward(
        self, arch_code: torch.Tensor, width_code: torch.Tensor | None = None
    ) -> torch.Tensor:
        """λ for a batch of encodings ``(B, arch_dim)`` (or one ``(arch_dim,)``): shape ``(…, K)``."""
        hidden = self.arch_branch(arch_code)
        if self.width_branch is not None:
            if width_code is None:
                raise ValueError("this simplex-net has a channel branch: pass the width encoding")
            hidden = hidden + self.width_branch(width_code)
        return torch.softmax(self.out(torch.relu(hidden)), dim=-1)


def width_positives(
    ops: Sequence[Sequence[int]], widths: torch.Tensor, threshold: float
) -> torch.Tensor:
    """The positive pairs of r_c: ``(m, m)`` bool, True where paths i ≠ k share their operations
    and their width distance ``d(c_i, c_k) = ‖c_i − c_k‖₁ / L`` (the mean per-layer difference of
    the width factors) is below ``threshold``.

    Args:
        ops: the operation part of each of the m paths.
        widths: ``(m, L)`` width factors.
        threshold: the distance below which two paths are positives.
    """
    m = len(ops)
    same_ops = torch.tensor([[tuple(a) == tuple(b) for b in ops] for a in ops])
    widths = widths.to(torch.float64)
    distance = torch.cdist(widths, widths, p=1) / widths.shape[1]
    # strictly below, with a margin far under any width step, so that a pair at the threshold
    # is never decided by rounding
    return same_ops & (distance < threshold - 1e-6) & ~torch.eye(m, dtype=torch.bool)


def channel_regularizer(lams: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """r_c (paper Eq. 13–16): codes of paths with similar widths should be similar.

    For a positive pair (i, k), ``P(c_i | c_k) = exp(λ_iᵀλ_k / τ) / (exp(λ_iᵀλ_k / τ) +
    Σ_{j ≠ k} exp(λ_iᵀλ_j / τ))`` with j over the m paths of the step (Eq. 15 as written, so
    j = i is in the sum): a softmax of ``λ_iᵀλ_j / τ`` over all j, read at k. ``r_c = −log P``
    averaged over the ordered positive pairs (Eq. 16); 0 when the step has none.

    Args:
        lams: ``(m, K)`` codes of the step's paths (with gradients to the simplex-net).
        positives: ``(m, m)`` bool from :func:`width_positives`.
        tau: the temperature τ (paper: 0.3).
    """
    if not positives.any():
        return lams.sum() * 0.0  # keeps the graph (and DDP's gradient set) the same every step
    log_p = F.log_softmax(lams @ lams.T / tau, dim=1)
    return -log_p[positives.to(lams.device)].mean()
