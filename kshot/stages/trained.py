"""A trained supernet and its simplex-net as the search, recalibration and rank stages use them:
loaded from a checkpoint folder, and paths scored with BN recalibrated on the split's images.
"""

from __future__ import annotations

import torch
from torch import nn

from kshot import distributed as dist
from kshot import seeds
from kshot.config import Config
from kshot.nn.simplex import SimplexNet
from kshot.nn.supernets import build_supernet
from kshot.search.score import PathScorer
from kshot.spaces import Space
from kshot.stages.checks import check_bn_images
from kshot.stages.data import images_on_device
from kshot.train import checkpoint as ckpt
from kshot.train.builders import autocast, build_simplex, space_of
from kshot.train.run_data import TrainData
from kshot.train.steps import code_of

__all__ = ["load_trained", "make_scorer", "score_paths"]


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
