"""What several stages share: artifact arguments, the split's data, a trained supernet, a scorer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kshot import distributed as dist
from kshot import seeds, storage
from kshot.config import Config
from kshot.data.datasets import channel_stats, load_dataset
from kshot.data.folder_index import ImageFolderIndex
from kshot.data.shards import ShardIndex, is_sharded
from kshot.data.split import split_from_dict
from kshot.data.stream import StreamedPart
from kshot.eval.ground_truth import check_ground_truth
from kshot.nn.simplex import SimplexNet
from kshot.nn.supernets import build_supernet
from kshot.search.nsga2 import BudgetError
from kshot.search.score import PathScorer
from kshot.spaces import Space
from kshot.stages import FOLDER_ARTIFACTS
from kshot.train import checkpoint as ckpt
from kshot.train.builders import autocast, build_simplex, space_of
from kshot.train.run_data import TrainData
from kshot.train.steps import code_of

__all__ = [
    "require",
    "load_train_data",
    "load_trained",
    "make_scorer",
    "device_of",
    "score_paths",
    "space_of",
    "read_search_results",
    "check_budget",
    "check_bn_images",
    "check_later_stages",
    "images_on_device",
]

_DECODE_BATCH = 256  # images per decoded batch of a streamed part moved to the device


def require(artifacts: Mapping[str, str], names: tuple[str, ...], stage: str, kind: str) -> None:
    """Fail early when a stage is called without one of its artifact URIs."""
    missing = [n for n in names if not artifacts.get(n)]
    if missing:
        flag = "--input" if kind == "input" else "--output"
        raise ValueError(
            f"stage {stage!r} needs {kind} artifact(s) {', '.join(missing)} "
            f"(e.g. {flag} {missing[0]}=URI)"
        )
    # A malformed URI or an output that can never be written stops the stage before any work.
    for name in names:
        uri = artifacts[name]
        try:
            check = storage.check_writable if kind == "output" else storage.check_readable
            check(uri, folder=name in FOLDER_ARTIFACTS)
        except storage.StorageError:
            raise  # the store did not answer: not a bad URI
        except (ValueError, OSError) as e:
            raise ValueError(f"stage {stage!r}, {kind} artifact {name}={uri!r}: {e}") from e


def device_of(cfg: Config) -> torch.device:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return dist.device_for_rank(cfg.device)


def load_train_data(cfg: Config, split_uri: str) -> TrainData:
    """The dataset's images cut by the split file at ``split_uri``: held in memory, or (config key
    ``data_loading: stream``) the training part streamed from a class-folder tree."""
    split_doc = storage.read_json(split_uri)
    # Another dataset's split would otherwise fail (or, worse, pass) on its image count.
    recorded = split_doc.get("dataset") if isinstance(split_doc, dict) else None
    if recorded and recorded != cfg.dataset:
        raise ValueError(
            f"split {split_uri!r} was made for dataset {recorded!r}, but config key 'dataset' is "
            f"{cfg.dataset!r}"
        )
    split_digest = hashlib.sha256(json.dumps(split_doc, sort_keys=True).encode()).hexdigest()
    if cfg.data_loading == "stream":
        data = _streamed_train_data(cfg, split_doc, split_uri)
        data.split_digest = split_digest
        return data
    train = load_dataset(cfg.dataset, "train", resolution=cfg.resolution or None)
    content = hashlib.sha256(train.images.contiguous().numpy())  # hashed in place, no copy
    content.update(train.labels.contiguous().numpy())
    split = split_from_dict(split_doc, split_uri, num_images=len(train))
    tr, va = torch.from_numpy(split.train), torch.from_numpy(split.valid)
    mean, std = channel_stats(train.images[tr])
    if split.test is not None:
        te = torch.from_numpy(split.test)
        test_images, test_labels = train.images[te], train.labels[te]
    else:
        test = load_dataset(cfg.dataset, "test", resolution=cfg.resolution or None)
        test_images, test_labels = test.images, test.labels
    return TrainData(
        train_images=train.images[tr],
        train_labels=train.labels[tr],
        valid_images=train.images[va],
        valid_labels=train.labels[va],
        test_images=test_images,
        test_labels=test_labels,
        mean=mean,
        std=std,
        num_classes=train.num_classes,
        split_digest=split_digest,
        dataset_digest=content.hexdigest(),
    )


_STATS_IMAGES = 2000  # a seeded sample of streamed training images gives the channel statistics


def stream_index(
    cfg: Config, part: str = "train", classes: list[str] | None = None
) -> ImageFolderIndex | ShardIndex:
    """The index of a streamed dataset (config key ``data_loading: stream``): a sharded dataset's
    (one object read, see :mod:`kshot.data.shards`) or a class-folder tree's (listed)."""
    try:
        if is_sharded(cfg.dataset):
            return ShardIndex.load(cfg.dataset, part)
        return ImageFolderIndex.scan(cfg.dataset, part, classes=classes)
    except FileNotFoundError:
        if part != "train":
            raise
        raise ValueError(
            f"config key 'data_loading' = 'stream' reads a class-folder tree "
            f"(train/<class>/*.jpg) or a sharded dataset (`kshot data shard`), but dataset "
            f"{cfg.dataset!r} is not a folder"
        ) from None
    except ValueError as e:
        raise ValueError(
            f"config key 'data_loading' = 'stream' reads a class-folder tree or a sharded "
            f"dataset: {e}"
        ) from None


