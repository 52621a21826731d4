"""Streaming class-folder image trees too large to hold in memory (ImageNet-scale).

The in-memory loaders of :mod:`kshot.data.datasets` decode a whole dataset part into one tensor;
this module reads, decodes and transforms images one by one in :class:`torch.utils.data.DataLoader`
workers instead. It ties the pieces together: the images of an index
(:class:`~kshot.data.folder_index.ImageFolderIndex`, or a sharded dataset's
:class:`~kshot.data.shards.ShardIndex`), each decoded and transformed
(:mod:`kshot.data.decode`), in the batches the samplers pick (:mod:`kshot.data.samplers`).

* The train / local-validation split is the project's one split (:func:`kshot.data.split.make_split`,
  config key ``valid_size``: the ImageNet recipe holds 50,000 training images out).
* :func:`train_batches` streams the batches of iterations ``start_step, start_step + 1, ...`` under
  the trainer's determinism contract (:class:`~kshot.data.samplers.TrainBatchSampler`): a batch
  depends only on ``(seed, step, rank, world)``, not on the number of workers, nor on where a run
  was resumed.
* :func:`eval_batches` streams a fixed list of images in order with the evaluation transform.
* :class:`StreamedPart` stands where the in-memory loaders keep a tensor of one part of a split.
* A class-folder tree is read one request per image (:class:`StreamingImages`); a sharded dataset
  (:mod:`kshot.data.shards`, written once by ``kshot data shard``) streams through the same
  functions, a batch fetched with a few ranged reads in parallel (:class:`ShardedImages`).

Workers hold the file list as one numpy byte-string array (no per-file Python objects whose
reference counts would copy the parent's pages into every forked worker), and every class they use
is defined at module level, so the pipeline works with the ``fork``, ``forkserver`` and ``spawn``
start methods alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kshot import seeds, storage
from kshot.data.decode import decode_image_bytes, eval_transform, read_image, train_transform
from kshot.data.folder_index import ImageFolderIndex
from kshot.data.samplers import BatchKeys, EvalBatchSampler, LookAhead, TrainBatchSampler
from kshot.data.shards import Read, ShardIndex, read_plan

__all__ = [
    "StreamingImages",
    "ShardedImages",
    "StreamedPart",
    "train_batches",
    "eval_batches",
]

_PREFETCH_FACTOR = 4
_FETCH_THREADS = 16  # sharded data: ranged reads in flight per loader worker


class StreamingImages(Dataset):
    """A map-style dataset over an :class:`ImageFolderIndex`, keyed by ``(index, step)``.

    ``dataset[(i, step)]`` reads image ``i`` of the index and returns ``(uint8 (3, R, R), label)``:
    with ``augment``, :func:`train_transform` drawing from
    ``numpy.random.default_rng([seed, step, 3, i])``; without, :func:`eval_transform` (``step``
    unused). The result depends only on the key, never on the process or worker reading it.

    Args:
        index: The images.
        resolution: The output's side ``R``.
        augment: Whether to apply the training augmentation.
        seed: The run's seed (augmentation only), ``>= 0``.
    """

    def __init__(
        self, index: ImageFolderIndex, *, resolution: int, augment: bool, seed: int = 0
    ) -> None:
        _check_positive("resolution", resolution)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        # One byte-string array rather than a list of str: forked workers share its pages.
        self._paths = np.array([f.encode("utf-8", "surrogateescape") for f in index.files])
        self._labels = np.asarray(index.labels, dtype=np.int64)
        self.resolution = int(resolution)
        self.augment = bool(augment)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, step = key
        image = read_image(self._paths[index].decode("utf-8", "surrogateescape"))
        if self.augment:
            rng = seeds.rng(self.seed, step, seeds.AUGMENT, index)
            image = train_transform(image, self.resolution, rng)
        else:
            image = eval_transform(image, self.resolution)
        return image, int(self._labels[index])


class ShardedImages(Dataset):
    """A dataset over a :class:`~kshot.data.shards.ShardIndex` whose items are whole batches.

    ``dataset[BatchKeys(keys, upcoming)]``, ``keys`` being ``(index, step)`` pairs as
    :class:`StreamingImages` takes one, fetches the images with the ranged reads of
    :func:`~kshot.data.shards.read_plan`, all in flight at once, decodes each read as it arrives
    and returns the collated ``(uint8 (len(keys), 3, R, R), int64 labels)``. Each image is
    transformed exactly as :class:`StreamingImages` would, so the result depends only on ``keys``.
    The reads of ``upcoming`` start before this batch is decoded, so a worker's next batch is
    usually in memory when it is asked for: the store's latency hides behind decoding.
    """

    def __init__(self, index: ShardIndex, *, resolution: int, augment: bool, seed: int = 0) -> None:
        _check_positive("resolution", resolution)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.index = index
        self.resolution, self.augment, self.seed = int(resolution), bool(augment), int(seed)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[Read, Future[bytes]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # threads and reads in flight stay in the process that started them
        return {**self.__dict__, "_pool": None, "_ahead": {}}

    def _transform(self, data: bytes | bytearray, index: int, step: int) -> torch.Tensor:
        image = decode_image_bytes(data, self.index.name(index))
        if self.augment:
            return train_transform(
                image, self.resolution, seeds.rng(self.seed, step, seeds.AUGMENT, index)
            )
        return eval_transform(image, self.resolution)

    def _fetch(self, read: Read) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="kshot-shards")
        return self._pool.submit(storage.read_range, read.shard, read.start, read.length)

    def __getitem__(self, batch: BatchKeys) -> tuple[torch.Tensor, torch.Tensor]:
        keys = batch.keys
        positions = [index for index, _ in keys]
        out = torch.empty(len(keys), 3, self.resolution, self.resolution, dtype=torch.uint8)
        reads = read_plan(self.index, positions)
        fetching = {self._ahead.pop(r, None) or self._fetch(r): r for r in reads}
        for stale in self._ahead.values():  # fetched for a batch this worker did not get
            stale.cancel()
        self._ahead = {}
        if batch.upcoming:
            upcoming = read_plan(self.index, [index for index, _ in batch.upcoming])
            self._ahead = {r: self._fetch(r) for r in upcoming}
        for done in as_completed(fetching):
            data = done.result()
            for slot, offset, size in fetching[done].members:
                index, step = keys[slot]
                out[slot] = self._transform(bytearray(data[offset : offset + size]), index, step)
        labels = torch.from_numpy(self.index.labels[np.asarray(positions, dtype=np.int64)])
        return out, labels


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels


def train_batches(
    index: ImageFolderIndex | ShardIndex,
    indices: np.ndarray,
    *,
    seed: int,
    start_step: int,
    steps_per_epoch: int,
    batch_size: int,
    resolution: int,
    augment: bool,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 4,
    pin_memory: bool | None = None,
    multiprocessing_context: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of iterations ``start_step, start_step + 1, ...``, endlessly.

    Iteration ``step`` of epoch ``e, pos = divmod(step, steps_per_epoch)`` takes positions
    ``[pos * batch_size, (pos + 1) * batch_size)`` of
    ``numpy.random.default_rng([seed, e, 2]).permutation(len(indices))`` (positions into
    ``indices``), and this rank the ``rank``-th contiguous ``batch_size / world`` of them: the
    trainer's contract, so a resumed run sees exactly the batches of an uninterrupted one and the
    number of workers changes nothing.

    Args:
        index: The train part's images.
        indices: Positions into ``index`` forming the training split (e.g. from
            :func:`kshot.data.split.make_split`).
        seed: The run's seed, ``>= 0``.
        start_step: The first iteration to deliver, ``>= 0``.
        steps_per_epoch: Iterations per epoch; ``steps_per_epoch * batch_size <= len(indices)``.
        batch_size: The global batch size, divisible by ``world``.
        resolution: The images' side.
        augment: RandomResizedCrop + flip when True, the evaluation transform when False.
        rank: This process's DDP rank, in ``[0, world)``.
        world: The number of DDP ranks.
        num_workers: DataLoader worker processes (0: read in this process).
        pin_memory: Pin the batches (default: whether CUDA is available).
        multiprocessing_context: The workers' start method (default: the platform's).

    Yields:
        ``(images, labels)``: ``uint8`` ``(batch_size / world, 3, R, R)`` and ``int64``
        ``(batch_size / world,)``. Close the generator (or drop it) to stop the workers.

    Raises:
        ValueError: an argument is out of range (the message names the values).
    """
    indices = _check_indices(index, indices)
    _check_positive("batch_size", batch_size)
    _check_positive("steps_per_epoch", steps_per_epoch)
    _check_rank(rank, world)
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} must be divisible by the world size {world}: each rank "
            "takes an equal slice of every batch"
        )
    if steps_per_epoch * batch_size > len(indices):
        raise ValueError(
            f"steps_per_epoch {steps_per_epoch} × batch_size {batch_size} = "
            f"{steps_per_epoch * batch_size} exceeds the {len(indices)} training images"
        )
    if start_step < 0 or seed < 0:
        raise ValueError(f"start_step and seed must be >= 0, got {start_step} and {seed}")
    sampler = TrainBatchSampler(
        indices,
        seed=int(seed),
        start_step=int(start_step),
        steps_per_epoch=int(steps_per_epoch),
        batch_size=int(batch_size),
        rank=int(rank),
        world=int(world),
        shard_of=index.shard_of[indices] if isinstance(index, ShardIndex) else None,
    )
    dataset = _dataset(index, resolution=resolution, augment=augment, seed=int(seed))
    loader = _loader(
        dataset, sampler, num_workers, pin_memory, multiprocessing_context, persistent=True
    )
    return _drain(loader)


