"""The simplex-net π(a; σ) → λ: a code on the K-simplex for every path (paper §3.2).

A two-layer MLP reads the one-hot architecture encoding (L × O) and outputs a softmax over the K
supernets. With channel search a second branch reads the width encoding; its hidden features are
added to the architecture branch's before the output layer. The output layer starts at zero, so every
path starts at λ = 1/K, the code used during warmup.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SimplexNet"]


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