def _streamed_train_data(cfg: Config, split_doc: Any, split_uri: str) -> TrainData:
    index = stream_index(cfg)
    recorded = split_doc.get("files_sha256")
    if recorded and recorded != index.fingerprint():
        raise ValueError(
            f"split {split_uri!r} was made on another list of files than dataset {cfg.dataset!r} "
            f"holds now ({len(index)} training images): make the split again"
        )
    split = split_from_dict(split_doc, split_uri, num_images=len(index))

    def part(source: ImageFolderIndex | ShardIndex, indices: np.ndarray) -> StreamedPart:
        return StreamedPart(source, indices, cfg.resolution, cfg.loader_workers)

    train = part(index, split.train)
    sample = seeds.rng(cfg.seed, seeds.CHANNEL_STATS).permutation(len(train))[:_STATS_IMAGES]
    mean, std = channel_stats(train[np.sort(sample)])
    if split.test is not None:
        test = part(index, split.test)
    else:
        test_index = stream_index(cfg, "test", classes=index.classes)
        test = part(test_index, np.arange(len(test_index)))
    valid = part(index, split.valid)
    return TrainData(
        train_images=train,
        train_labels=train.labels,
        valid_images=valid,
        valid_labels=valid.labels,
        test_images=test,
        test_labels=test.labels,
        mean=mean,
        std=std,
        num_classes=index.num_classes,
        dataset_digest=index.fingerprint(),
    )


def images_on_device(
    images: torch.Tensor | StreamedPart, count: int, device: torch.device
) -> torch.Tensor:
    """The first ``count`` images, uint8 (normalised per batch later), on ``device``. A streamed
    part is decoded batch by batch straight into the device tensor, so the host never holds them
    all at once (ImageNet's 50,000 held-out images at 224: 7.5 GB)."""
    if isinstance(images, torch.Tensor) or count == 0:
        return images[:count].to(device)
    head = StreamedPart(images.index, images.indices[:count], images.resolution, images.num_workers)
    out = torch.empty(head.shape, dtype=torch.uint8, device=device)
    filled = 0
    for batch, _ in head.batches(_DECODE_BATCH):
        out[filled : filled + len(batch)].copy_(batch, non_blocking=True)
        filled += len(batch)
    return out


def load_trained(
    cfg: Config,
    data: TrainData,
    checkpoint_folder: str,
    device: torch.device,
    space: Space | None = None,
) -> tuple[nn.Module, SimplexNet, dict]:
    """The newest supernet and simplex-net under ``checkpoint_folder``, checked against ``cfg``
    (``space``: the run's at the data's shape, :func:`space_of`; built when not given)."""
    state = ckpt.load_latest(checkpoint_folder)
    ckpt.check_identity(state, ckpt.identity_of(cfg, data), state["uri"])
    space = space or space_of(cfg, data)
    supernet, simplex = build_supernet(space, cfg.k), build_simplex(cfg, space)
    supernet.load_state_dict(state["supernet"])
    simplex.load_state_dict(state["simplex"])
    return supernet.to(device), simplex.to(device).eval(), state


def make_scorer(
    cfg: Config,
    data: TrainData,
    supernet: nn.Module,
    simplex: SimplexNet | None,
    device: torch.device,
    eval_images: int | None = None,
    space: Space | None = None,
) -> PathScorer:
    """A scorer with ``cfg.bn_images`` seeded training images and the validation split
    (``space``: the run's at the data's shape, :func:`space_of`; built when not given)."""
    space = space or space_of(cfg, data)
    n_train = check_bn_images(cfg, data)
    bn_idx = seeds.rng(cfg.seed, seeds.BN_IMAGES).permutation(n_train)[: cfg.bn_images]
    n_valid = eval_images if eval_images is not None else cfg.eval_images
    n_valid = n_valid or len(data.valid_labels)
    return PathScorer(
        space,
        supernet,
        simplex,
        bn_images=data.prepare(data.train_images[torch.from_numpy(bn_idx)], device),
        valid_images=images_on_device(data.valid_images, n_valid, device),
        valid_labels=data.valid_labels[:n_valid].to(device),
        bn_batch_size=cfg.bn_batch_size,
        eval_batch_size=cfg.eval_batch_size,
        prepare=lambda x: data.prepare(x, device),
        autocast=lambda: autocast(cfg, device),
        code=None if simplex is None else code_of(cfg, space, simplex, device),
    )


