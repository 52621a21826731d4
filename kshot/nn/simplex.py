"""The simplex-net π(a; σ) → λ: a code on the K-simplex for every path (Su et al., ICML 2021).

A two-layer MLP reads the one-hot architecture encoding (L × O) and outputs a softmax over the K
supernets. With channel search a second branch reads the width encoding; its hidden features are
added to the architecture branch's before the output layer. The output layer starts at zero, so every
path starts at λ = 1/K, the code used during warmup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NEAR_UNIFORM_TV",
    "PATH_SPECIFIC_TV",
    "SimplexNet",
    "channel_regularizer",
    "code_statistics",
    "width_positives",
]

# Mean total-variation distance from 1/K below which a set of codes counts as near uniform: less
# than a tenth of the probability mass moved off the uniform code, on average over the paths.
NEAR_UNIFORM_TV = 0.1
# Mean total-variation distance between the codes of two different paths from which the codes count
# as path-specific: a tenth of the probability mass placed differently for two paths, on average.
PATH_SPECIFIC_TV = 0.1


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


def _mean_pairwise_tv(codes: np.ndarray) -> float:
    """Mean of ½‖λ_i − λ_j‖₁ over the pairs i ≠ j of ``codes`` (P, K), 0 for one path.

    Per slot, the sum of |x_i − x_j| over pairs is Σ_r x_(r) (2r − P − 1) over the values sorted
    (r from 1): O(K · P log P) instead of P² · K for all 15,625 NAS-Bench-201 paths.
    """
    p = len(codes)
    if p < 2:
        return 0.0
    ordered = np.sort(codes, axis=0)
    weights = 2.0 * np.arange(1, p + 1) - p - 1
    return float(0.5 * (weights @ ordered).sum() / (p * (p - 1) / 2))


def code_statistics(lams: np.ndarray | torch.Tensor) -> dict[str, object]:
    """How far the codes λ of a set of paths are from uniform and from one another.

    Per path (arrays of length P): ``max`` (1/K when uniform), ``sq_norm`` ‖λ‖² (1/K when
    uniform, 1 when one-hot), ``entropy`` in nats (log K when uniform) and ``tv`` ½‖λ − 1/K‖₁ (0
    when uniform). Over the set: each one's mean, and ``cosine``, the mean cosine similarity
    between the codes of different paths (1 when every path has the same code, whatever it is:
    then λ reweights the K slots alike for all paths, which no path-specific K-shot effect can
    come from), and ``pairwise_tv``, the mean total-variation distance ½‖λ_i − λ_j‖₁ between the
    codes of two different paths (0 when every path has the same code, 1 when no two share a
    slot): how far apart the paths' codes are, which cosine, near 1 for any codes near a common
    point, cannot show. ``near_uniform`` is true when the mean ``tv`` is below
    ``NEAR_UNIFORM_TV``.

    Args:
        lams: ``(P, K)`` codes, each on the simplex.

    Returns:
        ``{"per_path": {name: array}, "mean": {name: float, "cosine": float}, "near_uniform": bool,
        "k": K}``.
    """
    codes = np.asarray(lams.detach().cpu() if isinstance(lams, torch.Tensor) else lams, float)
    if codes.ndim != 2 or len(codes) == 0:
        raise ValueError(f"codes must be a (paths, K) array with a path, got shape {codes.shape}")
    k = codes.shape[1]
    logs = np.log(np.where(codes > 0, codes, 1.0))
    per_path = {
        "max": codes.max(axis=1),
        "sq_norm": (codes**2).sum(axis=1),
        "entropy": -(codes * logs).sum(axis=1),
        "tv": 0.5 * np.abs(codes - 1.0 / k).sum(axis=1),
    }
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    p = len(codes)
    similarity = unit @ unit.T
    cosine = (similarity.sum() - np.trace(similarity)) / (p * (p - 1)) if p > 1 else 1.0
    mean = {name: float(values.mean()) for name, values in per_path.items()}
    mean["cosine"] = float(cosine)
    mean["pairwise_tv"] = _mean_pairwise_tv(codes)
    return {
        "per_path": per_path,
        "mean": mean,
        "near_uniform": bool(mean["tv"] < NEAR_UNIFORM_TV),
        "k": k,
    }
