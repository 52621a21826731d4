"""Shared fixtures: tiny configurations, the digits split, and the GCS and S3 server plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests train tiny networks: one intra-op thread is several times faster than two fighting over
# 2 cores (and leaves a core to the subprocesses some tests start).
torch.set_num_threads(1)

pytest_plugins = ["tests.gcs", "tests.s3", "tests.object_stores"]

TEST_DATA_ENV = "KSHOT_TEST_DATA"
SHARED_DATA = Path(
    os.environ.get(TEST_DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data"
)
"""Real data for tests: ``$KSHOT_TEST_DATA``, by default ``../shared/data`` beside the project."""


def shared_data(*parts: str) -> Path:
    """A path under :data:`SHARED_DATA`; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} is absent: set {TEST_DATA_ENV} to the folder that holds {'/'.join(parts)} "
            "(the README's section 'Data' says how to get it)"
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


@pytest.fixture(scope="session")
def cifar_folders(tmp_path_factory) -> Path:
    """A tiny class-folder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) written from the
    CIFAR-10 JPEGs in ``$KSHOT_TEST_DATA/cifar10``: 200 training and 100 test images."""
    import pyarrow.parquet as pq

    source = shared_data("cifar10")
    root = tmp_path_factory.mktemp("cifar-folders")
    for part, count in (("train", 200), ("test", 100)):
        table = pq.ParquetFile(source / f"{part}.parquet").read_row_group(0).slice(0, count)
        names = pq.read_schema(source / f"{part}.parquet").metadata[b"label_names"].decode()
        names = names.split(",")
        for i, (image, label) in enumerate(
            zip(table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True)
        ):
            folder = root / part / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.jpg").write_bytes(image["bytes"])
    return root


MBV2_TINY = {
    **{k: v for k, v in TINY.items() if k not in ("channels", "cells")},
    "search_space": "mbv2",
    "width_mult": 0.125,
    "channel_divisor": 1,
    "resolution": 16,
    "augment": True,
    "valid_fraction": 0.2,
    "k": 2,
    "batch_size": 40,
    "m": 4,
    "bn_images": 32,
    "bn_batch_size": 32,
    "eval_images": 40,
    "retrain_recipe": "imagenet",
    "retrain_lr": 0.01,
    "retrain_batch_size": 40,
    "retrain_weight_decay": 1e-5,
    "retrain_warmup_epochs": 0.5,
    "retrain_ema_decay": 0.9,
}
"""A C ≈ 4 mbv2 supernet (width_mult 1/8, 16x16 images) for :func:`cifar_folders`."""


@pytest.fixture
def digits_data(tiny_cfg, digits_split):
    from kshot.stages.data import load_train_data

    return load_train_data(tiny_cfg, digits_split)


def fake_run(arm: str, seed: int, tau: float, k: int = 8, **extra: object) -> dict:
    """A ranking experiment run's record with every correlation at ``tau`` (for summaries and
    plots); ``extra`` adds or replaces fields, e.g. ``lam`` or ``baselines``."""
    return {
        "arm": arm,
        "seed": seed,
        "k": k,
        "kendall_tau_a": tau,
        "kendall_tau_b": tau,
        "spearman_rho": tau,
        "pearson_r": tau,
        "top_group_tau": {"10": tau},
        "lam": {"tv": 0.2, "max": 0.2, "cosine": 0.9},
        "lam_near_uniform": False,
        **extra,
    }


def spy_on_resume(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """From now on, record what each :meth:`KShotTrainer.resume` call resumed from (the
    checkpoint's URI, or None for a fresh start), in the list returned."""
    from kshot.train.trainer import KShotTrainer

    resumed: list[str | None] = []
    original = KShotTrainer.resume

    def spy(self: KShotTrainer, *folders: str) -> str | None:
        resumed.append(original(self, *folders))
        return resumed[-1]

    monkeypatch.setattr(KShotTrainer, "resume", spy)
    return resumed
