"""The index of a class-folder image tree: which image files one part holds, and their labels.

:class:`ImageFolderIndex` lists a class-folder tree ``root/train/<class>/*.{jpg,jpeg,png}`` (and
optionally ``root/test/<class>/...``, or ``val/`` or ``validation/``, looked for in that order),
local or in an object store, with the same rules as :mod:`kshot.data.datasets`: classes are the
train part's subfolders sorted by name, and files are taken in name order within each class. Its
fingerprint ties a split to the listing it was made on. The streaming loader
(:mod:`kshot.data.stream`) reads the images it lists; ``kshot data shard`` packs them into shards
(:mod:`kshot.data.shards`), whose index takes this one's place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kshot import storage
from kshot.data.datasets import IMAGE_SUFFIXES, PARTS, TEST_FOLDER_NAMES

__all__ = ["ImageFolderIndex"]


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
