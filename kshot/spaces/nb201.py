"""NAS-Bench-201 cell search space (Dong & Yang, ICLR 2020).

A cell is a DAG of 4 nodes; each of its 6 edges ``j -> i`` (``j < i``) carries one of 5 operations,
so the space holds ``5 ** 6 = 15,625`` cells. The macro skeleton is a 3x3 stem convolution, three stages
of ``N`` cells with ``C``, ``2C`` and ``4C`` channels joined by residual reduction blocks, a final
BN-ReLU, global average pooling and a linear classifier.

This module is the one place that defines the encoding of an architecture:

* the benchmark's string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (:func:`parse`, :func:`format_arch`);
* the choice vector: a tuple of 6 op indices in the edge order of the string (:data:`EDGES`);
* the benchmark's index (:func:`to_index`, :func:`from_index`);
* the one-hot ``6 x 5`` encoding that the simplex-net reads (:func:`one_hot`).

It also holds the exact FLOPs / parameter formula of the stand-alone network (NAS-Bench-201's
convention: convolutions and the classifier count; BN, ReLU and pooling count no FLOPs, every learnable
parameter counts) and :func:`build`, that network in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "OPS",
    "EDGES",
    "NUM_EDGES",
    "NUM_OPS",
    "SIZE",
    "Arch",
    "parse",
    "format_arch",
    "to_index",
    "from_index",
    "all_archs",
    "one_hot",
    "sample",
    "mutate",
    "crossover",
    "flops",
    "params",
    "build",
    "stage_layout",
]

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Edges (to_node, from_node) in the order they appear in the benchmark's string.
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_EDGES = len(EDGES)
NUM_OPS = len(OPS)
SIZE = NUM_OPS**NUM_EDGES

Arch = tuple[int, ...]
"""An architecture as its choice vector: one op index (into :data:`OPS`) per edge of :data:`EDGES`."""

_OP_INDEX = {name: i for i, name in enumerate(OPS)}


def parse(arch: str | Sequence[int]) -> Arch:
    """Parse a benchmark string (or validate a choice vector) into a choice vector.

    Raises:
        ValueError: naming the string and what is wrong with it.
    """
    if not isinstance(arch, str):
        if any(isinstance(c, bool) or int(c) != c for c in arch):
            raise ValueError(
                f"invalid nb201 choice vector {list(arch)!r}: choices must be integers"
            )
        choice = tuple(int(c) for c in arch)
        if len(choice) != NUM_EDGES or any(not 0 <= c < NUM_OPS for c in choice):
            raise ValueError(
                f"invalid nb201 choice vector {list(arch)!r}: need {NUM_EDGES} op indices in "
                f"[0, {NUM_OPS - 1}]"
            )
        return choice
    nodes = arch.strip().split("+")
    if len(nodes) != 3:
        raise ValueError(
            f"invalid nb201 arch string {arch!r}: expected 3 nodes separated by '+', "
            f"like '|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|'"
        )
    choice = []
    for node, text in enumerate(nodes, start=1):
        if not (text.startswith("|") and text.endswith("|")):
            raise ValueError(
                f"invalid nb201 arch string {arch!r}: node {node} {text!r} must be '|…|'"
            )
        edges = text[1:-1].split("|")
        if len(edges) != node:
            raise ValueError(
                f"invalid nb201 arch string {arch!r}: node {node} needs {node} inputs, got {len(edges)}"
            )
        for src, edge in enumerate(edges):
            op, sep, inp = edge.partition("~")
            if not sep or op not in _OP_INDEX or inp != str(src):
                raise ValueError(
                    f"invalid nb201 arch string {arch!r}: edge {edge!r} of node {node} must be "
                    f"'<op>~{src}' with <op> one of {', '.join(OPS)}"
                )
            choice.append(_OP_INDEX[op])
    return tuple(choice)


def format_arch(arch: str | Sequence[int]) -> str:
    """The benchmark's string of an architecture."""
    choice = parse(arch)
    nodes, pos = [], 0
    for node in range(1, 4):
        nodes.append("|" + "|".join(f"{OPS[choice[pos + j]]}~{j}" for j in range(node)) + "|")
        pos += node
    return "+".join(nodes)


def to_index(arch: str | Sequence[int]) -> int:
    """Position of an architecture in this space's enumeration (0 … 15,624).

    The enumeration is ``itertools.product(range(5), repeat=6)`` over the choice vector (first edge
    varying slowest). The benchmark's released files number cells in their own order, so ground truth
    is always joined by arch string, never by index.
    """
    index = 0
    for c in parse(arch):
        index = index * NUM_OPS + c
    return index


def from_index(index: int) -> Arch:
    """Inverse of :func:`to_index`."""
    if not 0 <= int(index) < SIZE:
        raise ValueError(f"nb201 index {index} out of range [0, {SIZE - 1}]")
    digits = []
    for _ in range(NUM_EDGES):
        index, c = divmod(int(index), NUM_OPS)
        digits.append(c)
    return tuple(reversed(digits))


def all_archs() -> list[Arch]:
    """All 15,625 cells in :func:`to_index` order."""
    return [from_index(i) for i in range(SIZE)]


def one_hot(arch: str | Sequence[int]) -> torch.Tensor:
    """The ``NUM_EDGES x NUM_OPS`` one-hot encoding, flattened, as float32."""
    choice = torch.tensor(parse(arch))
    return nn.functional.one_hot(choice, NUM_OPS).flatten().float()


