"""Sharded image datasets: a class-folder tree written once as a few large tar files plus an index.

Reading ImageNet's class folders from an object store costs one request per image and a listing of
the whole tree (about 1,300 pages) in every process before its first batch. A sharded dataset is
made once (``kshot data shard SRC DEST``) and then read with one request per run of neighbouring
images and one index object per process:

* **Shards** are POSIX tar files in the WebDataset layout (``<key>.jpg`` followed by ``<key>.cls``,
  the class position as text), so ``tar``, ``webdataset`` and ``wids`` read them too. Each part's
  images are written in a seeded shuffled order (``seed``, default 0), so every shard mixes all
  classes and a run of neighbours in a shard is a random sample of the part. The tar headers are
  fixed (no times, owners or modes from the source), so the same tree and seed give the same bytes.
* **The index** is ``index.npz`` (per image of each part: shard, byte offset and size of its
  encoded file, label) and ``index.json`` (classes, each shard's name, size and SHA-256, the
  ``index.npz`` SHA-256). ``index.json`` is written last: a dataset without it is incomplete.
  Its SHA-256 is the dataset's digest (:meth:`ShardIndex.fingerprint`), which the split records and
  the run identity includes, so a run never reads other images than its split was made on.

Images are numbered in shard order: image ``i`` of a part is the ``i``-th ``.jpg`` member of its
shards taken in order. :func:`read_plan` groups the images a batch needs into ranged reads, merging
neighbours of one shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from kshot import storage

__all__ = [
    "INDEX_NAME",
    "ARRAYS_NAME",
    "FORMAT",
    "DEFAULT_SHARD_BYTES",
    "MERGE_GAP_BYTES",
    "ShardIndex",
    "Read",
    "is_sharded",
    "read_plan",
    "write_shards",
]

INDEX_NAME = "index.json"
ARRAYS_NAME = "index.npz"
FORMAT = "kshot-shards/1"
DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
# Two images of one shard are read with one request when at most this many bytes lie between them:
# at an object store's tens of milliseconds per request and ~100 MB/s per stream, reading 1 MiB
# more costs less than another request.
MERGE_GAP_BYTES = 1024 * 1024
_MAX_READ_BYTES = 64 * 1024 * 1024  # one ranged read never spans more
_SOURCE_THREADS = 16  # concurrent source reads while writing shards


@dataclass
class ShardIndex:
    """One part (``train`` or ``test``) of a sharded dataset.

    Attributes:
        uri: The dataset's root (holding ``index.json``).
        part: ``"train"`` or ``"test"``.
        shards: URIs of the part's shards, in order.
        shard_of: ``int32`` ``(N,)``: each image's position in ``shards``.
        offsets: ``int64`` ``(N,)``: byte offset of each image's encoded file in its shard.
        sizes: ``int64`` ``(N,)``: its size in bytes.
        labels: ``int64`` ``(N,)``: each image's position in ``classes``.
        classes: The class names, sorted (the source tree's train folders).
        digest: SHA-256 of ``index.json``.
    """

    uri: str
    part: str
    shards: list[str]
    shard_of: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    classes: list[str]
    digest: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """The dataset's digest (the SHA-256 of its ``index.json``): what a split records."""
        return self.digest

    def name(self, position: int) -> str:
        """Where image ``position`` lives, for error messages."""
        return f"{self.shards[self.shard_of[position]]} (image {position} of part {self.part})"

    @classmethod
    def load(cls, uri: str, part: str = "train") -> ShardIndex:
        """Read the index of the sharded dataset at ``uri``: two objects, no listing.

        Raises:
            FileNotFoundError: ``uri`` holds no ``index.json``, or ``part="test"`` and the dataset
                has no test part.
            ValueError: the index is not of this format, or ``index.npz`` is not the one
                ``index.json`` names (the message names the URI).
        """
        index_uri = storage.join(uri, INDEX_NAME)
        raw = storage.read_bytes(index_uri)
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{index_uri} is not a sharded dataset's index: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"{index_uri}: format {found!r}, expected {FORMAT!r}")
        if part not in doc["parts"]:
            raise FileNotFoundError(
                f"sharded dataset {uri!r} has no {part!r} part (it has {sorted(doc['parts'])})"
            )
        arrays_uri = storage.join(uri, doc["arrays"]["name"])
        blob = storage.read_bytes(arrays_uri)
        if hashlib.sha256(blob).hexdigest() != doc["arrays"]["sha256"]:
            raise ValueError(
                f"{arrays_uri} does not match the SHA-256 that {index_uri} records: the dataset "
                "was changed after it was written; write it again with `kshot data shard`"
            )
        with np.load(io.BytesIO(blob)) as arrays:
            shard_of, offsets = arrays[f"{part}_shard"], arrays[f"{part}_offset"]
            sizes, labels = arrays[f"{part}_size"], arrays[f"{part}_label"]
        return cls(
            uri=uri,
            part=part,
            shards=[storage.join(uri, s["name"]) for s in doc["parts"][part]["shards"]],
            shard_of=shard_of.astype(np.int32),
            offsets=offsets.astype(np.int64),
            sizes=sizes.astype(np.int64),
            labels=labels.astype(np.int64),
            classes=list(doc["classes"]),
            digest=hashlib.sha256(raw).hexdigest(),
        )


def is_sharded(uri: str) -> bool:
    """Whether ``uri`` is a sharded dataset (holds ``index.json``): one request."""
    if uri.endswith(".json"):
        return False
    return storage.exists(storage.join(uri, INDEX_NAME))


@dataclass(frozen=True)
class Read:
    """One ranged read: ``length`` bytes of ``shard`` from ``start``, holding ``members``.

    ``members`` are ``(slot, offset, size)``: the image at ``slot`` of the requested list lies at
    ``offset`` bytes into this read's data.
    """

    shard: str
    start: int
    length: int
    members: tuple[tuple[int, int, int], ...]


def read_plan(index: ShardIndex, positions: Sequence[int] | np.ndarray) -> list[Read]:
    """The ranged reads that fetch images ``positions`` of ``index``: one per shard and run of
    images no more than :data:`MERGE_GAP_BYTES` apart (and at most 64 MiB long)."""
    positions = np.asarray(positions, dtype=np.int64)
    shards, offsets = index.shard_of[positions], index.offsets[positions]
    order = np.lexsort((offsets, shards))
    reads: list[Read] = []
    members: list[tuple[int, int, int]] = []
    shard = start = end = -1

    def close() -> None:
        if members:
            reads.append(
                Read(
                    index.shards[shard],
                    start,
                    end - start,
                    tuple((slot, off - start, size) for slot, off, size in members),
                )
            )

    for slot in order.tolist():
        s, off = int(shards[slot]), int(offsets[slot])
        size = int(index.sizes[positions[slot]])
        if s != shard or off - end > MERGE_GAP_BYTES or off + size - start > _MAX_READ_BYTES:
            close()
            members, shard, start = [], s, off
        members.append((slot, off, size))
        end = max(end, off + size) if members[1:] else off + size
    close()
    return reads


# ------------------------------------------------------------------------------------ writer


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _ShardWriter:
    """Writes one part's shards to a local folder, then uploads each to ``dest`` when full."""

    def __init__(self, dest: str, part: str, shard_bytes: int, workdir: str) -> None:
        self.dest, self.part, self.shard_bytes, self.workdir = dest, part, shard_bytes, workdir
        self.shards: list[dict[str, object]] = []
        self._file: io.BufferedWriter | None = None
        self._digest = hashlib.sha256()
        self._written = 0
        self._images = 0

    def add(self, key: str, suffix: str, data: bytes, label: int) -> tuple[int, int]:
        """Append an image and its label; returns ``(shard position, data offset)``."""
        if self._file is not None and self._written + len(data) > self.shard_bytes:
            self._finish()
        if self._file is None:
            path = os.path.join(self.workdir, f"{self.part}.tar")
            self._file = open(path, "wb")  # noqa: SIM115 - closed in _finish
            self._digest, self._written, self._images = hashlib.sha256(), 0, 0
        offset = self._append(_member(f"{key}{suffix}", len(data)), data)
        label_text = str(label).encode()
        self._append(_member(f"{key}.cls", len(label_text)), label_text)
        self._images += 1
        return len(self.shards), offset

    def _append(self, info: tarfile.TarInfo, data: bytes) -> int:
        header = _header(info)
        padding = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
        offset = self._written + len(header)
        for chunk in (header, data, padding):
            self._write(chunk)
        return offset

    def _write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self._digest.update(chunk)
        self._written += len(chunk)

    def _finish(self) -> None:
        if self._file is None:
            return
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))  # the tar end-of-archive marker
        path = self._file.name
        self._file.close()
        self._file = None
        name = f"{self.part}-{len(self.shards):06d}.tar"
        with open(path, "rb") as src, storage.open_write(storage.join(self.dest, name)) as dst:
            while chunk := src.read(8 * 1024 * 1024):
                dst.write(chunk)
        os.remove(path)
        self.shards.append(
            {
                "name": name,
                "bytes": self._written,
                "sha256": self._digest.hexdigest(),
                "images": self._images,
            }
        )

    def close(self) -> list[dict[str, object]]:
        self._finish()
        return self.shards


