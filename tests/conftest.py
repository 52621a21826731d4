"""Shared fixtures: tiny configurations, the digits split, and the GCS emulator plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tests train tiny networks: one intra-op thread is several times faster than two fighting over
# 2 cores (and leaves a core to the subprocesses some tests start).
torch.set_num_threads(1)

pytest_plugins = ["tests.gcs"]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} is absent: real data for this test lives in ../shared/data beside the "
            "project (CI has it)"
        )
    return path


TINY = {
    "dataset": "digits",
    "augment": False,
    "k": 4,
    "channels": 4,
    "cells": 1,
    "epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 32,
    "m": 4,
    "population": 6,
    "generations": 2,
    "parents": 3,
    "bn_images": 64,
    "bn_batch_size": 64,
    "eval_images": 128,
    "eval_batch_size": 256,
    "retrain_epochs": 1,
    "retrain_batch_size": 64,
    "standalone_paths": 3,
    "standalone_epochs": 1,
    "top_n": [2, 3],
    "num_threads": 1,
}


@pytest.fixture
def tiny_cfg():
    """A configuration that trains a C = 4, N = 1 supernet on digits in seconds."""
    from kshot.config import load_config

    return load_config(TINY, sources=["tests.conftest.TINY"])


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory) -> str:
    """The split stage's file for digits (seed 0, half held out)."""
    from kshot.config import load_config
    from kshot.stages import run_stage

    uri = str(tmp_path_factory.mktemp("split") / "split.json")
    run_stage("split", load_config(TINY), {}, {"split": uri})
    return uri


@pytest.fixture
def digits_data(tiny_cfg, digits_split):
    from kshot.stages.common import load_train_data

    return load_train_data(tiny_cfg, digits_split)