def eval_batches(
    index: ImageFolderIndex | ShardIndex,
    indices: np.ndarray,
    *,
    batch_size: int,
    resolution: int,
    num_workers: int = 4,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool | None = None,
    multiprocessing_context: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images ``index.files[indices]`` in order with the evaluation transform, batched.

    ``indices`` is cut in order into batches of ``batch_size`` (the last may be smaller); rank
    ``r`` of ``world`` gets batches ``r, r + world, r + 2 * world, ...``, so ranks may get one
    batch more or less than each other (sum per-rank totals, e.g. with an all-reduce).

    Args:
        index: The images.
        indices: Positions into ``index`` to evaluate, in order.
        batch_size: Images per batch.
        resolution: The images' side.
        num_workers: DataLoader worker processes (0: read in this process).
        rank: This process's rank, in ``[0, world)``.
        world: The number of ranks sharing the work.
        pin_memory: Pin the batches (default: whether CUDA is available).
        multiprocessing_context: The workers' start method (default: the platform's).

    Yields:
        ``(images, labels)``: ``uint8`` ``(b, 3, R, R)`` and ``int64`` ``(b,)``.
    """
    indices = _check_indices(index, indices)
    _check_positive("batch_size", batch_size)
    _check_rank(rank, world)
    sampler = EvalBatchSampler(indices, batch_size=int(batch_size), rank=int(rank), world=world)
    dataset = _dataset(index, resolution=resolution, augment=False)
    loader = _loader(
        dataset, sampler, num_workers, pin_memory, multiprocessing_context, persistent=False
    )
    return _drain(loader)


def _dataset(
    index: ImageFolderIndex | ShardIndex, *, resolution: int, augment: bool, seed: int = 0
) -> StreamingImages | ShardedImages:
    """Per-image reads of a class-folder tree, or batch-wise ranged reads of shards."""
    if isinstance(index, ShardIndex):
        return ShardedImages(index, resolution=resolution, augment=augment, seed=seed)
    return StreamingImages(index, resolution=resolution, augment=augment, seed=seed)


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def _loader(
    dataset: StreamingImages | ShardedImages,
    sampler: Sampler,
    num_workers: int,
    pin_memory: bool | None,
    multiprocessing_context: str | None,
    *,
    persistent: bool,
) -> DataLoader:
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    workers = num_workers > 0
    batched = isinstance(dataset, ShardedImages)  # its items are whole batches
    return DataLoader(
        dataset,
        batch_size=None if batched else 1,
        sampler=LookAhead(sampler, num_workers) if batched else None,
        batch_sampler=None if batched else sampler,
        num_workers=num_workers,
        collate_fn=_whole_batch if batched else _collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=persistent and workers,
        prefetch_factor=_PREFETCH_FACTOR if workers else None,
        multiprocessing_context=multiprocessing_context if workers else None,
    )


def _drain(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``loader``; stop its worker processes when done, closed or garbage-collected."""
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_rank(rank: int, world: int) -> None:
    _check_positive("world", world)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} must be in [0, world) = [0, {world})")


