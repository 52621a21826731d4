"""The K-shot supernet of a search space: one supernet class per :class:`~kshot.spaces.Space`
class, chosen by the space's type."""

from __future__ import annotations

from torch import nn

from kshot.nn.mbv2_supernet import MBV2Supernet
from kshot.nn.nb201_supernet import NB201Supernet
from kshot.spaces import MBV2Space, NB201Space, Space

__all__ = ["SUPERNETS", "build_supernet"]

SUPERNETS: dict[type[Space], type[nn.Module]] = {
    NB201Space: NB201Supernet,
    MBV2Space: MBV2Supernet,
}


def build_supernet(space: Space, k: int) -> nn.Module:
    """A K-shot supernet of ``k`` slots over ``space``, at its shape."""
    return SUPERNETS[type(space)](k, **space.shape)
