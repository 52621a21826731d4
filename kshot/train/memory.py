"""A lower bound of the memory a stage needs, checked against the machine before any work.

``--set k=1000000`` or ``--set resolution=100000`` would otherwise build the supernet slot by slot
or resize the whole dataset for minutes before the allocator fails. The bound counts only what the
stage cannot do without, so it never refuses a run that could fit:

* the supernet's parameters, counted exactly on the ``meta`` device (no memory, no init): fp32
  weights, and for training also their gradients and SGD momentum (3 copies);
* one batch of a rank at the configured resolution: the fp32 input and the stem's output
  (nb201: ``C`` channels; mbv2: the input only).

The machine's memory is the GPU's when the stage runs on one, else the RAM (or the cgroup limit of
a container, whichever is smaller).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kshot.config import Config
from kshot.nn.supernets import build_supernet
from kshot.spaces import Space, space_class, space_from_config

__all__ = ["MemoryEstimate", "estimate", "machine_memory", "check_memory"]

_FP32 = 4
_GIB = 2**30
# Stages that train the supernet, score paths on it, or train a path's stand-alone network.
_TRAINING = frozenset({"warmup", "train"})
_SCORING = frozenset({"search", "recalibrate", "rank"})
_STANDALONE = frozenset({"retrain", "standalone"})
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


class MemoryEstimate:
    """The bound's two parts in bytes, each with the config keys that set it."""

    def __init__(self, params: int, weights: int, batch: int, batch_keys: dict[str, int]) -> None:
        self.params = params
        self.weights = weights
        self.batch = batch
        self.batch_keys = batch_keys

    @property
    def total(self) -> int:
        return self.weights + self.batch


def _supernet_params(space: Space, k: int) -> int:
    """Parameters of the K-shot supernet: exact, from two ``meta`` builds (every K-slot tensor is
    K copies of one shape, so the count is linear in K; building K = 10^6 slots would not be)."""
    counts = []
    for slots in (1, 2):
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in build_supernet(space, slots).parameters()))
    return counts[0] + (k - 1) * (counts[1] - counts[0])


def estimate(cfg: Config, stage: str) -> MemoryEstimate:
    """The lower bound of stage ``stage`` under ``cfg`` (see the module's notes)."""
    # One class and one input channel: the bound counts only what every dataset needs.
    space = space_from_config(cfg, num_classes=1, in_channels=1)
    params = weights = 0
    if stage in _TRAINING | _SCORING:
        params = _supernet_params(space, cfg.k)
        weights = params * _FP32 * (3 if stage in _TRAINING else 1)
    if stage in _TRAINING:
        batch_keys = {"batch_size": cfg.batch_size}
        images = max(1, cfg.batch_size // cfg.workers)
    elif stage in _SCORING:
        size = min(cfg.eval_batch_size, cfg.bn_batch_size)
        key = "eval_batch_size" if cfg.eval_batch_size <= cfg.bn_batch_size else "bn_batch_size"
        batch_keys, images = {key: size}, size
    elif stage in _STANDALONE:
        batch_keys = {"retrain_batch_size": cfg.retrain_batch_size}
        images = max(1, cfg.retrain_batch_size // cfg.workers)
    else:
        return MemoryEstimate(0, 0, 0, {})
    # resolution 0 keeps the dataset's native size, known only once it is read: small for every
    # in-memory dataset; a streamed one needs a resolution (Config checks it).
    batch = images * cfg.resolution**2 * (1 + space.stem_channels) * _FP32
    return MemoryEstimate(params, weights, batch, {**batch_keys, "resolution": cfg.resolution})


def machine_memory(cfg: Config, gpu: bool = True) -> tuple[int, str]:
    """Bytes of memory the stage can use and what they are (a GPU's, or the RAM).

    With ``gpu=False`` the GPU is not asked (a launcher process that must not start CUDA before
    its workers do): the RAM is returned, or 0 when the stage would run on a GPU.
    """
    if cfg.device != "cpu" and torch.cuda.is_available():
        if not gpu:
            return 0, "GPU memory"
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, (
            "GPU memory"
        )
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in _CGROUP_LIMITS:
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total, "memory"


def check_memory(cfg: Config, stage: str, gpu: bool = True) -> None:
    """Refuse, naming the config keys, a stage whose lower bound exceeds the machine's memory.

    Raises:
        ValueError: the supernet or one batch alone needs more than the machine has.
    """
    available, what = machine_memory(cfg, gpu)
    if not available:
        return
    need = estimate(cfg, stage)
    if need.total <= available:
        return
    have = f"more than the {available / _GIB:.3g} GiB of {what} here"
    if need.weights >= need.batch:
        size_keys = space_class(cfg.search_space).size_keys
        shape = ", ".join(f"{key} = {getattr(cfg, key)}" for key in size_keys)
        copies = "weights, gradients and momentum" if stage in _TRAINING else "its weights"
        raise ValueError(
            f"config key 'k' = {cfg.k} ({shape}): the supernet has {need.params:.3g} "
            f"parameters; {copies} alone need {need.weights / _GIB:.3g} GiB, {have} "
            f"(stage {stage!r})"
        )
    keys = ", ".join(f"{k} = {v}" for k, v in need.batch_keys.items())
    raise ValueError(
        f"config key 'resolution' = {cfg.resolution} ({keys}): one batch of "
        f"{cfg.resolution}x{cfg.resolution} images needs at least {need.batch / _GIB:.3g} GiB, "
        f"{have} (stage {stage!r})"
    )
