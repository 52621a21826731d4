"""The MobileNetV2 (SPOS / GreedyNAS) search space with joint operation and width search.

One idea, the space: its encoding, sampling, genetic operators, exact FLOPs and parameter count,
and the stand-alone network, which change together whenever the space does.

The paper's ImageNet search space (Su et al., ICML 2021, Table 2; the space of GreedyNAS, You et al.,
CVPR 2020) is a MobileNetV2-like chain of 24 layers:

* 3 fixed layers: a 3x3 stride-2 stem convolution (32 channels), a first inverted residual block
  (3x3 depthwise, expansion 1, 16 channels) and a final 1x1 convolution (1280 channels);
* 21 searchable inverted residual blocks in six stages of (channels, blocks, first stride)
  ``(32, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)``; each block is one of
  13 operations: kernel {3, 5, 7} x expansion {3, 6} x squeeze-and-excitation {off, on}, or identity;
* a width factor in {0.2, 0.4, 0.6, 0.8, 1.0} on the output channels of all 24 layers;

then global average pooling and a linear classifier: ``5^24 x 13^21`` paths (:data:`SIZE`).

A **path** is a tuple of 45 choice indices: the 21 block operations (into :data:`OPS`) followed by
the 24 width choices (into :data:`WIDTHS`). This module is the one place that defines its encodings:
the string ``"k3e6-id-…-k7e3se:1.0-0.6-…-0.8"`` (:func:`parse`, :func:`format_arch`), the one-hot
operation code the simplex-net's architecture branch reads (:func:`one_hot`) and the one-hot width
code its channel branch reads (:func:`width_code`).

The rules that make every path a well-defined network:

* A layer's channels are ``make_divisible(base x width_mult x factor, divisor)`` (MobileNetV2's
  rounding); ``width_mult`` scales the whole space (paper: 1.0; tests use tiny values).
* A block's hidden width is its actual input channels x expansion; SE squeezes the hidden width by 4
  (ReLU, then a hard sigmoid gate, as in MobileNetV3 and GreedyNAS). Blocks use hard swish, the
  stem and the last layer ReLU.
* A block adds its input (residual) when its stride is 1 and its actual input and output channels
  agree (MobileNetV2's rule, applied to the chosen widths).
* Identity passes its input through when the shapes agree; where they do not (a stage's first
  block, or a width change), it is a 1x1 convolution with the block's stride and BN, the projection
  shortcut of ResNet (as in mmrazor's GreedyNAS ``Identity``).

FLOPs are counted as NAS papers count them: multiply-adds of the convolutions and the linear layer
(BN, activations, pooling, the SE gate's product and biases count none), exactly, for the given
input resolution; :func:`params` counts every learnable parameter. :func:`build` is the stand-alone
network in plain PyTorch, and :func:`plan` is the layer list both of them (and the supernet) follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "OPS",
    "WIDTHS",
    "NUM_BLOCKS",
    "NUM_LAYERS",
    "NUM_OPS",
    "NUM_WIDTHS",
    "SIZE",
    "STAGES",
    "Path",
    "OpSpec",
    "Layer",
    "op_spec",
    "parse",
    "format_arch",
    "split",
    "one_hot",
    "width_code",
    "width_factors",
    "full_width",
    "sample",
    "mutate",
    "crossover",
    "size",
    "make_divisible",
    "plan",
    "flops",
    "params",
    "cheapest_flops",
    "build",
    "Network",
]


@dataclass(frozen=True)
class OpSpec:
    """An inverted residual block's operation; ``kernel == 0`` is identity."""

    kernel: int
    expansion: int
    se: bool

    @property
    def is_identity(self) -> bool:
        return self.kernel == 0

    @property
    def name(self) -> str:
        if self.is_identity:
            return "id"
        return f"k{self.kernel}e{self.expansion}" + ("se" if self.se else "")


_SPECS: tuple[OpSpec, ...] = tuple(
    OpSpec(k, e, se) for se in (False, True) for e in (3, 6) for k in (3, 5, 7)
) + (OpSpec(0, 0, False),)
OPS: tuple[str, ...] = tuple(s.name for s in _SPECS)
"""The 13 block operations: ``k3e3 … k7e6``, ``k3e3se … k7e6se``, ``id``."""
WIDTHS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
"""Width factors of a layer's output channels."""

