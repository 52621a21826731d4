"""Streaming class-folder image trees too large to hold in memory (ImageNet-scale).

The in-memory loaders of :mod:`kshot.data.datasets` decode a whole dataset part into one tensor;
this module reads, decodes and transforms images one by one in :class:`torch.utils.data.DataLoader`
workers instead.

* :class:`ImageFolderIndex` lists a class-folder tree ``root/train/<class>/*.{jpg,jpeg,png}`` (and
  optionally ``root/test/<class>/...``, or ``val/`` or ``validation/``, looked for in that order),
  local or in an object store, with the same rules as :mod:`kshot.data.datasets`: classes are the
  train part's subfolders sorted by name, and files are taken in name order within each class.
* The train / local-validation split is the project's one split (:func:`kshot.data.split.make_split`,
  config key ``valid_size``: the ImageNet recipe holds 50,000 training images out).
* :func:`train_batches` streams the batches of iterations ``start_step, start_step + 1, ...`` under
  the trainer's determinism contract (:func:`kshot.train.trainer.training_batch`): epoch ``e``
  visits the split in the order ``numpy.random.default_rng([seed, e, 2]).permutation(n)``,
  iteration ``step`` takes positions ``[pos * b, (pos + 1) * b)`` of its epoch where
  ``epoch, pos = divmod(step, steps_per_epoch)``, and DDP rank ``r`` of ``W`` takes the ``r``-th
  contiguous ``1/W`` slice of that global batch. The augmentation of an image (RandomResizedCrop and
  a horizontal flip) draws from ``numpy.random.default_rng([seed, step, 3, index])``, ``index``
  being the image's position in the index. A batch therefore depends only on
  ``(seed, step, rank, world)``: not on the number of workers, nor on where a run was resumed.
* :func:`eval_batches` streams a fixed list of images in order with the evaluation transform
  (resize the shorter side to ``round(resolution / 0.875)``, then center-crop ``resolution``).
* A sharded dataset (:mod:`kshot.data.shards`, written once by ``kshot data shard``) streams
  through the same functions: its index is one object (no listing), and a batch is fetched with a
  few ranged reads in parallel (:class:`ShardedImages`) instead of one request per image. Its
  epoch order keeps the contract above with one change of form: the permutation is of *runs* of
  up to :data:`RUN_LENGTH` images that neighbour each other in a shard (the runs cut at a phase
  drawn per epoch), so a rank's slice of a batch costs about ``b / (W · RUN_LENGTH)`` requests.
  The shards were written in a shuffled order, so a run is a random sample of the part; a batch
  still depends only on ``(seed, step, rank, world)``, and the global batch not on ``world``.

Images are decoded with :func:`torchvision.io.decode_image` (PIL as the fallback for what it
cannot read) to RGB and come out as ``uint8`` ``(3, resolution, resolution)``; normalisation happens
later, on the device (:meth:`kshot.train.trainer.TrainData.prepare`). Workers hold the file list as
one numpy byte-string array (no per-file Python objects whose reference counts would copy the
parent's pages into every forked worker), and every class they use is defined at module level, so
the pipeline works with the ``fork``, ``forkserver`` and ``spawn`` start methods alike.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

try:  # deprecated in torchvision 0.29 in favour of TorchCodec; PIL decodes once it is gone
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - depends on the installed torchvision
    ImageReadMode = decode_image = None

from kshot import seeds, storage
from kshot.data.datasets import IMAGE_SUFFIXES, TEST_FOLDER_NAMES
from kshot.data.shards import Read, ShardIndex, read_plan

__all__ = [
    "PARTS",
    "CROP_SCALE",
    "CROP_RATIO",
    "EVAL_CROP_FRACTION",
    "ImageFolderIndex",
    "StreamingImages",
    "ShardedImages",
    "BatchKeys",
    "RUN_LENGTH",
    "run_order",
    "StreamedPart",
    "train_batches",
    "eval_batches",
    "read_image",
    "decode_image_bytes",
    "random_resized_crop_params",
    "train_transform",
    "eval_transform",
]

PARTS = ("train", "test")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_FRACTION = 0.875  # resize the shorter side to resolution / 0.875, e.g. 256 for 224
_CROP_TRIES = 10
_PREFETCH_FACTOR = 4
_EVAL_STEP = -1  # the step of evaluation samples (unused: evaluation draws nothing)
RUN_LENGTH = 16  # sharded data: images that neighbour each other in a shard and in an epoch
_FETCH_THREADS = 16  # sharded data: ranged reads in flight per loader worker


# ------------------------------------------------------------------------------------- index


@dataclass
class ImageFolderIndex:
    """The files of one part of a class-folder tree, with their labels.

    Attributes:
        files: Local paths or store URIs of the images, grouped by class in class order and in
            name order within a class.
        labels: ``int64`` array of shape ``(len(files),)``: each file's position in ``classes``.
        classes: The train part's class folder names, sorted.
    """

    files: list[str]
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.files):
            raise ValueError(
                f"ImageFolderIndex: {len(self.files)} files but labels of shape {self.labels.shape}"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"ImageFolderIndex: labels must lie in [0, {len(self.classes)}), got "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        """The number of classes (of the train part, whichever part this is)."""
        return len(self.classes)

    def fingerprint(self) -> str:
        """SHA-256 of the classes and, in order, each file's class and name: a split made on this
        index records it, so indices never silently point at other images after the tree changed."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for file, label in zip(self.files, self.labels.tolist(), strict=True):
            digest.update(f"\n{self.classes[label]}/{file.rsplit('/', 1)[-1]}".encode())
        return digest.hexdigest()

    @classmethod
    def scan(
        cls, uri: str, part: str = "train", *, classes: Sequence[str] | None = None
    ) -> ImageFolderIndex:
        """List one part of the class-folder tree at ``uri`` (a local folder or bucket prefix).

        Args:
            uri: The tree's root, holding ``train/`` (and optionally ``test/``, ``val/`` or
                ``validation/``).
            part: ``"train"``, or ``"test"`` for the first of ``test/``, ``val/``,
                ``validation/`` that exists.
            classes: The train part's classes when already known (e.g. ``train_index.classes``);
                saves listing ``train/`` again when scanning the test part (for a bucket tree
                that listing touches every training object).

        Returns:
            The index; for bucket trees only objects exactly at ``<part>/<class>/<name>`` count.

        Raises:
            FileNotFoundError: a local ``uri`` is not a folder, or ``part="test"`` and the tree has
                no test folder.
            ValueError: ``train/`` has no class folders, the part holds class folders that
                ``train/`` lacks, the part has no images, or ``part`` is unknown; the message names
                ``uri``.
        """
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r} (dataset {uri!r})")
        lister = _ObjectStoreTree(uri) if storage.Uri.parse(uri).is_remote else _LocalTree(uri)
        if classes is None:
            classes = lister.class_names("train")
            if not classes:
                raise ValueError(f"{uri!r}: {storage.join(uri, 'train')} has no class folders")
        classes = list(classes)
        if part == "train":
            folder = "train"
        else:
            found = next((name for name in TEST_FOLDER_NAMES if lister.is_folder(name)), None)
            if found is None:
                raise FileNotFoundError(
                    f"{uri!r} has no test part: none of "
                    f"{', '.join(name + '/' for name in TEST_FOLDER_NAMES)} exists"
                )
            folder = found
        known = set(classes)
        unknown = sorted(name for name in lister.class_names(folder) if name not in known)
        if unknown:
            raise ValueError(
                f"{uri!r}: class folders {unknown} in {storage.join(uri, folder)} are not in train/"
            )
        files: list[str] = []
        labels: list[int] = []
        for label, class_name in enumerate(classes):
            class_files = lister.images(folder, class_name)
            files.extend(class_files)
            labels.extend([label] * len(class_files))
        if not files:
            raise ValueError(
                f"{uri!r}: no {'/'.join(IMAGE_SUFFIXES)} images under {storage.join(uri, folder)} "
                "(images must sit in <class>/ folders named as in train/)"
            )
        return cls(files=files, labels=np.asarray(labels, dtype=np.int64), classes=classes)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


