"""Which images each training or evaluation batch holds, per step and rank: the batch samplers.

:class:`TrainBatchSampler` keeps the trainer's determinism contract
(:func:`kshot.train.run_data.training_batch`): epoch ``e`` visits the split in the order
``numpy.random.default_rng([seed, e, 2]).permutation(n)``, iteration ``step`` takes positions
``[pos * b, (pos + 1) * b)`` of its epoch where ``epoch, pos = divmod(step, steps_per_epoch)``,
and DDP rank ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` slice of that global batch. Each
image comes keyed ``(index, step)``: the dataset draws the image's augmentation from
``numpy.random.default_rng([seed, step, 3, index])``. A batch therefore depends only on
``(seed, step, rank, world)``: not on the number of workers, nor on where a run was resumed.

Sharded data (:mod:`kshot.data.shards`) keeps that contract with one change of form: the epoch's
permutation is of *runs* of up to :data:`RUN_LENGTH` images that neighbour each other in a shard
(:func:`run_order`, the runs cut at a phase drawn per epoch), so a rank's slice of a batch costs
about ``b / (W · RUN_LENGTH)`` ranged reads. The shards were written in a shuffled order, so a run
is a random sample of the part; the global batch still does not depend on ``world``. Its batches
go to the DataLoader as :class:`BatchKeys` (:class:`LookAhead`), which name the batch a worker gets
next, so that its reads start early.

:class:`EvalBatchSampler` cuts a fixed list of images in order into batches, dealt to the ranks
in turn.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from kshot import seeds

__all__ = [
    "RUN_LENGTH",
    "run_order",
    "BatchKeys",
    "LookAhead",
    "TrainBatchSampler",
    "EvalBatchSampler",
]

RUN_LENGTH = 16  # sharded data: images that neighbour each other in a shard and in an epoch
_EVAL_STEP = -1  # the step of evaluation samples (unused: evaluation draws nothing)


@dataclass(frozen=True)
class BatchKeys:
    """What a loader worker gets for one batch of sharded data: the batch's ``(index, step)`` keys
    and, when known, the keys of the batch the same worker gets next (fetched ahead)."""

    keys: list[tuple[int, int]]
    upcoming: list[tuple[int, int]] | None = None


class LookAhead(Sampler):
    """Yields each batch of ``batches`` as :class:`BatchKeys` with the batch ``ahead`` places
    later: the one a DataLoader with ``ahead`` workers hands to the same worker next (its workers
    take batches in turn)."""

    def __init__(self, batches: Sampler, ahead: int) -> None:
        super().__init__()
        self.batches, self.ahead = batches, max(1, ahead)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[BatchKeys]:
        source = iter(self.batches)
        window = deque(itertools.islice(source, self.ahead + 1))
        while window:
            keys = window.popleft()
            window.extend(itertools.islice(source, 1))
            upcoming = window[self.ahead - 1] if len(window) >= self.ahead else None
            yield BatchKeys(keys, upcoming)


def run_order(shard_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An epoch's order of positions ``0 .. len(shard_of) - 1`` in runs of neighbours.

    Position ``p`` holds an image of shard ``shard_of[p]`` (positions in shard order). The
    positions are cut into runs of up to :data:`RUN_LENGTH` consecutive positions of one shard,
    the cuts shifted by a phase ``rng.integers(RUN_LENGTH)``; the runs are then permuted with
    ``rng.permutation`` and laid end to end.
    """
    n = len(shard_of)
    positions = np.arange(n)
    phase = int(rng.integers(RUN_LENGTH))
    new_shard = np.r_[True, shard_of[1:] != shard_of[:-1]] if n else np.zeros(0, dtype=bool)
    shard_start = np.maximum.accumulate(np.where(new_shard, positions, 0))
    within = positions - shard_start
    starts = new_shard | ((within - phase) % RUN_LENGTH == 0)
    run_of = np.cumsum(starts) - 1
    runs = int(run_of[-1]) + 1 if n else 0
    place = np.empty(runs, dtype=np.int64)
    place[rng.permutation(runs)] = np.arange(runs)
    return np.lexsort((positions, place[run_of]))


class TrainBatchSampler(Sampler):
    """Endless: per step from ``start_step``, this rank's ``(index, step)`` keys of the batch."""

    def __init__(
        self,
        indices: np.ndarray,
        *,
        seed: int,
        start_step: int,
        steps_per_epoch: int,
        batch_size: int,
        rank: int,
        world: int,
        shard_of: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.indices = indices
        self.seed, self.start_step, self.steps_per_epoch = seed, start_step, steps_per_epoch
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.shard_of = shard_of  # sharded data: each index's shard, for runs of neighbours

    def keys(self, step: int, order: np.ndarray) -> list[tuple[int, int]]:
        """This rank's keys of iteration ``step``, given its epoch's order."""
        pos = step % self.steps_per_epoch
        batch = self.indices[order[pos * self.batch_size : (pos + 1) * self.batch_size]]
        share = self.batch_size // self.world
        mine = batch[self.rank * share : (self.rank + 1) * share]
        return [(int(index), step) for index in mine]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                rng = seeds.rng(self.seed, epoch, seeds.EPOCH_ORDER)
                if self.shard_of is None:
                    order = rng.permutation(len(self.indices))
                else:
                    order = run_order(self.shard_of, rng)
            yield self.keys(step, order)
            step += 1


class EvalBatchSampler(Sampler):
    """Batches ``rank, rank + world, ...`` of ``indices`` cut in order into ``batch_size`` pieces."""

    def __init__(self, indices: np.ndarray, *, batch_size: int, rank: int, world: int) -> None:
        super().__init__()
        self.indices, self.batch_size, self.rank, self.world = indices, batch_size, rank, world

    def __len__(self) -> int:
        batches = -(-len(self.indices) // self.batch_size)
        return len(range(self.rank, batches, self.world))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = -(-len(self.indices) // self.batch_size)
        for batch in range(self.rank, batches, self.world):
            chunk = self.indices[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield [(int(index), _EVAL_STEP) for index in chunk]