STEM_CHANNELS, FIRST_CHANNELS, LAST_CHANNELS = 32, 16, 1280
STAGES: tuple[tuple[int, int, int], ...] = (
    (32, 4, 2),
    (40, 4, 2),
    (80, 4, 2),
    (96, 4, 1),
    (192, 4, 2),
    (320, 1, 1),
)
"""Searchable stages: (base output channels, blocks, stride of the first block)."""
_FIRST_BLOCK = OpSpec(3, 1, False)

NUM_BLOCKS = sum(n for _, n, _ in STAGES)  # 21
NUM_LAYERS = NUM_BLOCKS + 3  # 24: stem, first block, 21 searchable blocks, last conv
NUM_OPS, NUM_WIDTHS = len(OPS), len(WIDTHS)
SIZE = NUM_WIDTHS**NUM_LAYERS * NUM_OPS**NUM_BLOCKS
_FULL = NUM_WIDTHS - 1  # index of width factor 1.0

Path = tuple[int, ...]
"""A path: 21 operation indices (into :data:`OPS`) then 24 width indices (into :data:`WIDTHS`)."""

_OP_INDEX = {name: i for i, name in enumerate(OPS)}
_WIDTH_INDEX = {f"{w:.1f}": i for i, w in enumerate(WIDTHS)}  # the exact strings paths use
_EXAMPLE = "-".join(["k3e6"] * NUM_BLOCKS) + ":" + "-".join(["1.0"] * NUM_LAYERS)


def op_spec(op: int) -> OpSpec:
    """The operation of index ``op``."""
    return _SPECS[op]


def size() -> int:
    """The number of paths: ``5^24 x 13^21``."""
    return SIZE


# --------------------------------------------------------------------------------------------------
# Encodings


def _check(choice: tuple[int, ...], shown: object) -> Path:
    if len(choice) != NUM_BLOCKS + NUM_LAYERS:
        raise ValueError(
            f"invalid mbv2 path {shown!r}: need {NUM_BLOCKS} operation indices then {NUM_LAYERS} "
            f"width indices ({NUM_BLOCKS + NUM_LAYERS} in all), got {len(choice)}"
        )
    for i, c in enumerate(choice):
        limit = NUM_OPS if i < NUM_BLOCKS else NUM_WIDTHS
        if not 0 <= c < limit:
            what = (
                f"operation of block {i}" if i < NUM_BLOCKS else f"width of layer {i - NUM_BLOCKS}"
            )
            raise ValueError(f"invalid mbv2 path {shown!r}: {what} is {c}, not in [0, {limit - 1}]")
    return choice


def parse(path: str | Sequence[int]) -> Path:
    """Parse a path string (or validate a choice vector) into a choice vector.

    Raises:
        ValueError: naming the path and what is wrong with it.
    """
    if not isinstance(path, str):
        if any(isinstance(c, bool) or int(c) != c for c in path):
            raise ValueError(f"invalid mbv2 path {list(path)!r}: choices must be integers")
        return _check(tuple(int(c) for c in path), list(path))
    ops_text, sep, widths_text = path.strip().partition(":")
    ops, widths = ops_text.split("-"), widths_text.split("-")
    if not sep or len(ops) != NUM_BLOCKS or len(widths) != NUM_LAYERS:
        raise ValueError(
            f"invalid mbv2 path string {path!r}: expected {NUM_BLOCKS} operations joined by '-', "
            f"':', then {NUM_LAYERS} width factors joined by '-', like {_EXAMPLE!r}"
        )
    bad_ops = [o for o in ops if o not in _OP_INDEX]
    if bad_ops:
        raise ValueError(
            f"invalid mbv2 path string {path!r}: unknown operation(s) {bad_ops}; operations are "
            f"{', '.join(OPS)}"
        )
    choice = [_OP_INDEX[o] for o in ops]
    for w in widths:
        try:
            choice.append(_WIDTH_INDEX[w])
        except KeyError:
            raise ValueError(
                f"invalid mbv2 path string {path!r}: width factor {w!r} is not one of "
                f"{', '.join(map(str, WIDTHS))}"
            ) from None
    return tuple(choice)


