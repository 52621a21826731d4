"""Artifact URIs: local paths (and, later, ``gs://bucket/key``).

Every stage reads and writes through these functions. Writes land whole or not at all: a local file
is written under a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "join",
    "exists",
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "read_json",
    "write_json",
    "save_torch",
    "load_torch",
    "open_write",
    "local_copy",
]


def join(uri: str, *parts: str) -> str:
    """``join("gs://b/run", "ckpt", "e1.pt")`` → ``"gs://b/run/ckpt/e1.pt"``; paths likewise."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    return Path(uri).exists()


def read_bytes(uri: str) -> bytes:
    return Path(uri).read_bytes()


@contextlib.contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """A binary file object whose content appears at ``uri`` only when the block ends cleanly."""
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    with open_write(uri) as f:
        f.write(data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, uri: str) -> None:
    with open_write(uri) as f:
        torch.save(obj, f)


def load_torch(uri: str, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(io.BytesIO(read_bytes(uri)), map_location=map_location, weights_only=False)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding the file or folder at ``uri`` (the path itself for local URIs)."""
    path = Path(uri)
    if not path.exists():
        raise FileNotFoundError(f"{uri!r} does not exist")
    yield path
