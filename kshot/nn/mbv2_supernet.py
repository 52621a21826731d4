"""The K-shot MobileNetV2 (SPOS / GreedyNAS) supernet with joint operation and width search.

Every searchable block holds one K-shot inverted residual per operation (12) and a K-shot 1x1
projection for identity where the shapes differ; the stem, the first block, the last layer and the
classifier are shared. Each layer is built at its widest (width factor 1.0). A path's layers run cut
to its widths: every K-shot parameter is cut to the layer's active channels *before* the merge with
the path's λ (:func:`kshot.nn.kshot.merge_path` with ``dims``), so each (operation, width) path gets
its own merged weights (the paper's channel search), and unsampled operations never enter autograd.

The module tree follows :func:`kshot.spaces.mbv2.plan`; :meth:`MBV2Supernet.export` gives the state
dict of :func:`kshot.spaces.mbv2.build` of a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kshot.nn.kshot import (
    KShotBatchNorm2d,
    KShotConv2d,
    KShotLayer,
    KShotLinear,
    Merged,
    merge_path,
)
from kshot.spaces import mbv2

__all__ = ["MBV2Supernet", "PathLayer"]


class PathLayer(NamedTuple):
    """A K-shot layer a path uses: its name in the stand-alone network and its active channels."""

    name: str
    layer: KShotLayer
    dims: tuple[int, int]


class KShotConvBN(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, kernel: int, k: int, stride: int = 1, depthwise: bool = False
    ) -> None:
        super().__init__()
        self.conv = KShotConv2d(c_in, c_out, kernel, k, stride, depthwise=depthwise)
        self.bn = KShotBatchNorm2d(c_out, k)

    def forward(self, x: torch.Tensor, merged: Merged) -> torch.Tensor:
        return self.bn(self.conv(x, merged), merged)

    def path(self, prefix: str, c_in: int, c_out: int) -> list[PathLayer]:
        """Its layers under the stand-alone names ``prefix.0`` (conv) and ``prefix.1`` (BN)."""
        return [
            PathLayer(f"{prefix}.0", self.conv, (c_in, c_out)),
            PathLayer(f"{prefix}.1", self.bn, (c_out, c_out)),
        ]


class KShotInvertedResidual(nn.Module):
    """One operation of a block at its widest; runs at the widths of a :class:`mbv2.Layer`."""

    def __init__(self, widest: mbv2.Layer, k: int) -> None:
        super().__init__()
        op = widest.op
        assert op is not None and not op.is_identity
        hidden, squeeze = widest.hidden, widest.squeeze
        self.expand = KShotConvBN(widest.c_in, hidden, 1, k) if op.expansion != 1 else None
        self.depthwise = KShotConvBN(hidden, hidden, op.kernel, k, widest.stride, depthwise=True)
        if op.se:
            self.se_reduce = KShotConv2d(hidden, squeeze, 1, k, bias=True)
            self.se_expand = KShotConv2d(squeeze, hidden, 1, k, bias=True)
        self.project = KShotConvBN(hidden, widest.c_out, 1, k)

    def path(self, prefix: str, layer: mbv2.Layer) -> list[PathLayer]:
        hidden, squeeze = layer.hidden, layer.squeeze
        out = []
        if self.expand is not None:
            out += self.expand.path(f"{prefix}.expand", layer.c_in, hidden)
        out += self.depthwise.path(f"{prefix}.depthwise", hidden, hidden)
        if layer.op is not None and layer.op.se:
            out += [
                PathLayer(f"{prefix}.se.reduce", self.se_reduce, (hidden, squeeze)),
                PathLayer(f"{prefix}.se.expand", self.se_expand, (squeeze, hidden)),
            ]
        return out + self.project.path(f"{prefix}.project", hidden, layer.c_out)

    def forward(self, x: torch.Tensor, layer: mbv2.Layer, merged: Merged) -> torch.Tensor:
        h = x if self.expand is None else F.hardswish(self.expand(x, merged))
        h = F.hardswish(self.depthwise(h, merged))
        if layer.op is not None and layer.op.se:
            s = self.se_expand(
                torch.relu(self.se_reduce(F.adaptive_avg_pool2d(h, 1), merged)), merged
            )
            h = h * F.hardsigmoid(s)
        h = self.project(h, merged)
        return x + h if layer.residual else h


class SuperBlock(nn.Module):
    """A searchable block: the 12 inverted residual operations and identity's projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, k: int) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(
            {
                name: KShotInvertedResidual(mbv2.Layer("block", c_in, c_out, stride, spec), k)
                for name, spec in ((n, mbv2.op_spec(i)) for i, n in enumerate(mbv2.OPS))
                if not spec.is_identity
            }
        )
        self.projection = KShotConvBN(c_in, c_out, 1, k, stride)

    def path(self, prefix: str, layer: mbv2.Layer) -> list[PathLayer]:
        assert layer.op is not None
        if layer.op.is_identity:
            return self.projection.path(prefix, layer.c_in, layer.c_out) if layer.projects else []
        return self.ops[layer.op.name].path(prefix, layer)

    def forward(self, x: torch.Tensor, layer: mbv2.Layer, merged: Merged) -> torch.Tensor:
        assert layer.op is not None
        if layer.op.is_identity:
            return self.projection(x, merged) if layer.projects else x
        return self.ops[layer.op.name](x, layer, merged)


