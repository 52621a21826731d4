"""One :class:`~kshot.spaces.base.Space` class per search space, and the registry that picks one by
config key ``search_space``: the one place that tells the spaces apart by name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kshot.config import Config
from kshot.spaces import mbv2, nb201
from kshot.spaces.base import Path, Space

__all__ = ["NB201Space", "MBV2Space", "SPACES", "space_class", "space_from_config"]


class NB201Space(Space):
    """NAS-Bench-201's cells (:mod:`kshot.spaces.nb201`): 5 operations on each of 6 edges."""

    name = "nb201"
    module = nb201
    default_resolution = 32  # CIFAR
    arch_dim = nb201.NUM_EDGES * nb201.NUM_OPS
    config_shape = {"channels": "C", "cells": "N"}
    identity_keys = ("channels", "cells")
    size_keys = ("channels", "cells")

    @property
    def stem_channels(self) -> int:
        return int(self.shape["C"])

    def _distinct(self, count: int, rng: np.random.Generator) -> list[Path]:
        return [nb201.from_index(int(i)) for i in rng.choice(nb201.SIZE, count, replace=False)]

    def cheapest_flops(self) -> float:
        return min(self.flops(a) for a in nb201.all_archs())


class MBV2Space(Space):
    """The MobileNetV2 space with width search (:mod:`kshot.spaces.mbv2`); with
    ``channel_search`` off every layer is at width 1.0 and only operations are searched."""

    name = "mbv2"
    module = mbv2
    default_resolution = 224  # ImageNet
    arch_dim = mbv2.NUM_BLOCKS * mbv2.NUM_OPS
    config_shape = {"width_mult": "width_mult", "channel_divisor": "divisor"}
    identity_keys = ("width_mult", "channel_divisor", "channel_search")
    size_keys = ("width_mult",)

    @property
    def has_widths(self) -> bool:
        return self.channel_search

    @property
    def size(self) -> int:
        return mbv2.SIZE if self.channel_search else mbv2.NUM_OPS**mbv2.NUM_BLOCKS

    @property
    def width_dim(self) -> int:
        return mbv2.NUM_LAYERS * mbv2.NUM_WIDTHS if self.has_widths else 0

    def parse(self, path: str | Sequence[int]) -> Path:
        choice = mbv2.parse(path)
        if not self.channel_search and choice != mbv2.full_width(choice[: mbv2.NUM_BLOCKS]):
            raise ValueError(
                f"mbv2 path {self.format(choice)!r} has widths below 1.0, but channel search is "
                "off (config key 'channel_search')"
            )
        return choice

    def codes(
        self, paths: Sequence[Sequence[int]], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        arch, _ = super().codes(paths, device)
        if not self.has_widths:
            return arch, None
        return arch, torch.stack([mbv2.width_code(p) for p in paths]).to(device)

    def width_factors(self, path: Sequence[int]) -> tuple[float, ...]:
        return mbv2.width_factors(path)

    def ops(self, path: Sequence[int]) -> Path:
        return mbv2.split(path)[0]

    def sample(self, rng: np.random.Generator) -> Path:
        return mbv2.sample(rng, channel_search=self.channel_search)

    def sample_group(self, rng: np.random.Generator, m: int) -> list[Path]:
        """With width search the ``m`` paths share one sampled set of operations and differ in
        widths: the paths r_c compares (paper Eq. 13–17)."""
        if not self.has_widths:
            return super().sample_group(rng, m)
        ops = mbv2.split(self.sample(rng))[0]
        return [ops + mbv2.split(self.sample(rng))[1] for _ in range(m)]

    def mutate(self, path: Sequence[int], rng: np.random.Generator, prob: float = 0.1) -> Path:
        return mbv2.mutate(path, rng, prob, channel_search=self.channel_search)

    def cheapest_flops(self) -> float:
        return mbv2.cheapest_flops(
            resolution=self.resolution, channel_search=self.channel_search, **self.shape
        )


SPACES: dict[str, type[Space]] = {space.name: space for space in (NB201Space, MBV2Space)}
"""Value of config key ``search_space`` → its class."""


def space_class(name: str) -> type[Space]:
    """The class of search space ``name``; ValueError naming the spaces there are."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; spaces are {', '.join(SPACES)}")
    return SPACES[name]


def space_from_config(
    cfg: Config,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    resolution: int | None = None,
) -> Space:
    """The run's search space (config key ``search_space``); with the data's ``num_classes`` and
    ``in_channels``, at the network's shape (see :meth:`Space.from_config`)."""
    return space_class(cfg.search_space).from_config(
        cfg, num_classes=num_classes, in_channels=in_channels, resolution=resolution
    )
