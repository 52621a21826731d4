"""Search spaces: NAS-Bench-201 cells (:mod:`~kshot.spaces.nb201`) and the MobileNetV2 space with
width search (:mod:`~kshot.spaces.mbv2`).

Each space module defines its own encodings, operators, FLOPs and stand-alone network.
:class:`Space` (:mod:`~kshot.spaces.base`) binds one of them to a run's network shape and gives the
trainer, the search and the stages one interface; :mod:`~kshot.spaces.registry` holds one subclass
per space and chooses it once from the config, so no caller needs to know which space it works on.
"""

from __future__ import annotations

from kshot.spaces import mbv2, nb201
from kshot.spaces.base import Path, Space
from kshot.spaces.registry import SPACES, MBV2Space, NB201Space, space_class, space_from_config

__all__ = [
    "Path",
    "Space",
    "NB201Space",
    "MBV2Space",
    "SPACES",
    "space_class",
    "space_from_config",
    "nb201",
    "mbv2",
]
