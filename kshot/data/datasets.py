"""Image classification datasets, decoded once into whole ``uint8`` tensors.

Read one part (``"train"`` or ``"test"``) of a dataset with :func:`load_dataset`: an
:class:`ImageDataset` holds all its images as one ``(N, C, H, W)`` ``uint8`` tensor and their
labels. The layout is detected from the URI and the folder content:

* ``"digits"``: scikit-learn's 8x8 handwritten digits (ships inside scikit-learn; 1,797 images,
  1 channel, 10 classes). It has no test part.
* CIFAR-10 (``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``) and
  CIFAR-100 (``cifar-100-python``: ``train``, ``test``, fine labels) in their python-pickle layout,
  given that folder or its parent.
* ImageNet16-120 in NAS-Bench-201's pickled layout (``train_data_batch_1`` ..
  ``train_data_batch_10``, ``val_data``; labels 1-based over 1,000 classes, of which the first 120
  are kept), given that folder or its parent ``ImageNet16`` / ``ImageNet16-120``.
* Parquet in the Hugging Face ``datasets`` export layout (column ``image`` a struct
  ``{bytes, path}`` of encoded JPEG/PNG files, column ``label`` an integer): a ``.parquet`` file
  (the train part) or a folder (or its ``data/`` subfolder) with ``train.parquet`` /
  ``train-*.parquet`` and optionally ``test.parquet`` / ``test-*.parquet``. The number of classes
  comes from the schema metadata ``label_names`` (comma-separated) or the Hugging Face
  ``ClassLabel`` names, else from the largest label.
* Class-folder image trees: ``root/train/<class>/*.{jpg,jpeg,png}`` and optionally
  ``root/test/<class>/...`` (or ``val/`` or ``validation/``, looked for in that order); classes are
  the train part's subfolders sorted by name.

Every URI goes through :func:`kshot.storage.local_copy`, so object-store URIs work
wherever storage supports them. Pickles are read with an unpickler that only builds numpy arrays, lists, dicts and
strings, so a crafted file cannot run code. Decoded parts are cached in memory per
``(uri, part, resolution)``; callers must not modify the returned tensors in place.

One idea, though over 500 lines: a dataset part in memory. The layout readers are short (under 70
lines each) and are not used alone: they share among them the layout detection, the label checks,
the image decoding and the resize, and each returns the same :class:`ImageDataset`. Datasets too
large for memory stream instead (:mod:`kshot.data.stream`).
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from kshot import storage

__all__ = [
    "DIGITS_URI",
    "PARTS",
    "ACCEPTED_LAYOUTS",
    "ImageDataset",
    "load_dataset",
    "channel_stats",
]

DIGITS_URI = "digits"
PARTS = ("train", "test")
ACCEPTED_LAYOUTS = (
    f'"{DIGITS_URI}" (scikit-learn\'s 8x8 digits)',
    "a CIFAR-10 folder cifar-10-batches-py (data_batch_1..5, test_batch) or its parent",
    "a CIFAR-100 folder cifar-100-python (train, test) or its parent",
    "an ImageNet16-120 folder (train_data_batch_1..10, val_data) or its parent ImageNet16",
    "a .parquet file or a folder with train.parquet / train-*.parquet (Hugging Face image export)",
    "a class-folder tree root/train/<class>/*.jpg|jpeg|png (optional root/test or root/val)",
)

_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
_IMAGENET16_TRAIN_FILES = tuple(f"train_data_batch_{index}" for index in range(1, 11))
_IMAGENET16_CLASSES = 120
_IMAGENET16_ALL_CLASSES = 1000
_PICKLE_SUBFOLDERS = ("cifar-10-batches-py", "cifar-100-python", "ImageNet16", "ImageNet16-120")
TEST_FOLDER_NAMES = ("test", "val", "validation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_GRAYSCALE_MODES = ("1", "L", "LA")
_STATS_CHUNK = 4096


@dataclass
class ImageDataset:
    """One part of an image classification dataset, held whole in memory.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``[0, num_classes)``.
        num_classes: The number of classes of the dataset (not only those present in this part).
        name: A short name of the dataset, used in messages and reports.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"dataset {self.name!r}: images must be a uint8 tensor (N, C, H, W), got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                f"dataset {self.name!r}: labels must be an int64 tensor (N,), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"dataset {self.name!r}: {self.images.shape[0]} images but "
                f"{self.labels.shape[0]} labels"
            )
        if self.labels.numel() == 0:
            raise ValueError(f"dataset {self.name!r} has no images")
        if self.num_classes < 1:
            raise ValueError(
                f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}"
            )
        _check_labels(self.labels.numpy(), self.num_classes, f"dataset {self.name!r}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_dataset(
    uri: str, part: str = "train", *, resolution: int | None = None
) -> ImageDataset | None:
    """Load one part of the dataset at ``uri`` (see the module docstring for the layouts).

    Args:
        uri: ``"digits"``, a local path, or a ``gs://``, ``s3://`` or ``minio://`` URI.
        part: ``"train"`` or ``"test"``.
        resolution: If given, every image is resized to ``resolution x resolution`` (bilinear);
            needed for class-folder trees whose images differ in size.

    Returns:
        The dataset part, or ``None`` when the dataset has no test part (``part="test"`` only).

    Raises:
        FileNotFoundError: ``uri`` or a file its layout requires does not exist.
        ValueError: Unknown layout, malformed content, labels out of range, images of different
            sizes, or a bad ``part`` / ``resolution``; the message names the URI or the file.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r} (dataset {uri!r})")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
    ):
        raise ValueError(f"resolution must be a positive int or None, got {resolution!r} ({uri!r})")
    return _load_cached(uri, part, resolution)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of ``uint8`` images, in 0..1 units.

    Args:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.

    Returns:
        ``(mean, std)``, each a list of ``C`` floats.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(
            f"channel_stats needs a non-empty uint8 tensor (N, C, H, W), got {images.dtype} "
            f"of shape {tuple(images.shape)}"
        )
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_squares / count - mean.square()).clamp_min(0.0).sqrt()
    return mean.tolist(), std.tolist()


@functools.lru_cache(maxsize=8)
def _load_cached(uri: str, part: str, resolution: int | None) -> ImageDataset | None:
    if uri == DIGITS_URI:
        dataset = _load_digits(part)
    else:
        with storage.local_copy(uri) as path:
            dataset = _load_local(Path(path), uri, part, resolution)
    if dataset is not None and resolution is not None:
        dataset.images = _resize_tensor(dataset.images, resolution)
    return dataset


def _load_local(path: Path, uri: str, part: str, resolution: int | None) -> ImageDataset | None:
    if path.is_file():
        if path.suffix == ".parquet":
            return _load_parquet([path], uri, resolution) if part == "train" else None
        raise _unknown_layout(uri)
    for folder in (path, *(path / name for name in _PICKLE_SUBFOLDERS)):
        if (folder / _CIFAR10_TRAIN_FILES[0]).is_file():
            return _load_cifar(
                folder,
                part,
                train_files=_CIFAR10_TRAIN_FILES,
                test_file="test_batch",
                label_key="labels",
                num_classes=10,
                name="cifar10",
            )
        if (folder / "train").is_file():
            return _load_cifar(
                folder,
                part,
                train_files=("train",),
                test_file="test",
                label_key="fine_labels",
                num_classes=100,
                name="cifar100",
            )
        if (folder / _IMAGENET16_TRAIN_FILES[0]).is_file():
            return _load_imagenet16(folder, part)
    for folder in (path, path / "data"):
        train_files = _parquet_part_files(folder, "train")
        if train_files:
            test_files = _parquet_part_files(folder, "test")
            files = train_files if part == "train" else test_files
            return _load_parquet(files, uri, resolution) if files else None
    if (path / "train").is_dir():
        return _load_class_folders(path, uri, part, resolution)
    raise _unknown_layout(uri)


def _unknown_layout(uri: str) -> ValueError:
    accepted = "\n  ".join(ACCEPTED_LAYOUTS)
    return ValueError(f"unknown dataset layout at {uri!r}; accepted layouts:\n  {accepted}")


def _uri_name(uri: str) -> str:
    """A dataset name from its URI: the folder name, or the parquet file's stem or folder."""
    path = PurePosixPath(uri.rstrip("/"))
    if path.suffix == ".parquet":
        return path.parent.name if path.stem.startswith(PARTS) else path.stem
    return path.name


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise ValueError(f"{where}: label {bad} is outside [0, {num_classes})")