def _check_indices(index: ImageFolderIndex | ShardIndex, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"indices must be a non-empty 1-D integer array, got {indices.dtype} of shape "
            f"{indices.shape}"
        )
    if indices.min() < 0 or indices.max() >= len(index):
        raise ValueError(
            f"indices must lie in [0, {len(index)}) (the index's images), got "
            f"[{indices.min()}, {indices.max()}]"
        )
    return indices.astype(np.int64, copy=False)


class StreamedPart:
    """One part of a split (e.g. the training images) of a class-folder tree, streamed.

    It stands where the in-memory loaders keep a ``uint8`` tensor: :meth:`batch` gives the
    batch of an iteration under the trainer's contract (keeping one :func:`train_batches` iterator
    alive across consecutive iterations, and starting a new one when a caller jumps), and indexing
    (``part[positions]``) decodes a few images with the evaluation transform, e.g. the images of BN
    recalibration.

    Args:
        index: the scanned tree.
        indices: positions into ``index`` that form this part.
        resolution: output side in pixels.
        num_workers: DataLoader workers per process.
    """

    def __init__(
        self,
        index: ImageFolderIndex | ShardIndex,
        indices: np.ndarray,
        resolution: int,
        num_workers: int,
    ) -> None:
        self.index, self.indices = index, _check_indices(index, np.asarray(indices))
        self.resolution, self.num_workers = resolution, num_workers
        self.labels = torch.from_numpy(index.labels[self.indices])
        self._stream: tuple[tuple, int, Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """As an in-memory ``(N, C, H, W)`` tensor of this part would have."""
        return (len(self), 3, self.resolution, self.resolution)

    def batch(
        self,
        *,
        seed: int,
        step: int,
        steps_per_epoch: int,
        batch_size: int,
        augment: bool,
        rank: int = 0,
        world: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the batch of iteration ``step`` (uint8 images, labels)."""
        key = (seed, steps_per_epoch, batch_size, augment, rank, world)
        if self._stream is None or self._stream[0] != key or self._stream[1] != step:
            self.close()
            batches = train_batches(
                self.index,
                self.indices,
                seed=seed,
                start_step=step,
                steps_per_epoch=steps_per_epoch,
                batch_size=batch_size,
                resolution=self.resolution,
                augment=augment,
                rank=rank,
                world=world,
                num_workers=self.num_workers,
            )
            self._stream = (key, step, batches)
        key, _, batches = self._stream
        images, labels = next(batches)
        self._stream = (key, step + 1, batches)
        return images, labels

    def __getitem__(self, positions: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        """The images at ``positions`` of this part, decoded with the evaluation transform."""
        chosen = self.indices[positions if isinstance(positions, slice) else np.asarray(positions)]
        if len(chosen) == 0:
            return torch.empty(0, 3, self.resolution, self.resolution, dtype=torch.uint8)
        batches = eval_batches(
            self.index,
            chosen,
            batch_size=256,
            resolution=self.resolution,
            num_workers=min(self.num_workers, max(1, len(chosen) // 256)),
        )
        return torch.cat([images for images, _ in batches])

    def batches(
        self, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The part in order with the evaluation transform, ``(uint8 images, labels)``: all of it,
        or rank ``rank``'s batches ``rank, rank + world, …``."""
        return eval_batches(
            self.index,
            self.indices,
            batch_size=batch_size,
            resolution=self.resolution,
            num_workers=self.num_workers,
            rank=rank,
            world=world,
        )

    def close(self) -> None:
        """Stop the workers of the current training stream."""
        if self._stream is not None:
            self._stream[2].close()  # type: ignore[attr-defined]
            self._stream = None
