"""Search spaces: NAS-Bench-201 cells (:mod:`~kshot.spaces.nb201`) and the MobileNetV2 space with
width search (:mod:`~kshot.spaces.mbv2`).

Each space module defines its own encodings, operators, FLOPs and stand-alone network.
:class:`Space` binds one of them to a run's network shape and gives the trainer, the search and the
stages one interface, so none of them needs to know which space it works on.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kshot import seeds
from kshot.spaces import mbv2, nb201

__all__ = ["SPACES", "Space", "nb201", "mbv2"]

SPACES: tuple[str, ...] = ("nb201", "mbv2")

Path = tuple[int, ...]


@dataclass(frozen=True)
class Space:
    """A search space bound to a network shape.

    Args:
        name: ``"nb201"`` or ``"mbv2"``.
        shape: the keyword arguments of the space's ``build`` / ``flops`` / ``params`` besides the
            path and the resolution (nb201: ``C, N, num_classes, in_channels``; mbv2:
            ``num_classes, width_mult, divisor, in_channels``).
        resolution: input side in pixels, which FLOPs depend on (default: the space's own, 32 for
            nb201's CIFAR cells and 224 for mbv2's ImageNet).
        channel_search: mbv2 only: search the widths too (else every layer is at width 1.0).
    """

    name: str
    shape: dict[str, Any] = field(default_factory=dict)
    resolution: int | None = None
    channel_search: bool = True

    def __post_init__(self) -> None:
        if self.name not in SPACES:
            raise ValueError(f"unknown search space {self.name!r}; spaces are {', '.join(SPACES)}")
        if self.resolution is None:
            object.__setattr__(self, "resolution", 32 if self.name == "nb201" else 224)

    @property
    def module(self) -> types.ModuleType:
        return nb201 if self.name == "nb201" else mbv2

    @property
    def has_widths(self) -> bool:
        """Whether paths carry searched widths (the simplex-net's channel branch and r_c)."""
        return self.name == "mbv2" and self.channel_search

    @property
    def size(self) -> int:
        if self.name == "nb201":
            return nb201.SIZE
        return mbv2.SIZE if self.channel_search else mbv2.NUM_OPS**mbv2.NUM_BLOCKS

    # ---------------------------------------------------------------- encodings
    def parse(self, path: str | Sequence[int]) -> Path:
        """The choice vector of a path string (or vector) of this space; ValueError naming it."""
        choice = self.module.parse(path)
        if (
            self.name == "mbv2"
            and not self.channel_search
            and choice != mbv2.full_width(choice[:21])
        ):
            raise ValueError(
                f"mbv2 path {self.format(choice)!r} has widths below 1.0, but channel search is "
                "off (config key 'channel_search')"
            )
        return choice

    def format(self, path: str | Sequence[int]) -> str:
        return self.module.format_arch(path)

    @property
    def arch_dim(self) -> int:
        if self.name == "nb201":
            return nb201.NUM_EDGES * nb201.NUM_OPS
        return mbv2.NUM_BLOCKS * mbv2.NUM_OPS

    @property
    def width_dim(self) -> int:
        return mbv2.NUM_LAYERS * mbv2.NUM_WIDTHS if self.has_widths else 0

    def codes(
        self, paths: Sequence[Sequence[int]], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The simplex-net's inputs for ``paths``: the one-hot operation codes its architecture
        branch reads, ``(len(paths), arch_dim)``, and the width codes of its channel branch,
        ``(len(paths), width_dim)`` (``None`` without width search)."""
        arch = torch.stack([self.module.one_hot(p) for p in paths]).to(device)
        if not self.has_widths:
            return arch, None
        return arch, torch.stack([mbv2.width_code(p) for p in paths]).to(device)

    def width_factors(self, path: Sequence[int]) -> tuple[float, ...]:
        """The 24 width factors of an mbv2 path (what r_c compares)."""
        if self.name != "mbv2":
            raise ValueError(f"paths of {self.name} have no widths")
        return mbv2.width_factors(path)

    def ops(self, path: Sequence[int]) -> Path:
        """The operation part of a path (paths that share it differ only in widths)."""
        return mbv2.split(path)[0] if self.name == "mbv2" else self.parse(path)

    # ---------------------------------------------------------------- sampling and operators
    def sample(self, rng: np.random.Generator) -> Path:
        if self.name == "nb201":
            return nb201.sample(rng)
        return mbv2.sample(rng, channel_search=self.channel_search)

    def sample_group(self, rng: np.random.Generator, m: int) -> list[Path]:
        """The ``m`` paths of a simplex-net step. With width search they share one sampled set of
        operations and differ in widths: the paths r_c compares (paper Eq. 13–17)."""
        if not self.has_widths:
            return [self.sample(rng) for _ in range(m)]
        ops = mbv2.split(self.sample(rng))[0]
        return [ops + mbv2.split(self.sample(rng))[1] for _ in range(m)]

    def mutate(self, path: Sequence[int], rng: np.random.Generator, prob: float = 0.1) -> Path:
        if self.name == "nb201":
            return nb201.mutate(path, rng, prob)
        return mbv2.mutate(path, rng, prob, channel_search=self.channel_search)

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Path:
        return self.module.crossover(a, b, rng)

    def distinct_sample(self, count: int, seed: int) -> list[Path]:
        """``count`` distinct paths drawn uniformly, seeded."""
        if count > self.size:
            raise ValueError(
                f"cannot draw {count} distinct paths from the {self.size} of {self.name}"
            )
        rng = seeds.rng(seed, seeds.STANDALONE_PATHS)
        if self.name == "nb201":
            return [nb201.from_index(int(i)) for i in rng.choice(nb201.SIZE, count, replace=False)]
        seen: dict[Path, None] = {}
        while len(seen) < count:
            seen.setdefault(self.sample(rng))
        return list(seen)

    # ---------------------------------------------------------------- networks and costs
    def flops(self, path: str | Sequence[int]) -> float:
        """MFLOPs of the path's stand-alone network at this shape and resolution."""
        return self.module.flops(path, resolution=self.resolution, **self.shape)

    def params(self, path: str | Sequence[int]) -> float:
        """Millions of parameters of the path's stand-alone network."""
        return self.module.params(path, resolution=self.resolution, **self.shape)

    def cheapest_flops(self) -> float:
        """The fewest MFLOPs of any path of the space (exact)."""
        if self.name == "nb201":
            return min(self.flops(a) for a in nb201.all_archs())
        return mbv2.cheapest_flops(
            resolution=self.resolution, channel_search=self.channel_search, **self.shape
        )

    def build(self, path: str | Sequence[int]) -> nn.Module:
        """The path's stand-alone network (plain ``torch.nn``)."""
        return self.module.build(path, **self.shape)

    def supernet(self, k: int) -> nn.Module:
        """A K-shot supernet over the space, at this shape."""
        if self.name == "nb201":
            from kshot.nn.nb201_supernet import NB201Supernet

            return NB201Supernet(k, **self.shape)
        from kshot.nn.mbv2_supernet import MBV2Supernet

        return MBV2Supernet(k, **self.shape)
