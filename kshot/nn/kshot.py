"""K-shot parameters: every learnable tensor of a supernet as a dictionary of K slots (Eq. 4).

A K-shot layer stores ``Θ ∈ R^{K × shape}`` for each of its parameters. For a sampled path with code
``λ`` on the simplex, the weight used in the forward pass is ``θ̃ = Σ_k λ_k θ_k``. The merge happens
*before* the forward, for all the path's parameters at once (:func:`merge_kshot_weights`: one
concatenation and one matrix-vector product per step), so no extra feature maps exist and the cost over
one-shot is a single small op. With ``K = 1`` and ``λ = [1]`` the merged weight *is* the slot
(``1.0 * x == x`` exactly), so the supernet reduces to the single-path one-shot supernet (SPOS).

Layers here are functional: their ``forward`` takes the merged weights of the path, looked up in a
:class:`Merged` mapping, so that only the modules on the path take part in autograd and the slots of
unsampled operations get no gradient at all (``grad is None``, not zero): the optimiser skips them, as
SPOS does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KShotLayer",
    "KShotConv2d",
    "KShotBatchNorm2d",
    "KShotLinear",
    "Merged",
    "merge_kshot_weights",
    "merge_path",
]

Merged = dict[nn.Module, tuple[torch.Tensor, ...]]
"""Merged weights of the layers on a path: layer → its parameters, each of the layer's own shape."""


ALIGN_BYTES = 64
"""Each merged weight starts this many bytes into its buffer (a multiple): the alignment of every
fresh tensor of PyTorch's CPU allocator (c10's ``gAlignment``; CUDA's is larger). CPU kernels (oneDNN,
MKL) pick their vectorised code by the data pointer's alignment, so a weight at an unaligned offset
would be summed in another order than the same weight in a plain network's parameter: K = 1 would then
differ from SPOS in the last bits on some CPUs. Aligned, the merged weight runs the plain network's
kernels exactly."""