class _LocalTree:
    """Folder listings of a local class-folder tree (``os.scandir``, sorted by name)."""

    def __init__(self, uri: str) -> None:
        if not os.path.isdir(uri):
            raise FileNotFoundError(f"dataset {uri!r} does not exist or is not a folder")
        self.uri = uri

    def is_folder(self, folder: str) -> bool:
        return os.path.isdir(os.path.join(self.uri, folder))

    def class_names(self, folder: str) -> list[str]:
        path = os.path.join(self.uri, folder)
        if not os.path.isdir(path):
            return []
        with os.scandir(path) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir())

    def images(self, folder: str, class_name: str) -> list[str]:
        path = os.path.join(self.uri, folder, class_name)
        if not os.path.isdir(path):
            return []
        with os.scandir(path) as entries:
            names = sorted(
                entry.name for entry in entries if entry.is_file() and _is_image(entry.name)
            )
        return [storage.join(self.uri, folder, class_name, name) for name in names]


class _ObjectStoreTree:
    """Listings of an object store's class-folder tree: one ``list_uris`` per part folder,
    cached."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self._listed: dict[str, dict[str, list[str]]] = {}
        self._exists: dict[str, bool] = {}

    def _classes(self, folder: str) -> dict[str, list[str]]:
        """``{class: sorted image URIs}`` of every class folder holding an object."""
        if folder not in self._listed:
            prefix = storage.join(self.uri, folder)
            by_class: dict[str, list[str]] = {}
            objects = storage.list_uris(prefix)
            self._exists[folder] = bool(objects)
            for object_uri in objects:
                parts = object_uri[len(prefix) + 1 :].split("/")
                if len(parts) < 2:
                    continue
                images = by_class.setdefault(parts[0], [])
                if len(parts) == 2 and _is_image(parts[1]):
                    images.append(object_uri)
            self._listed[folder] = {name: sorted(by_class[name]) for name in sorted(by_class)}
        return self._listed[folder]

    def is_folder(self, folder: str) -> bool:
        """Whether any object lies under ``folder/`` (as a local folder exists, even a flat one)."""
        self._classes(folder)  # the listing is kept for the scan that follows
        return self._exists[folder]

    def class_names(self, folder: str) -> list[str]:
        return list(self._classes(folder))

    def images(self, folder: str, class_name: str) -> list[str]:
        return self._classes(folder).get(class_name, [])


# -------------------------------------------------------------------------------- transforms


def decode_image_bytes(data: bytes | bytearray, name: str) -> torch.Tensor:
    """Decode an encoded JPEG/PNG (or anything PIL reads) to a ``uint8`` RGB ``(3, H, W)`` tensor.

    Args:
        data: The file's bytes.
        name: The file's path or URI, for error messages.

    Raises:
        ValueError: the data is empty or neither torchvision nor PIL can decode it.
    """
    if not data:
        raise ValueError(f"cannot decode image {name}: the file is empty")
    failure = "torchvision cannot decode images"
    if decode_image is not None:
        buffer = data if isinstance(data, bytearray) else bytearray(data)  # frombuffer: writable
        try:
            with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call
                warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
                return decode_image(
                    torch.frombuffer(buffer, dtype=torch.uint8), mode=ImageReadMode.RGB
                )
        except RuntimeError as err:
            failure = str(err)
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as pil_err:
        raise ValueError(f"cannot decode image {name}: {failure}; PIL: {pil_err}") from pil_err
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def read_image(uri: str) -> torch.Tensor:
    """Read and decode the image at ``uri`` (local path or store URI) to ``uint8`` RGB ``(3, H, W)``.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
        ValueError: the file cannot be decoded (naming ``uri``).
    """
    return decode_image_bytes(bytearray(storage.read_bytes(uri)), uri)


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """The crop box of RandomResizedCrop, torchvision's sampling algorithm drawn from ``rng``.

    Up to 10 tries draw an area share from ``U(scale)`` and a log aspect ratio from
    ``U(log ratio)`` and keep the first box that fits; otherwise the largest central box whose
    aspect ratio is clamped into ``ratio``.

    Returns:
        ``(top, left, crop_height, crop_width)``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image: torch.Tensor, resolution: int, rng: np.random.Generator) -> torch.Tensor:
    """RandomResizedCrop to ``resolution`` (scale 0.08-1, ratio 3/4-4/3) and a flip with p 0.5.

    Args:
        image: ``uint8`` ``(C, H, W)``.
        resolution: The output's side.
        rng: The source of every random choice (crop box first, then the flip).

    Returns:
        ``uint8`` ``(C, resolution, resolution)``.
    """
    top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], rng)
    flip = bool(rng.random() < 0.5)
    out = TF.resized_crop(image, top, left, h, w, [resolution, resolution], antialias=True)
    return out.flip(-1) if flip else out


def eval_transform(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``round(resolution / 0.875)``, then center-crop ``resolution``.

    Args:
        image: ``uint8`` ``(C, H, W)``.
        resolution: The output's side (224 gives the usual 256 → 224).

    Returns:
        ``uint8`` ``(C, resolution, resolution)``.
    """
    resized = TF.resize(image, [round(resolution / EVAL_CROP_FRACTION)], antialias=True)
    return TF.center_crop(resized, [resolution, resolution])


# ------------------------------------------------------------------------------------ loading


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


@dataclass(frozen=True)
class BatchKeys:
    """What a loader worker gets for one batch of sharded data: the batch's ``(index, step)`` keys
    and, when known, the keys of the batch the same worker gets next (fetched ahead)."""

    keys: list[tuple[int, int]]
    upcoming: list[tuple[int, int]] | None = None


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


class _LookAhead(Sampler):
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


class _TrainBatchSampler(Sampler):
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


class _EvalBatchSampler(Sampler):
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
    sampler = _TrainBatchSampler(
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
    sampler = _EvalBatchSampler(indices, batch_size=int(batch_size), rank=int(rank), world=world)
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
        sampler=_LookAhead(sampler, num_workers) if batched else None,
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
