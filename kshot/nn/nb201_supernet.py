"""The K-shot NAS-Bench-201 supernet.

Its module tree mirrors :class:`kshot.spaces.nb201.Network`: every cell edge holds one K-shot module
per parametric operation (``nor_conv_1x1``, ``nor_conv_3x3``); the stem, the reduction blocks, the last
BN and the classifier are K-shot layers shared by every path. A forward takes the path and its code λ,
merges the weights of the path's layers once (:func:`kshot.nn.kshot.merge_path`) and runs only those
layers, so the slots of unsampled operations never enter autograd. :meth:`NB201Supernet.export`
gives the state dict of the stand-alone network of a path with its merged weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
from kshot.spaces import nb201

__all__ = ["NB201Supernet"]

_CONV_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
_SKIP, _POOL = nb201.OPS.index("skip_connect"), nb201.OPS.index("avg_pool_3x3")


class KShotReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = KShotConv2d(c_in, c_out, kernel, k, stride=stride)
        self.bn = KShotBatchNorm2d(c_out, k)

    def forward(self, x: torch.Tensor, merged: Merged) -> torch.Tensor:
        return self.bn(self.conv(torch.relu(x), merged), merged)

    def forward_masked(
        self, x: torch.Tensor, merged: Merged, selected: torch.Tensor
    ) -> torch.Tensor:
        return self.bn.forward_masked(self.conv(torch.relu(x), merged), merged, selected)


class KShotResNetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.conv_a = KShotReLUConvBN(c_in, c_out, 3, k, stride=2)
        self.conv_b = KShotReLUConvBN(c_out, c_out, 3, k)
        self.shortcut = KShotConv2d(c_in, c_out, 1, k)

    def forward(self, x: torch.Tensor, merged: Merged) -> torch.Tensor:
        shortcut = self.shortcut(F.avg_pool2d(x, 2), merged)
        return shortcut + self.conv_b(self.conv_a(x, merged), merged)


class SuperCell(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(
            nn.ModuleDict({op: KShotReLUConvBN(c, c, kern, k) for op, kern in _CONV_KERNEL.items()})
            for _ in nb201.EDGES
        )

    def forward(self, x: torch.Tensor, choice: nb201.Arch, merged: Merged) -> torch.Tensor:
        def edge(e: int, h: torch.Tensor) -> torch.Tensor | None:
            op = nb201.OPS[choice[e]]
            if op == "none":
                return None  # contributes zeros
            if op == "avg_pool_3x3":
                return F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False)
            if op == "skip_connect":
                return h
            return self.edges[e][op](h, merged)

        return _cell(x, edge)

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor, merged: Merged) -> torch.Tensor:
        """Every operation of every edge runs and ``mask`` (edges × ops, bool) keeps the path's:
        the unused ones add exact zeros, get zero gradients and leave their BN statistics alone."""

        def edge(e: int, h: torch.Tensor) -> torch.Tensor:
            keep = mask[e]
            out = torch.where(keep[_SKIP], h, 0.0) + torch.where(
                keep[_POOL], F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False), 0.0
            )
            for op, branch in self.edges[e].items():
                selected = keep[nb201.OPS.index(op)]
                out = out + torch.where(selected, branch.forward_masked(h, merged, selected), 0.0)
            return out

        return _cell(x, edge)


def _cell(
    x: torch.Tensor, edge: Callable[[int, torch.Tensor], torch.Tensor | None]
) -> torch.Tensor:
    """The cell's DAG: node j is the sum of ``edge(e, node_i)`` over its incoming edges e = (i, j),
    in edge order (``None``: the edge adds nothing); the output is the last node."""
    nodes = [x]
    for to in range(1, 4):
        total = None
        for e, (t, src) in enumerate(nb201.EDGES):
            if t != to:
                continue
            h = edge(e, nodes[src])
            if h is not None:
                total = h if total is None else total + h
        nodes.append(torch.zeros_like(x) if total is None else total)
    return nodes[-1]


class NB201Supernet(nn.Module):
    """K-shot supernet over the NAS-Bench-201 cell space.

    Args:
        k: number of weight slots K.
        C: channels of the first stage.
        N: cells per stage.
        num_classes: classifier outputs.
        in_channels: image channels.
    """

    def __init__(
        self, k: int, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.k, self.C, self.N = k, C, N
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stem = KShotConv2d(in_channels, C, 3, k)
        self.stem_bn = KShotBatchNorm2d(C, k)
        self.cells = nn.ModuleList(
            KShotResNetBlock(c_in, c_out, k) if red else SuperCell(c_out, k)
            for c_in, c_out, red in nb201.stage_layout(C, N)
        )
        self.last_bn = KShotBatchNorm2d(4 * C, k)
        self.classifier = KShotLinear(4 * C, num_classes, k)
        self._path_cache: dict[nb201.Arch, list[tuple[str, KShotLayer]]] = {}

    @property
    def kshot_layers(self) -> list[KShotLayer]:
        """Every K-shot layer, in module order (what :meth:`forward_masked` merges)."""
        return [m for m in self.modules() if isinstance(m, KShotLayer)]

    def path_layers(self, choice: nb201.Arch) -> list[tuple[str, KShotLayer]]:
        """``(name in the stand-alone network, K-shot layer)`` of every layer the path uses."""
        if choice not in self._path_cache:
            self._path_cache[choice] = self._collect_path_layers(choice)
        return self._path_cache[choice]

    def _collect_path_layers(self, choice: nb201.Arch) -> list[tuple[str, KShotLayer]]:
        modules: list[tuple[str, nn.Module]] = [("stem", self.stem), ("stem_bn", self.stem_bn)]
        for i, cell in enumerate(self.cells):
            if isinstance(cell, KShotResNetBlock):
                modules.append((f"cells.{i}", cell))
                continue
            for e, op in enumerate(choice):
                name = nb201.OPS[op]
                if name in _CONV_KERNEL:
                    modules.append((f"cells.{i}.edges.{e}", cell.edges[e][name]))
        modules += [("last_bn", self.last_bn), ("classifier", self.classifier)]
        layers = []
        for prefix, module in modules:
            if isinstance(module, KShotLayer):
                layers.append((prefix, module))
                continue
            for name, sub in module.named_modules():
                if isinstance(sub, KShotLayer):
                    layers.append((f"{prefix}.{name}", sub))
        return layers

    def forward(
        self, x: torch.Tensor, arch: str | Sequence[int], lam: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the path ``arch`` with weights merged by ``lam`` (shape ``(K,)``)."""
        choice = nb201.parse(arch)
        merged = merge_path([layer for _, layer in self.path_layers(choice)], lam)
        return self.forward_merged(x, choice, merged)

    def forward_merged(self, x: torch.Tensor, choice: nb201.Arch, merged: Merged) -> torch.Tensor:
        """Logits of the path ``choice`` with its layers' weights already merged (``merged``
        holds every layer of :meth:`path_layers`, each merged with any code)."""
        x = self.stem_bn(self.stem(x, merged), merged)
        for cell in self.cells:
            x = cell(x, merged) if isinstance(cell, KShotResNetBlock) else cell(x, choice, merged)
        x = torch.relu(self.last_bn(x, merged))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), merged)

    def forward_masked(
        self, x: torch.Tensor, arch_code: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` with the path given as its one-hot code (:func:`nb201.one_hot`) instead
        of a Python tuple: every operation runs and the code masks out all but the path's, so the
        step's graph and shapes are the same for every path and ``torch.compile`` / CUDA graphs
        capture it once. The logits and every BN statistic equal :meth:`forward`'s bitwise, the
        path's gradients up to rounding (the merge sums more terms, all exact zeros); parameters
        off the path get zero gradients where :meth:`forward` leaves none (the trainer drops them
        before the optimiser step)."""
        mask = arch_code.view(nb201.NUM_EDGES, nb201.NUM_OPS) > 0.5
        merged = merge_path(self.kshot_layers, lam)
        x = self.stem_bn(self.stem(x, merged), merged)
        for cell in self.cells:
            x = (
                cell(x, merged)
                if isinstance(cell, KShotResNetBlock)
                else cell.forward_masked(x, mask, merged)
            )
        x = torch.relu(self.last_bn(x, merged))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), merged)

    def drop_off_path_gradients(self, arch: str | Sequence[int]) -> None:
        """After a backward through :meth:`forward_masked`: the parameters off the path hold zero
        gradients where :meth:`forward` leaves none, which SGD skips (no weight decay, no
        momentum); dropping them makes the optimiser step that of :meth:`forward`."""
        on_path = {p for _, layer in self.path_layers(nb201.parse(arch)) for p in layer.slots()}
        for p in self.parameters():
            if p not in on_path:
                p.grad = None

    @torch.no_grad()
    def export(self, arch: str | Sequence[int], lam: torch.Tensor) -> dict[str, torch.Tensor]:
        """State dict of ``nb201.build(arch, …)`` with the path's merged weights and BN statistics."""
        choice = nb201.parse(arch)
        layers = self.path_layers(choice)
        merged = merge_path([layer for _, layer in layers], lam)
        state = {}
        for prefix, layer in layers:
            for name, tensor in zip(layer.export_names(), merged[layer], strict=True):
                state[f"{prefix}.{name}"] = tensor.clone()
            for name, buf in layer.named_buffers(recurse=False):
                state[f"{prefix}.{name}"] = buf.clone()
        return state

    def build_standalone(self, arch: str | Sequence[int]) -> nb201.Network:
        """The plain stand-alone network of ``arch`` with this supernet's shape."""
        return nb201.build(
            arch, C=self.C, N=self.N, num_classes=self.num_classes, in_channels=self.in_channels
        )
