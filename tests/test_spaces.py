"""One class per search space, chosen once from config key ``search_space`` through the registry."""

from __future__ import annotations

import dataclasses

import pytest

from kshot.config import Config
from kshot.nn.mbv2_supernet import MBV2Supernet
from kshot.nn.nb201_supernet import NB201Supernet
from kshot.nn.supernets import SUPERNETS, build_supernet
from kshot.spaces import SPACES, MBV2Space, NB201Space, space_class, space_from_config


def test_the_registry_holds_every_space_the_config_accepts():
    field = next(f for f in dataclasses.fields(Config) if f.name == "search_space")
    assert set(SPACES) == set(field.metadata["choices"])
    assert set(SUPERNETS) == set(SPACES.values())
    with pytest.raises(ValueError, match="unknown search space 'darts'; spaces are nb201, mbv2"):
        space_class("darts")


def test_a_config_gives_its_space_at_the_network_shape():
    cfg = Config(channels=4, cells=1)
    space = space_from_config(cfg, num_classes=10, in_channels=3, resolution=8)
    assert type(space) is NB201Space and space.resolution == 8
    assert space.shape == {"C": 4, "N": 1, "num_classes": 10, "in_channels": 3}
    assert space_from_config(cfg).shape == {} and space_from_config(cfg).resolution == 32
    assert NB201Space.identity(cfg) == {"channels": 4, "cells": 1}
    assert isinstance(build_supernet(space, 2), NB201Supernet)

    cfg = Config(search_space="mbv2", width_mult=0.25, channel_divisor=4, channel_search=False)
    space = space_from_config(cfg, num_classes=10, in_channels=3)
    assert type(space) is MBV2Space and space.resolution == 224 and not space.has_widths
    assert space.shape == {"width_mult": 0.25, "divisor": 4, "num_classes": 10, "in_channels": 3}
    assert MBV2Space.identity(cfg) == {
        "width_mult": 0.25,
        "channel_divisor": 4,
        "channel_search": False,
    }
    assert isinstance(build_supernet(space, 2), MBV2Supernet)