def format_arch(path: str | Sequence[int]) -> str:
    """The string of a path: ``"<op>-…-<op>:<width>-…-<width>"``."""
    ops, widths = split(path)
    return "-".join(OPS[o] for o in ops) + ":" + "-".join(f"{WIDTHS[w]:.1f}" for w in widths)


def split(path: str | Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the 21 operation indices, the 24 width indices) of a path."""
    choice = parse(path)
    return choice[:NUM_BLOCKS], choice[NUM_BLOCKS:]


def one_hot(path: str | Sequence[int]) -> torch.Tensor:
    """The ``21 x 13`` one-hot operation encoding, flattened, as float32 (the architecture code)."""
    ops, _ = split(path)
    return nn.functional.one_hot(torch.tensor(ops), NUM_OPS).flatten().float()


def width_code(path: str | Sequence[int]) -> torch.Tensor:
    """The ``24 x 5`` one-hot width encoding, flattened, as float32 (the channel branch's input)."""
    _, widths = split(path)
    return nn.functional.one_hot(torch.tensor(widths), NUM_WIDTHS).flatten().float()


def width_factors(path: str | Sequence[int]) -> tuple[float, ...]:
    """The 24 width factors of a path (what r_c's width distance compares)."""
    return tuple(WIDTHS[w] for w in split(path)[1])


def full_width(ops: Sequence[int]) -> Path:
    """The path of operations ``ops`` with every layer at width 1.0."""
    return parse(tuple(ops) + (_FULL,) * NUM_LAYERS)


# --------------------------------------------------------------------------------------------------
# Sampling, mutation and crossover (NSGA-II's operators)


def sample(rng: np.random.Generator, channel_search: bool = True) -> Path:
    """A uniformly random path (every width 1.0 without ``channel_search``)."""
    ops = tuple(int(c) for c in rng.integers(0, NUM_OPS, size=NUM_BLOCKS))
    if not channel_search:
        return full_width(ops)
    return ops + tuple(int(c) for c in rng.integers(0, NUM_WIDTHS, size=NUM_LAYERS))


def mutate(
    path: Sequence[int], rng: np.random.Generator, prob: float = 0.1, channel_search: bool = True
) -> Path:
    """Resample each choice with probability ``prob`` (widths only with ``channel_search``); at
    least one choice always changes."""
    choice = list(parse(path))
    n = len(choice) if channel_search else NUM_BLOCKS
    flips = rng.random(n) < prob
    if not flips.any():
        flips[rng.integers(n)] = True
    for i in np.flatnonzero(flips):
        options = NUM_OPS if i < NUM_BLOCKS else NUM_WIDTHS
        choice[i] = int((choice[i] + rng.integers(1, options)) % options)
    return tuple(choice)


def crossover(a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Path:
    """Uniform crossover: each choice comes from ``a`` or ``b`` with equal probability."""
    a, b = parse(a), parse(b)
    pick = rng.random(len(a)) < 0.5
    return tuple(int(x) if p else int(y) for x, y, p in zip(a, b, pick, strict=True))


# --------------------------------------------------------------------------------------------------
# The layer plan, FLOPs and parameters


def make_divisible(value: float, divisor: int) -> int:
    """MobileNetV2's channel rounding: the nearest multiple of ``divisor``, never below ``divisor``
    and never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class Layer:
    """One of the 24 layers of a path: its kind, channels, stride and (for blocks) operation."""

    kind: str  # "stem", "block" or "last"
    c_in: int
    c_out: int
    stride: int
    op: OpSpec | None = None

    @property
    def hidden(self) -> int:
        """Channels of a block's depthwise convolution."""
        assert self.op is not None
        return self.c_in * self.op.expansion

    @property
    def squeeze(self) -> int:
        """Channels of a block's SE bottleneck."""
        return max(1, self.hidden // 4)

    @property
    def residual(self) -> bool:
        return self.kind == "block" and self.stride == 1 and self.c_in == self.c_out

    @property
    def projects(self) -> bool:
        """An identity block whose shapes differ: a 1x1 projection with BN."""
        return self.op is not None and self.op.is_identity and not self.residual


def _bases() -> list[tuple[int, int, int | None]]:
    """(base channels, stride, searchable block index or None) of the 24 layers."""
    bases: list[tuple[int, int, int | None]] = [(STEM_CHANNELS, 2, None), (FIRST_CHANNELS, 1, None)]
    block = 0
    for channels, blocks, stride in STAGES:
        for i in range(blocks):
            bases.append((channels, stride if i == 0 else 1, block))
            block += 1
    bases.append((LAST_CHANNELS, 1, None))
    return bases


_BASES = _bases()


def layer_channels(layer: int, width: int, width_mult: float = 1.0, divisor: int = 8) -> int:
    """Output channels of layer ``layer`` (0 … 23) at width choice ``width``."""
    return make_divisible(_BASES[layer][0] * width_mult * WIDTHS[width], divisor)


def plan(
    path: str | Sequence[int], width_mult: float = 1.0, divisor: int = 8, in_channels: int = 3
) -> list[Layer]:
    """The 24 layers of a path, in order."""
    ops, widths = split(path)
    layers, c_in = [], in_channels
    for i, (_, stride, block) in enumerate(_BASES):
        c_out = layer_channels(i, widths[i], width_mult, divisor)
        if i == 0:
            layers.append(Layer("stem", c_in, c_out, stride))
        elif i == NUM_LAYERS - 1:
            layers.append(Layer("last", c_in, c_out, stride))
        else:
            op = _FIRST_BLOCK if block is None else _SPECS[ops[block]]
            layers.append(Layer("block", c_in, c_out, stride, op))
        c_in = c_out
    return layers


def _conv_out(hw: int, kernel: int, stride: int) -> int:
    return (hw + 2 * (kernel // 2) - kernel) // stride + 1


def _layer_cost(layer: Layer, hw: int) -> tuple[int, int, int]:
    """(multiply-adds, parameters, output side) of one layer on an ``hw x hw`` input."""
    if layer.kind != "block":  # stem 3x3 stride 2, or last 1x1; conv + BN
        k = 3 if layer.kind == "stem" else 1
        out = _conv_out(hw, k, layer.stride)
        macs = layer.c_in * layer.c_out * k * k
        return macs * out * out, macs + 2 * layer.c_out, out
    op = layer.op
    assert op is not None
    if op.is_identity:
        if not layer.projects:
            return 0, 0, hw
        out = _conv_out(hw, 1, layer.stride)
        return layer.c_in * layer.c_out * out * out, layer.c_in * layer.c_out + 2 * layer.c_out, out
    hidden, fl, pa = layer.hidden, 0, 0
    if op.expansion != 1:  # 1x1 expansion + BN
        fl += layer.c_in * hidden * hw * hw
        pa += layer.c_in * hidden + 2 * hidden
    out = _conv_out(hw, op.kernel, layer.stride)
    fl += hidden * op.kernel**2 * out * out  # depthwise + BN
    pa += hidden * op.kernel**2 + 2 * hidden
    if op.se:  # two 1x1 convolutions with bias on the pooled 1x1 map
        fl += 2 * hidden * layer.squeeze
        pa += 2 * hidden * layer.squeeze + layer.squeeze + hidden
    fl += hidden * layer.c_out * out * out  # 1x1 projection + BN
    pa += hidden * layer.c_out + 2 * layer.c_out
    return fl, pa, out


def _count(
    path: str | Sequence[int],
    resolution: int,
    num_classes: int,
    width_mult: float,
    divisor: int,
    in_channels: int,
) -> tuple[int, int]:
    hw, fl, pa = resolution, 0, 0
    layers = plan(path, width_mult, divisor, in_channels)
    for layer in layers:
        f, p, hw = _layer_cost(layer, hw)
        fl, pa = fl + f, pa + p
    c_last = layers[-1].c_out
    return fl + c_last * num_classes, pa + c_last * num_classes + num_classes


def flops(
    path: str | Sequence[int],
    resolution: int = 224,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    divisor: int = 8,
    in_channels: int = 3,
) -> float:
    """MFLOPs (multiply-adds of convolutions and the classifier) of the path's network."""
    return _count(path, resolution, num_classes, width_mult, divisor, in_channels)[0] / 1e6


def params(
    path: str | Sequence[int],
    resolution: int = 224,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    divisor: int = 8,
    in_channels: int = 3,
) -> float:
    """Millions of learnable parameters of the path's network (``resolution`` is unused)."""
    return _count(path, resolution, num_classes, width_mult, divisor, in_channels)[1] / 1e6


def cheapest_flops(
    resolution: int = 224,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    divisor: int = 8,
    in_channels: int = 3,
    channel_search: bool = True,
) -> float:
    """The fewest MFLOPs of any path, exactly (dynamic programming over the layers: a layer's cost
    depends only on its input channels, its own choices and the resolution, which no choice
    changes)."""
    widths = range(NUM_WIDTHS) if channel_search else (_FULL,)
    # best[c_in] = fewest multiply-adds of the layers so far, ending with c_in channels
    best, hw = {in_channels: 0}, resolution
    for i, (_, stride, block) in enumerate(_BASES):
        if i == 0:
            kinds = [("stem", None)]
        elif i == NUM_LAYERS - 1:
            kinds = [("last", None)]
        else:
            kinds = [("block", _FIRST_BLOCK)] if block is None else [("block", s) for s in _SPECS]
        new: dict[int, int] = {}
        for c_in, cost in best.items():
            for w in widths:
                c_out = layer_channels(i, w, width_mult, divisor)
                for kind, op in kinds:
                    f, _, out = _layer_cost(Layer(kind, c_in, c_out, stride, op), hw)
                    if cost + f < new.get(c_out, np.iinfo(np.int64).max):
                        new[c_out] = cost + f
        best, hw = new, out
    return min(cost + c * num_classes for c, cost in best.items()) / 1e6


# --------------------------------------------------------------------------------------------------
# The stand-alone network in plain PyTorch (what retraining trains and what the supernet exports).


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(W2 relu(W1 avgpool(x) + b1) + b2)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        s = self.expand(torch.relu(self.reduce(s)))
        return x * nn.functional.hardsigmoid(s)


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-hswish] → kxk depthwise-BN-hswish → [SE] → 1x1 project-BN (+ input)."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        op = layer.op
        assert op is not None and not op.is_identity
        hidden = layer.hidden
        self.residual = layer.residual
        self.expand = _conv_bn(layer.c_in, hidden, 1) if op.expansion != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, op.kernel, layer.stride, groups=hidden)
        self.se = SqueezeExcite(hidden, layer.squeeze) if op.se else None
        self.project = _conv_bn(hidden, layer.c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.expand is None else nn.functional.hardswish(self.expand(x))
        h = nn.functional.hardswish(self.depthwise(h))
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return x + h if self.residual else h


def _make_layer(layer: Layer) -> nn.Module:
    if layer.kind == "stem":
        return nn.Sequential(*_conv_bn(layer.c_in, layer.c_out, 3, layer.stride), nn.ReLU())
    if layer.kind == "last":
        return nn.Sequential(*_conv_bn(layer.c_in, layer.c_out, 1), nn.ReLU())
    if layer.projects:
        return _conv_bn(layer.c_in, layer.c_out, 1, layer.stride)
    if layer.op is not None and layer.op.is_identity:
        return nn.Identity()
    return InvertedResidual(layer)


class Network(nn.Module):
    """The stand-alone network of one mbv2 path: 24 layers, global pooling, a linear classifier."""

    def __init__(
        self,
        path: str | Sequence[int],
        num_classes: int = 1000,
        width_mult: float = 1.0,
        divisor: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.arch = format_arch(path)
        layers = plan(path, width_mult, divisor, in_channels)
        self.layers = nn.Sequential(*(_make_layer(layer) for layer in layers))
        self.classifier = nn.Linear(layers[-1].c_out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.layers(x), 1)
        return self.classifier(torch.flatten(x, 1))


def build(
    path: str | Sequence[int],
    num_classes: int = 1000,
    width_mult: float = 1.0,
    divisor: int = 8,
    in_channels: int = 3,
) -> Network:
    """The stand-alone network of ``path`` (plain ``torch.nn`` modules)."""
    return Network(path, num_classes, width_mult, divisor, in_channels)