def score_paths(
    scorer: PathScorer, archs: list[tuple[int, ...]], desc: str = "scoring", progress: bool = True
) -> list[dict]:
    """Score ``archs`` split over the ranks (round robin), gathered back in the given order.

    Returns one ``{"arch", "accuracy", "lam"}`` record per path, ``arch`` as the space's string.
    """
    from kshot.progress import progress_bar

    mine = list(range(dist.rank(), len(archs), dist.world_size()))
    records = []
    for i in progress_bar(mine, desc=desc, unit="path", disable=not (progress and dist.is_main())):
        accuracy, lam = scorer.score(archs[i])
        arch = scorer.space.format(archs[i])
        records.append((i, {"arch": arch, "accuracy": accuracy, "lam": lam}))
    gathered = sorted(dist.gather_lists(records), key=lambda r: r[0])
    return [record for _, record in gathered]


def read_search_results(uri: str, space: Space) -> dict[str, Any]:
    """The front, best path and budget of a search / recalibrate results JSON, each arch checked.

    Returns:
        ``{"front": [arch, …], "best": arch, "flops_budget": float | None}`` with normalised archs.
    """
    results = storage.read_json(uri)
    if not isinstance(results, dict):
        raise ValueError(f"results {uri!r} must be a JSON object")
    recorded = results.get("search_space", space.name)
    if recorded != space.name:
        raise ValueError(
            f"results {uri!r} are of search space {recorded!r}, but config key 'search_space' is "
            f"{space.name!r}"
        )

    def arch_of(record: Any, where: str) -> str:
        if not isinstance(record, dict) or "arch" not in record:
            raise ValueError(f"results {uri!r} have no path with an 'arch' string at {where}")
        try:
            return space.format(space.parse(record["arch"]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"results {uri!r}, key {where}.arch: {e}") from None

    front = results.get("front", [])
    if not isinstance(front, list):
        raise ValueError(f"results {uri!r}: 'front' must be a list of paths")
    return {
        "front": [arch_of(r, f"front[{i}]") for i, r in enumerate(front)],
        "best": arch_of(results.get("best"), "best"),
        "flops_budget": results.get("flops_budget"),
    }


def check_budget(cfg: Config, space: Space) -> float | None:
    """The budget in MFLOPs (None: unconstrained); fails when no path of the space meets it."""
    if not cfg.flops_budget:
        return None
    cheapest = space.cheapest_flops()
    if cfg.flops_budget < cheapest:
        shape = ", ".join(f"{k}={v}" for k, v in space.shape.items())
        raise BudgetError(
            f"config key 'flops_budget' = {cfg.flops_budget} MFLOPs: no {cfg.search_space} path "
            f"meets it (the cheapest needs {cheapest:.6g} MFLOPs at {shape}, resolution "
            f"{space.resolution})"
        )
    return cfg.flops_budget


def check_bn_images(cfg: Config, data: TrainData) -> int:
    """The split's training image count; fails when BN recalibration would need more."""
    n_train = len(data.train_labels)
    if cfg.bn_images > n_train:
        raise ValueError(
            f"config key 'bn_images' = {cfg.bn_images} exceeds the {n_train} training images of "
            f"the split: recalibration needs that many"
        )
    return n_train


def check_later_stages(cfg: Config, data: TrainData, space: Space) -> None:
    """Refuse before the first epoch what the search and rank stages would refuse after training:
    a FLOPs budget no path meets, more recalibration images than the split holds, a ground-truth
    table (config key ``ground_truth``) that cannot be read or lacks its column. ``space`` is the
    run's at the data's shape (:func:`space_of`)."""
    check_budget(cfg, space)
    check_bn_images(cfg, data)
    if cfg.ranking and cfg.ground_truth:
        try:
            check_ground_truth(cfg.ground_truth, cfg.ground_truth_column, space)
        except (OSError, ValueError) as e:
            raise ValueError(f"config key 'ground_truth' = {cfg.ground_truth!r}: {e}") from e