def write_shards(
    source: str,
    dest: str,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> ShardIndex:
    """Write the class-folder tree at ``source`` as a sharded dataset at ``dest``.

    Args:
        source: A class-folder tree, ``train/<class>/*.jpg`` (and optionally ``test/``, ``val/``
            or ``validation/``), local or in a bucket.
        dest: Where to write the shards and the index: a local folder or a bucket prefix.
        shard_bytes: A shard is closed before its images pass this many bytes (a single larger
            image gets a shard of its own).
        seed: Seed of the order in which each part's images are written.
        progress: Called as ``progress(part, done, total)`` every few hundred images.

    Returns:
        The train part's index, as :meth:`ShardIndex.load` reads it back.

    Raises:
        ValueError: ``source`` is not a class-folder tree, ``dest`` already holds a sharded
            dataset, or ``shard_bytes`` is not positive (each message names the value).
    """
    from kshot.data.folder_index import ImageFolderIndex  # the tree's scanning rules live there

    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ValueError(f"shard_bytes must be a positive int, got {shard_bytes!r}")
    storage.check_writable(dest, folder=True)
    if storage.exists(storage.join(dest, INDEX_NAME)):
        raise ValueError(f"{dest!r} already holds a sharded dataset ({INDEX_NAME}); pick another")
    train = ImageFolderIndex.scan(source, "train")
    parts = {"train": train}
    with contextlib.suppress(FileNotFoundError):
        parts["test"] = ImageFolderIndex.scan(source, "test", classes=train.classes)
    arrays: dict[str, np.ndarray] = {}
    part_docs: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="kshot-shards-") as workdir:
        for part, tree in parts.items():
            order = np.random.default_rng(seed).permutation(len(tree))
            writer = _ShardWriter(dest, part, shard_bytes, workdir)
            shard_of = np.empty(len(tree), dtype=np.int32)
            offsets = np.empty(len(tree), dtype=np.int64)
            sizes = np.empty(len(tree), dtype=np.int64)
            files = [tree.files[i] for i in order]
            for position, data in enumerate(_read_all(files)):
                source_name = files[position]
                if not data:
                    raise ValueError(f"image {source_name} is empty")
                suffix = os.path.splitext(source_name)[1].lower()
                shard_of[position], offsets[position] = writer.add(
                    f"{position:09d}", suffix, data, int(tree.labels[order[position]])
                )
                sizes[position] = len(data)
                if progress is not None and (position + 1) % 500 == 0:
                    progress(part, position + 1, len(tree))
            part_docs[part] = {"images": len(tree), "shards": writer.close()}
            arrays.update(
                {
                    f"{part}_shard": shard_of,
                    f"{part}_offset": offsets,
                    f"{part}_size": sizes,
                    f"{part}_label": tree.labels[order],
                }
            )
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    blob = buffer.getvalue()
    storage.write_bytes(storage.join(dest, ARRAYS_NAME), blob)
    doc = {
        "format": FORMAT,
        "classes": train.classes,
        "seed": seed,
        "parts": part_docs,
        "arrays": {"name": ARRAYS_NAME, "sha256": hashlib.sha256(blob).hexdigest()},
    }
    storage.write_bytes(
        storage.join(dest, INDEX_NAME), json.dumps(doc, indent=1, sort_keys=True).encode()
    )
    return ShardIndex.load(dest, "train")


def _read_all(files: list[str]) -> Iterator[bytes]:
    """The bytes of ``files`` in order, read a window ahead by a thread pool."""
    window = _SOURCE_THREADS * 4

    def read(uri: str) -> bytes:
        return storage.read_bytes(uri)

    with ThreadPoolExecutor(_SOURCE_THREADS) as pool:
        for start in range(0, len(files), window):
            yield from pool.map(read, files[start : start + window])
