"""Seeded train / valid (/ test) splits of a dataset's train part, and their JSON form.

The supernet is trained on ``train`` and architectures are ranked on ``valid``; both are carved out
of the dataset's train part so the official test part stays untouched. A dataset without a test part
(e.g. ``"digits"``) gets one carved out of the same pool (``carve_test=True``): the held-out share
``valid_fraction`` is then halved between ``valid`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Split", "make_split", "split_to_dict", "split_from_dict"]

_PARTS = ("train", "valid", "test")


@dataclass
class Split:
    """Disjoint, sorted ``int64`` index arrays into a dataset's train part.

    Attributes:
        train: Indices the supernet trains on.
        valid: Indices architectures are ranked on.
        test: Indices of a carved-out test set, or ``None`` when the dataset has its own test part.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray | None

    @property
    def num_images(self) -> int:
        """The number of images the split covers."""
        return sum(len(part) for part in (self.train, self.valid, self.test) if part is not None)


def make_split(
    num_images: int,
    valid_fraction: float,
    seed: int,
    carve_test: bool,
    subset: int = 0,
    held_out: int = 0,
) -> Split:
    """Shuffle ``range(num_images)`` with ``numpy.random.default_rng(seed)`` and cut it.

    ``held_out`` images (default ``round(num_images * valid_fraction)``) are held out; with
    ``carve_test`` the held-out
    images are halved between ``test`` (the smaller half) and ``valid``, else all go to ``valid``.
    The rest form ``train``. Each part is sorted.

    Args:
        num_images: Size of the dataset's train part.
        valid_fraction: Held-out share, in ``(0, 1)``.
        seed: Seed of the shuffle; the same arguments always give the same split.
        carve_test: Whether to carve a test set (for datasets without a test part).
        subset: Split only this many images, the first of the seeded shuffle (0: all of them);
            the other images are in no part.
        held_out: Exactly this many images held out (e.g. ImageNet's 50,000); 0: use
            ``valid_fraction``.

    Returns:
        The split.

    Raises:
        ValueError: ``valid_fraction`` outside ``(0, 1)`` or too few images for non-empty parts.
    """
    if not held_out and not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    if subset < 0 or subset > num_images:
        raise ValueError(f"subset {subset} must be in [0, {num_images}] (0: all images)")
    pool = subset or num_images
    held_out = held_out or round(pool * valid_fraction)
    test_size = held_out // 2 if carve_test else 0
    valid_size = held_out - test_size
    train_size = pool - held_out
    if train_size < 1 or valid_size < 1 or (carve_test and test_size < 1):
        raise ValueError(
            f"cannot split {pool} images holding out {held_out} "
            f"(carve_test={carve_test}): gives {train_size} train, {valid_size} valid"
            + (f", {test_size} test" if carve_test else "")
            + " images; every part needs at least one"
        )
    order = np.random.default_rng(seed).permutation(num_images).astype(np.int64)
    valid = np.sort(order[:valid_size])
    test = np.sort(order[valid_size:held_out]) if carve_test else None
    train = np.sort(order[held_out:pool])
    return Split(train=train, valid=valid, test=test)


def split_to_dict(
    split: Split, dataset: str, seed: int, valid_fraction: float, num_images: int | None = None
) -> dict[str, Any]:
    """The JSON-ready form of ``split`` with the metadata it was made from.

    Args:
        split: The split.
        dataset: The dataset URI the split indexes into.
        seed: The seed given to :func:`make_split`.
        valid_fraction: The fraction given to :func:`make_split`.
        num_images: Size of the dataset's train part when the split covers a subset of it.

    Returns:
        ``{dataset, seed, valid_fraction, num_images, subset, train, valid, test}`` with index lists
        (``test`` is ``None`` when the dataset has its own test part).
    """
    return {
        "dataset": dataset,
        "seed": seed,
        "valid_fraction": valid_fraction,
        "num_images": num_images or split.num_images,
        "subset": split.num_images if num_images and num_images != split.num_images else 0,
        "train": split.train.tolist(),
        "valid": split.valid.tolist(),
        "test": None if split.test is None else split.test.tolist(),
    }


def split_from_dict(data: Mapping[str, Any], source: str, num_images: int | None = None) -> Split:
    """Rebuild a split from :func:`split_to_dict`'s form, checking it.

    Args:
        data: The mapping (e.g. parsed from the split's JSON file).
        source: Where ``data`` came from (file or URI), named in error messages.
        num_images: The size of the dataset's train part the split is used with, if known.

    Returns:
        The split.

    Raises:
        ValueError: A missing key, indices that are not integers, out of range, repeated or that do
            not cover every image, or a ``num_images`` different from the dataset's.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a split must be a JSON object, got {type(data).__name__}")
    missing = [key for key in ("num_images", *_PARTS) if key not in data]
    if missing:
        raise ValueError(f"{source}: split is missing keys {missing}")
    recorded = data["num_images"]
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1:
        raise ValueError(f"{source}: 'num_images' must be a positive int, got {recorded!r}")
    if num_images is not None and recorded != num_images:
        raise ValueError(
            f"{source}: split covers {recorded} images but the dataset's train part has {num_images}"
        )
    parts = {name: _index_array(data[name], source, name, recorded) for name in _PARTS}
    if parts["train"] is None or parts["valid"] is None:
        raise ValueError(f"{source}: 'train' and 'valid' must be index lists, not null")
    empty = [name for name in ("train", "valid") if not len(parts[name])]
    if empty:
        raise ValueError(
            f"{source}: the {' and '.join(map(repr, empty))} part{'s are' if len(empty) > 1 else ' is'}"
            " empty: a split needs images to train on and to rank paths on"
        )
    indices = np.concatenate([part for part in parts.values() if part is not None])
    counts = np.bincount(indices, minlength=recorded)
    if (counts > 1).any():
        raise ValueError(f"{source}: index {int(np.argmax(counts > 1))} is in more than one part")
    if not data.get("subset") and (counts == 0).any():
        raise ValueError(f"{source}: index {int(np.argmax(counts == 0))} is in no part")
    return Split(**parts)


def _index_array(values: Any, source: str, key: str, num_images: int) -> np.ndarray | None:
    if values is None:
        return None
    if not isinstance(values, list) or any(
        isinstance(value, bool) or not isinstance(value, int) for value in values
    ):
        raise ValueError(f"{source}: {key!r} must be a list of ints")
    out_of_range = [value for value in values if not 0 <= value < num_images]
    if out_of_range:
        raise ValueError(
            f"{source}: {key!r} holds index {out_of_range[0]}, outside [0, {num_images})"
        )
    return np.asarray(values, dtype=np.int64)