class MBV2Supernet(nn.Module):
    """K-shot supernet over the mbv2 space.

    Args:
        k: number of weight slots K.
        num_classes: classifier outputs.
        width_mult: scales every layer's channels (paper: 1.0).
        divisor: channels are multiples of it (MobileNetV2: 8).
        in_channels: image channels.
    """

    def __init__(
        self,
        k: int,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        divisor: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.width_mult, self.divisor, self.in_channels = width_mult, divisor, in_channels
        widest = mbv2.plan(mbv2.full_width([0] * mbv2.NUM_BLOCKS), width_mult, divisor, in_channels)
        layers: list[nn.Module] = [KShotConvBN(in_channels, widest[0].c_out, 3, k, stride=2)]
        layers.append(KShotInvertedResidual(widest[1], k))
        layers += [SuperBlock(w.c_in, w.c_out, w.stride, k) for w in widest[2:-1]]
        layers.append(KShotConvBN(widest[-2].c_out, widest[-1].c_out, 1, k))
        self.layers = nn.ModuleList(layers)
        self.classifier = KShotLinear(widest[-1].c_out, num_classes, k)

    def plan(self, path: str | Sequence[int]) -> list[mbv2.Layer]:
        return mbv2.plan(path, self.width_mult, self.divisor, self.in_channels)

    def path_layers(self, path: str | Sequence[int]) -> list[PathLayer]:
        """Every K-shot layer the path uses, with its stand-alone name and active channels."""
        plan = self.plan(path)
        out: list[PathLayer] = []
        for i, (module, layer) in enumerate(zip(self.layers, plan, strict=True)):
            if layer.kind == "block":
                out += module.path(f"layers.{i}", layer)
            else:
                out += module.path(f"layers.{i}", layer.c_in, layer.c_out)
        return out + [PathLayer("classifier", self.classifier, (plan[-1].c_out, self.num_classes))]

    def _merge(
        self, path: str | Sequence[int], lam: torch.Tensor
    ) -> tuple[list[PathLayer], Merged]:
        items = self.path_layers(path)
        merged = merge_path([p.layer for p in items], lam, [p.dims for p in items])
        return items, merged

    def forward(
        self, x: torch.Tensor, path: str | Sequence[int], lam: torch.Tensor
    ) -> torch.Tensor:
        """Logits of ``path`` with weights merged by ``lam`` (shape ``(K,)``)."""
        plan = self.plan(path)
        _, merged = self._merge(path, lam)
        for module, layer in zip(self.layers, plan, strict=True):
            x = module(x, layer, merged) if layer.kind == "block" else torch.relu(module(x, merged))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x, merged)

    @torch.no_grad()
    def export(self, path: str | Sequence[int], lam: torch.Tensor) -> dict[str, torch.Tensor]:
        """State dict of ``mbv2.build(path, …)`` with the path's merged weights and BN statistics."""
        items, merged = self._merge(path, lam)
        state = {}
        for name, layer, (_, c_out) in items:
            for pname, tensor in zip(layer.export_names(), merged[layer], strict=True):
                state[f"{name}.{pname}"] = tensor.clone()
            for bname, buf in layer.named_buffers(recurse=False):
                state[f"{name}.{bname}"] = (buf[:c_out] if buf.dim() else buf).clone()
        return state

    def build_standalone(self, path: str | Sequence[int]) -> mbv2.Network:
        """The plain stand-alone network of ``path`` with this supernet's shape."""
        return mbv2.build(path, self.num_classes, self.width_mult, self.divisor, self.in_channels)
