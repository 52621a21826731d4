"""The interface every search space gives the trainer, the search and the stages.

A :class:`Space` binds one space's module (its encodings, operators, FLOPs and stand-alone network,
defined once in :mod:`~kshot.spaces.nb201` or :mod:`~kshot.spaces.mbv2`) to a run's network shape
and resolution. What differs between spaces is a subclass (:mod:`kshot.spaces.registry`); what they
share is here, so no caller needs to know which space it works on. The K-shot supernet of a space is
built by :func:`kshot.nn.supernets.build_supernet`.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from kshot import seeds
from kshot.config import Config

__all__ = ["Path", "Space"]

Path = tuple[int, ...]


@dataclass(frozen=True)
class Space:
    """A search space bound to a network shape.

    Args:
        shape: the keyword arguments of the space's ``build`` / ``flops`` / ``params`` besides the
            path and the resolution (nb201: ``C, N, num_classes, in_channels``; mbv2:
            ``num_classes, width_mult, divisor, in_channels``).
        resolution: input side in pixels, which FLOPs depend on (default: the space's own,
            :attr:`default_resolution`).
        channel_search: mbv2 only: search the widths too (else every layer is at width 1.0).
    """

    name: ClassVar[str]
    """The space's value of config key ``search_space``."""
    module: ClassVar[types.ModuleType]
    """The module that defines the space's encodings, FLOPs and stand-alone network."""
    default_resolution: ClassVar[int]
    arch_dim: ClassVar[int]
    """Length of the one-hot operation code the simplex-net's architecture branch reads."""
    config_shape: ClassVar[dict[str, str]]
    """Config key → the ``shape`` argument it sets."""
    identity_keys: ClassVar[tuple[str, ...]]
    """The config keys of the network a checkpoint must agree with to be resumed or scored."""
    size_keys: ClassVar[tuple[str, ...]]
    """The config keys besides ``k`` that set the supernet's size (named when it does not fit)."""

    shape: dict[str, Any] = field(default_factory=dict)
    resolution: int | None = None
    channel_search: bool = True

    def __post_init__(self) -> None:
        if self.resolution is None:
            object.__setattr__(self, "resolution", self.default_resolution)

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
        resolution: int | None = None,
    ) -> Space:
        """The space of ``cfg``; with the data's ``num_classes`` and ``in_channels``, at the
        network's shape (what networks and FLOPs need; parsing and encoding paths need neither)."""
        if num_classes is None or in_channels is None:
            return cls(resolution=resolution, channel_search=cfg.channel_search)
        shape = {arg: getattr(cfg, key) for key, arg in cls.config_shape.items()}
        return cls(
            shape={**shape, "num_classes": num_classes, "in_channels": in_channels},
            resolution=resolution,
            channel_search=cfg.channel_search,
        )

    @classmethod
    def identity(cls, cfg: Config) -> dict[str, Any]:
        """The network's part of a checkpoint's identity, keyed by config key."""
        return {key: getattr(cfg, key) for key in cls.identity_keys}

    @property
    def has_widths(self) -> bool:
        """Whether paths carry searched widths (the simplex-net's channel branch and r_c)."""
        return False

    @property
    def size(self) -> int:
        return self.module.SIZE

    @property
    def width_dim(self) -> int:
        return 0

    @property
    def stem_channels(self) -> int:
        """Channels of the stem's output, the activation a batch cannot do without (0: none
        counted)."""
        return 0

    # ---------------------------------------------------------------- encodings
    def parse(self, path: str | Sequence[int]) -> Path:
        """The choice vector of a path string (or vector) of this space; ValueError naming it."""
        return self.module.parse(path)

    def format(self, path: str | Sequence[int]) -> str:
        return self.module.format_arch(path)

    def codes(
        self, paths: Sequence[Sequence[int]], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The simplex-net's inputs for ``paths``: the one-hot operation codes its architecture
        branch reads, ``(len(paths), arch_dim)``, and the width codes of its channel branch,
        ``(len(paths), width_dim)`` (``None`` without width search)."""
        return torch.stack([self.module.one_hot(p) for p in paths]).to(device), None

    def width_factors(self, path: Sequence[int]) -> tuple[float, ...]:
        """The width factor of every layer of a path (what r_c compares)."""
        raise ValueError(f"paths of {self.name} have no widths")

    def ops(self, path: Sequence[int]) -> Path:
        """The operation part of a path (paths that share it differ only in widths)."""
        return self.parse(path)

    # ---------------------------------------------------------------- sampling and operators
    def sample(self, rng: np.random.Generator) -> Path:
        return self.module.sample(rng)

    def sample_group(self, rng: np.random.Generator, m: int) -> list[Path]:
        """The ``m`` paths of a simplex-net step."""
        return [self.sample(rng) for _ in range(m)]

    def mutate(self, path: Sequence[int], rng: np.random.Generator, prob: float = 0.1) -> Path:
        return self.module.mutate(path, rng, prob)

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Path:
        return self.module.crossover(a, b, rng)

    def distinct_sample(self, count: int, seed: int) -> list[Path]:
        """``count`` distinct paths drawn uniformly, seeded."""
        if count > self.size:
            raise ValueError(
                f"cannot draw {count} distinct paths from the {self.size} of {self.name}"
            )
        return self._distinct(count, seeds.rng(seed, seeds.STANDALONE_PATHS))

    def _distinct(self, count: int, rng: np.random.Generator) -> list[Path]:
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
        raise NotImplementedError

    def build(self, path: str | Sequence[int]) -> nn.Module:
        """The path's stand-alone network (plain ``torch.nn``)."""
        return self.module.build(path, **self.shape)