def sample(rng: np.random.Generator) -> Arch:
    """A uniformly random architecture."""
    return tuple(int(c) for c in rng.integers(0, NUM_OPS, size=NUM_EDGES))


def mutate(arch: Sequence[int], rng: np.random.Generator, prob: float = 0.1) -> Arch:
    """Resample each edge's op with probability ``prob``; at least one edge always changes."""
    choice = list(parse(arch))
    flips = rng.random(NUM_EDGES) < prob
    if not flips.any():
        flips[rng.integers(NUM_EDGES)] = True
    for e in np.flatnonzero(flips):
        choice[e] = int((choice[e] + rng.integers(1, NUM_OPS)) % NUM_OPS)
    return tuple(choice)


def crossover(a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Arch:
    """Uniform crossover: each edge's op comes from ``a`` or ``b`` with equal probability."""
    pick = rng.random(NUM_EDGES) < 0.5
    return tuple(int(x) if p else int(y) for x, y, p in zip(parse(a), parse(b), pick, strict=True))


# --------------------------------------------------------------------------------------------------
# Macro skeleton, FLOPs and parameters


def stage_layout(C: int, N: int) -> list[tuple[int, int, bool]]:
    """``(C_in, C_out, is_reduction)`` for every block after the stem, in order."""
    layout, c_prev = [], C
    for stage, width in enumerate((C, 2 * C, 4 * C)):
        if stage > 0:
            layout.append((c_prev, width, True))
            c_prev = width
        layout.extend((width, width, False) for _ in range(N))
    return layout


def _conv(c_in: int, c_out: int, k: int, hw: int, bn: bool = True) -> tuple[int, int]:
    """(FLOPs, params) of a bias-free ``k x k`` convolution with output ``hw x hw`` (+ its BN)."""
    macs = c_in * c_out * k * k
    return macs * hw * hw, macs + (2 * c_out if bn else 0)


def _count(
    arch: str | Sequence[int], C: int, N: int, num_classes: int, resolution: int, in_channels: int
) -> tuple[int, int]:
    choice = parse(arch)
    hw = resolution
    fl, pa = _conv(in_channels, C, 3, hw)  # stem conv + BN
    for c_in, c_out, reduction in stage_layout(C, N):
        if reduction:
            hw = (hw + 1) // 2  # 3x3 stride-2 conv with padding 1
            for term in (
                _conv(c_in, c_out, 3, hw),  # conv_a: ReLU-Conv(stride 2)-BN
                _conv(c_out, c_out, 3, hw),  # conv_b: ReLU-Conv-BN
                _conv(c_in, c_out, 1, hw, bn=False),  # shortcut: AvgPool(2) then 1x1 conv
            ):
                fl, pa = fl + term[0], pa + term[1]
            continue
        for op in choice:
            k = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(OPS[op])
            if k:
                f, p = _conv(c_in, c_out, k, hw)
                fl, pa = fl + f, pa + p
    c_last = 4 * C
    pa += 2 * c_last  # last BN
    fl += c_last * num_classes + num_classes  # classifier with bias
    pa += c_last * num_classes + num_classes
    return fl, pa


def flops(
    arch: str | Sequence[int],
    C: int = 16,
    N: int = 5,
    num_classes: int = 10,
    resolution: int = 32,
    in_channels: int = 3,
) -> float:
    """MFLOPs (multiply-adds) of the stand-alone network, NAS-Bench-201's convention."""
    return _count(arch, C, N, num_classes, resolution, in_channels)[0] / 1e6


def params(
    arch: str | Sequence[int],
    C: int = 16,
    N: int = 5,
    num_classes: int = 10,
    resolution: int = 32,
    in_channels: int = 3,
) -> float:
    """Millions of learnable parameters of the stand-alone network (``resolution`` is unused)."""
    return _count(arch, C, N, num_classes, resolution, in_channels)[1] / 1e6


# --------------------------------------------------------------------------------------------------
# The stand-alone network in plain PyTorch (what retraining trains and what the supernet exports).


class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(torch.relu(x)))


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ResNetBasicBlock(nn.Module):
    """The reduction block between stages (stride 2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(nn.functional.avg_pool2d(x, 2))
        return shortcut + self.conv_b(self.conv_a(x))


def _make_op(name: str, c: int) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    return ReLUConvBN(c, c, 1 if name == "nor_conv_1x1" else 3)


class Cell(nn.Module):
    def __init__(self, choice: Arch, c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_make_op(OPS[op], c) for op in choice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for to in range(1, 4):
            nodes.append(
                sum(self.edges[e](nodes[src]) for e, (t, src) in enumerate(EDGES) if t == to)
            )
        return nodes[-1]


class Network(nn.Module):
    """The stand-alone NAS-Bench-201 network of one cell."""

    def __init__(
        self,
        arch: str | Sequence[int],
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        choice = parse(arch)
        self.arch = format_arch(choice)
        self.stem = nn.Conv2d(in_channels, C, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(C)
        self.cells = nn.ModuleList(
            ResNetBasicBlock(c_in, c_out) if red else Cell(choice, c_out)
            for c_in, c_out, red in stage_layout(C, N)
        )
        self.last_bn = nn.BatchNorm2d(4 * C)
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(x))
        for cell in self.cells:
            x = cell(x)
        x = torch.relu(self.last_bn(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(
    arch: str | Sequence[int], C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3
) -> Network:
    """The stand-alone network of ``arch`` (plain ``torch.nn`` modules)."""
    return Network(arch, C=C, N=N, num_classes=num_classes, in_channels=in_channels)