def _load_digits(part: str) -> ImageDataset | None:
    if part != "train":
        return None
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageDataset(
        images=torch.from_numpy(pixels[:, None]).contiguous(),
        labels=torch.from_numpy(digits.target.astype(np.int64)),
        num_classes=10,
        name=DIGITS_URI,
    )


# --- pickled layouts (CIFAR-10, CIFAR-100, ImageNet16-120) -------------------------------------


def _pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a dataset pickle may reference: what numpy arrays are rebuilt from."""
    reconstruct = np.zeros(1, np.uint8).__reduce__()[0]
    from_buffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
    scalar = np.uint8(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for function in (reconstruct, from_buffer, scalar):
        leaf = function.__module__.rsplit(".", 1)[-1]
        for package in ("numpy.core", "numpy._core"):
            allowed[(f"{package}.{leaf}", function.__name__)] = function
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those that rebuild numpy arrays."""

    allowed = _pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a dataset pickle"
            )
        return self.allowed[(module, name)]


def _read_pickle(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            content = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{file}: not a readable dataset pickle ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{file}: expected a pickled dict, got {type(content).__name__}")
    return {
        key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()
    }


def _read_pickle_batch(file: Path, label_key: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, side, side)`` uint8 and labels ``(N,)`` int64 of one pickled batch."""
    content = _read_pickle(file)
    missing = sorted({"data", label_key} - content.keys())
    if missing:
        raise ValueError(f"{file}: missing keys {missing}; has {sorted(map(str, content.keys()))}")
    data = np.asarray(content["data"])
    labels = np.asarray(content[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise ValueError(
            f"{file}: 'data' must be uint8 of shape (N, {3 * side * side}), got {data.dtype} "
            f"of shape {data.shape}"
        )
    if (
        labels.ndim != 1
        or labels.shape[0] != data.shape[0]
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            f"{file}: {label_key!r} must hold {data.shape[0]} integer labels, got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    return data.reshape(-1, 3, side, side), labels.astype(np.int64)


def _load_cifar(
    folder: Path,
    part: str,
    *,
    train_files: Sequence[str],
    test_file: str,
    label_key: str,
    num_classes: int,
    name: str,
) -> ImageDataset:
    files = [folder / file_name for file_name in (train_files if part == "train" else [test_file])]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{name} file {str(file)!r} does not exist")
    images, labels = [], []
    for file in files:
        batch_images, batch_labels = _read_pickle_batch(file, label_key, side=32)
        _check_labels(batch_labels, num_classes, f"{file} ({label_key!r})")
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageDataset(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        num_classes=num_classes,
        name=name,
    )


def _load_imagenet16(folder: Path, part: str) -> ImageDataset:
    files = [
        folder / name for name in (_IMAGENET16_TRAIN_FILES if part == "train" else ["val_data"])
    ]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"ImageNet16 file {str(file)!r} does not exist")
    images, labels = [], []
    for file in files:
        batch_images, batch_labels = _read_pickle_batch(file, "labels", side=16)
        if batch_labels.size and (
            batch_labels.min() < 1 or batch_labels.max() > _IMAGENET16_ALL_CLASSES
        ):
            bad = batch_labels[(batch_labels < 1) | (batch_labels > _IMAGENET16_ALL_CLASSES)][0]
            raise ValueError(f"{file}: label {bad} is outside 1..{_IMAGENET16_ALL_CLASSES}")
        keep = batch_labels <= _IMAGENET16_CLASSES
        images.append(batch_images[keep])
        labels.append(batch_labels[keep] - 1)
    return ImageDataset(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        num_classes=_IMAGENET16_CLASSES,
        name="imagenet16-120",
    )


# --- encoded images (parquet, class folders) ----------------------------------------------------


def _decode_image(source: bytes | Path, resolution: int | None) -> np.ndarray:
    """One image file as an ``(H, W, C)`` uint8 array, C = 1 for grayscale, else 3."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        mode = "L" if image.mode in _GRAYSCALE_MODES else "RGB"
        converted = image if image.mode == mode else image.convert(mode)
        if resolution is not None:
            converted = converted.resize((resolution, resolution), Image.Resampling.BILINEAR)
        pixels = np.asarray(converted)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _decode_all(
    sources: Sequence[bytes | Path], describe: Callable[[int], str], resolution: int | None
) -> torch.Tensor:
    """Decode every image into one ``(N, C, H, W)`` uint8 tensor.

    All images must have the same height and width; grayscale images join colour ones as RGB.
    ``describe(i)`` names image ``i`` in error messages. A plain loop: threads do not speed up
    Pillow on small images (the per-image Python overhead holds the GIL).
    """
    decoded = []
    for index, source in enumerate(sources):
        try:
            decoded.append(_decode_image(source, resolution))
        except OSError as error:
            raise ValueError(f"cannot decode image {describe(index)}: {error}") from error
    height, width = decoded[0].shape[:2]
    for index, pixels in enumerate(decoded):
        if pixels.shape[:2] != (height, width):
            raise ValueError(
                f"image {describe(index)} is {pixels.shape[1]}x{pixels.shape[0]} but "
                f"{describe(0)} is {width}x{height}; all images must have the same size "
                f"(set config key 'resolution' to resize them)"
            )
    channels = max(pixels.shape[2] for pixels in decoded)
    stacked = np.empty((len(decoded), height, width, channels), dtype=np.uint8)
    for index, pixels in enumerate(decoded):
        stacked[index] = pixels
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def _parquet_part_files(folder: Path, part: str) -> list[Path]:
    single = folder / f"{part}.parquet"
    if single.is_file():
        return [single]
    return sorted(folder.glob(f"{part}-*.parquet")) if folder.is_dir() else []


def _parquet_label_names(schema: pa.Schema) -> list[str] | None:
    metadata = schema.metadata or {}
    if b"label_names" in metadata:
        return metadata[b"label_names"].decode().split(",")
    if b"huggingface" in metadata:
        features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
        label = features.get("label", {})
        if label.get("_type") == "ClassLabel" and label.get("names"):
            return list(label["names"])
    return None


def _check_parquet_schema(schema: pa.Schema, file: Path) -> None:
    image_type = schema.field("image").type if "image" in schema.names else None
    label_type = schema.field("label").type if "label" in schema.names else None
    if (
        image_type is None
        or not pa.types.is_struct(image_type)
        or image_type.get_field_index("bytes") < 0
        or label_type is None
        or not pa.types.is_integer(label_type)
    ):
        raise ValueError(
            f"{file}: expected columns image: struct<bytes, path> and label: int "
            f"(Hugging Face image export), got {schema.remove_metadata()}"
        )


def _load_parquet(files: Sequence[Path], uri: str, resolution: int | None) -> ImageDataset:
    for file in files:
        _check_parquet_schema(pq.read_schema(file), file)
    label_names = _parquet_label_names(pq.read_schema(files[0]))
    encoded: list[bytes] = []
    labels: list[np.ndarray] = []
    row_sources: list[tuple[Path, int]] = []
    for file in files:
        table = pq.read_table(file, columns=["image", "label"])
        column = table.column("image").combine_chunks()
        file_bytes = column.field("bytes").to_pylist()
        if None in file_bytes:
            row = file_bytes.index(None)
            raise ValueError(f"{file}: row {row} has no image bytes")
        if table.column("label").null_count:
            raise ValueError(f"{file}: column 'label' has missing values")
        encoded.extend(file_bytes)
        labels.append(table.column("label").to_numpy().astype(np.int64))
        row_sources.extend((file, row) for row in range(len(file_bytes)))
    all_labels = np.concatenate(labels)
    if all_labels.size == 0:
        raise ValueError(f"{uri!r}: parquet files {[str(file) for file in files]} have no rows")
    num_classes = len(label_names) if label_names else int(all_labels.max()) + 1
    _check_labels(all_labels, num_classes, f"{uri!r} (parquet column 'label')")

    def describe(index: int) -> str:
        file, row = row_sources[index]
        return f"{file} row {row}"

    return ImageDataset(
        images=_decode_all(encoded, describe, resolution),
        labels=torch.from_numpy(all_labels),
        num_classes=num_classes,
        name=_uri_name(uri),
    )


def _load_class_folders(
    root: Path, uri: str, part: str, resolution: int | None
) -> ImageDataset | None:
    classes = sorted(child.name for child in (root / "train").iterdir() if child.is_dir())
    if not classes:
        raise ValueError(f"{uri!r}: {root / 'train'} has no class folders")
    if part == "train":
        part_folder = root / "train"
    else:
        candidates = [root / name for name in TEST_FOLDER_NAMES if (root / name).is_dir()]
        if not candidates:
            return None
        part_folder = candidates[0]
    unknown = sorted(
        child.name
        for child in part_folder.iterdir()
        if child.is_dir() and child.name not in classes
    )
    if unknown:
        raise ValueError(f"{uri!r}: class folders {unknown} in {part_folder} are not in train/")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_name in enumerate(classes):
        class_folder = part_folder / class_name
        if not class_folder.is_dir():
            continue
        class_files = sorted(
            file for file in class_folder.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES
        )
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    if not files:
        raise ValueError(f"{uri!r}: no {'/'.join(IMAGE_SUFFIXES)} images under {part_folder}")
    return ImageDataset(
        images=_decode_all(files, lambda index: str(files[index]), resolution),
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(classes),
        name=_uri_name(uri),
    )


def _resize_tensor(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinearly resize ``uint8`` images to ``resolution x resolution`` (no-op if already so)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    resized = [
        F.interpolate(
            images[start : start + _STATS_CHUNK].float(),
            size=(resolution, resolution),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        for start in range(0, images.shape[0], _STATS_CHUNK)
    ]
    return torch.cat(resized)