def merge_kshot_weights(slots: Sequence[torch.Tensor], lam: torch.Tensor) -> list[torch.Tensor]:
    """``[Σ_k λ_k Θ_k for Θ in slots]`` in one batched op.

    Args:
        slots: K-slot parameters, each of shape ``(K, *shape)``.
        lam: the path's code, shape ``(K,)``, on the simplex.

    Returns:
        The merged tensors, each of shape ``shape``: contiguous views into one buffer, each starting
        at a multiple of :data:`ALIGN_BYTES` (the slots are laid out with zero padding between them).
    """
    if not slots:
        return []
    k = lam.shape[0]
    align = max(1, ALIGN_BYTES // slots[0].element_size())
    pieces, offsets, offset = [], [], 0
    for slot in slots:
        n = slot[0].numel()
        pieces.append(slot.reshape(k, n))
        if pad := -n % align:
            pieces.append(slot.new_zeros(k, pad))
        offsets.append(offset)
        offset += n + pad
    flat = torch.cat(pieces, dim=1)
    # In the parameters' dtype even under autocast: the merged weights then stand exactly where a
    # plain network's parameters would, and each op casts them as it casts those (BN stays fp32).
    with torch.autocast(flat.device.type, enabled=False):
        merged = lam.to(flat.dtype) @ flat
    return [
        merged[o : o + s[0].numel()].view(s.shape[1:]) for o, s in zip(offsets, slots, strict=True)
    ]


def merge_path(
    layers: Sequence[KShotLayer],
    lam: torch.Tensor,
    dims: Sequence[tuple[int, int] | None] | None = None,
) -> Merged:
    """Merge every K-shot parameter of ``layers`` with ``lam``; the result feeds their forwards.

    With ``dims`` (one ``(c_in, c_out)`` or ``None`` per layer) each layer's slots are first cut to
    its active channels (:meth:`KShotLayer.active_slots`), so a narrower width of a path gets its own
    merged weights ``Σ_k λ_k Θ_k[:c_out, :c_in]`` (the paper's channel search), not a slice of another
    width's merge.
    """
    dims = dims if dims is not None else [None] * len(layers)
    groups = [layer.active_slots(d) for layer, d in zip(layers, dims, strict=True)]
    merged = iter(merge_kshot_weights([p for group in groups for p in group], lam))
    return {
        layer: tuple(next(merged) for _ in group)
        for layer, group in zip(layers, groups, strict=True)
    }


class KShotLayer(nn.Module):
    """A layer whose learnable parameters have a leading dimension of K slots."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"K = {k}: a K-shot layer needs at least one slot")
        self.k = k

    def slots(self) -> tuple[nn.Parameter, ...]:
        """The K-slot parameters, in the order :func:`merge_path` returns their merged weights."""
        return tuple(self.parameters(recurse=False))

    def active_slots(self, dims: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """The slots cut to ``dims = (c_in, c_out)`` active channels (all of them when ``None``)."""
        if dims is None:
            return self.slots()
        return tuple(self._cut(p, *dims) for p in self.slots())

    def _cut(self, slot: torch.Tensor, c_in: int, c_out: int) -> torch.Tensor:
        """One slot tensor ``(K, out, in, …)`` or ``(K, out)`` cut to the active channels."""
        return slot[:, :c_out, :c_in] if slot.dim() > 2 else slot[:, :c_out]

    def export_names(self) -> tuple[str, ...]:
        """Names of the merged parameters in the matching plain ``torch.nn`` layer."""
        return tuple(name for name, _ in self.named_parameters(recurse=False))


class KShotConv2d(KShotLayer):
    """Convolution with K weight (and bias) slots, each initialised as ``nn.Conv2d`` would be.

    ``depthwise`` convolutions have one group per channel; cut to fewer active channels they stay
    depthwise (the group count follows the merged weight).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        k: int,
        stride: int = 1,
        *,
        depthwise: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__(k)
        if depthwise and c_in != c_out:
            raise ValueError(f"a depthwise convolution maps C to C channels, got {c_in} → {c_out}")
        self.stride, self.padding, self.depthwise = stride, kernel // 2, depthwise
        fan_in_channels = 1 if depthwise else c_in
        self.weight = nn.Parameter(torch.empty(k, c_out, fan_in_channels, kernel, kernel))
        for slot in self.weight.data:  # independent slots: identical ones would never diverge
            nn.init.kaiming_uniform_(slot, a=math.sqrt(5))
        if bias:
            bound = 1 / math.sqrt(fan_in_channels * kernel * kernel)
            self.bias = nn.Parameter(torch.empty(k, c_out).uniform_(-bound, bound))

    def _cut(self, slot: torch.Tensor, c_in: int, c_out: int) -> torch.Tensor:
        if self.depthwise:
            return slot[:, :c_out]
        return super()._cut(slot, c_in, c_out)

    def forward(self, x: torch.Tensor, merged: Merged) -> torch.Tensor:
        weight, *bias = merged[self]
        return F.conv2d(
            x,
            weight,
            bias[0] if bias else None,
            stride=self.stride,
            padding=self.padding,
            groups=weight.shape[0] if self.depthwise else 1,
        )


class KShotBatchNorm2d(KShotLayer):
    """Batch norm with K slots of affine weight and bias; running statistics are shared buffers."""

    def __init__(self, channels: int, k: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(k)
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(k, channels))
        self.bias = nn.Parameter(torch.zeros(k, channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor, merged: Merged) -> torch.Tensor:
        weight, bias = merged[self]
        c = weight.shape[0]  # active channels: the statistics of the first c are used and updated
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            weight,
            bias,
            self.training,
            momentum or 0.0,
            self.eps,
        )

    def forward_masked(
        self, x: torch.Tensor, merged: Merged, selected: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` for a layer that runs whether or not the path uses it (see
        :meth:`NB201Supernet.forward_masked`): its running statistics move only when the 0-dim
        bool ``selected`` is true, so an unused layer ends the step as :meth:`forward` would
        have left it, untouched, while the step's graph stays the same for every path. The
        statistics are updated by ``batch_norm`` itself, on copies, exactly as :meth:`forward`
        updates them; a fixed ``momentum`` is needed (the cumulative average's would be a
        per-step Python number)."""
        weight, bias = merged[self]
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
        if self.momentum is None:
            raise ValueError("forward_masked needs a BN layer with a fixed momentum, not None")
        mean, var = self.running_mean.clone(), self.running_var.clone()
        out = F.batch_norm(x, mean, var, weight, bias, True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(torch.where(selected, mean, self.running_mean))
            self.running_var.copy_(torch.where(selected, var, self.running_var))
            self.num_batches_tracked.add_(selected.long())
        return out


class KShotLinear(KShotLayer):
    """Linear layer with K slots of weight and bias, each initialised as ``nn.Linear`` would be."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__(k)
        self.weight = nn.Parameter(torch.empty(k, c_out, c_in))
        self.bias = nn.Parameter(torch.empty(k, c_out))
        bound = 1 / math.sqrt(c_in)
        for w in self.weight.data:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, merged: Merged) -> torch.Tensor:
        weight, bias = merged[self]
        return F.linear(x, weight, bias)
