"""What an artifact URI names, parsed once: a local path or an object (``gs://``, ``s3://``,
``minio://``).

A :class:`Uri` is made where an artifact enters (the command line, the KFP runtime, a stage's
inputs and outputs) and carried down; every storage verb takes one (or text, which it parses once).
This module loads no storage client and no torch, so code that only tells URIs apart (``kshot
pipeline run`` checking a pipeline root) stays light.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["Uri", "REMOTE_SCHEMES", "remote_scheme"]

REMOTE_SCHEMES = {"gs": "GCS", "s3": "S3", "minio": "MinIO"}
"""The object stores kshot reaches: URI scheme → the store's name in messages."""

_FORMS = ", ".join(f"{scheme}://bucket/key" for scheme in REMOTE_SCHEMES)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_GCS_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")


@dataclass(frozen=True)
class Uri:
    """A parsed artifact URI.

    Attributes:
        scheme: ``"gs"``, ``"s3"`` or ``"minio"`` for an object store; ``""`` for a local path.
        bucket: the bucket (``""`` for a local path).
        key: the object key or folder inside the bucket (``""`` for the whole bucket), or the
            local path as given.
    """

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str | Uri) -> Uri:
        """The :class:`Uri` that ``text`` names (a :class:`Uri` is returned as it is).

        Raises:
            ValueError: ``text`` is empty, of another scheme (``http://``), malformed (``gs:/b/x``,
                ``s3:bucket``, no bucket, a bucket name the store refuses, a line break, or
                ``.``, ``..`` and empty segments, which stores keep literally).
        """
        if isinstance(text, Uri):
            return text
        if not text:
            raise ValueError(f"empty URI: expected a local path, {_FORMS}")
        scheme, sep, rest = text.partition("://")
        if sep and scheme in REMOTE_SCHEMES:
            bucket, _, key = rest.partition("/")
            _check_remote(text, scheme, bucket, key)
            return cls(scheme, bucket, key)
        found = _SCHEME_RE.match(text)
        if found is not None:
            name, after = found.group(1), text[found.end() :]
            if after.startswith("//"):
                raise ValueError(
                    f"unsupported URI scheme {name!r} in {text!r}: use a local path, {_FORMS}"
                )
            if name in REMOTE_SCHEMES or after.startswith("/"):
                raise ValueError(
                    f"malformed URI {text!r}: the scheme {name + ':'!r} must be followed by '//' "
                    f"(e.g. {name}://bucket/key); use a local path, {_FORMS}"
                )
        return cls("", "", text)

    @property
    def is_remote(self) -> bool:
        """Whether this names an object store rather than a local path."""
        return bool(self.scheme)

    @property
    def store(self) -> str:
        """The store's name for messages: ``GCS``, ``S3``, ``MinIO`` or ``local``."""
        return REMOTE_SCHEMES.get(self.scheme, "local")

    @property
    def path(self) -> Path:
        """The local path (only for local URIs)."""
        if self.is_remote:
            raise ValueError(f"{self} is in an object store, not a local path")
        return Path(self.key)

    @property
    def bucket_uri(self) -> Uri:
        """The whole bucket (``gs://bucket``)."""
        return Uri(self.scheme, self.bucket, "")

    @property
    def is_bucket(self) -> bool:
        """Whether this names a whole bucket (``gs://bucket`` or ``gs://bucket/``)."""
        return self.is_remote and not self.key.strip("/")

    @property
    def folder_prefix(self) -> str:
        """The listing prefix of everything inside this folder (``""`` for the whole bucket)."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    @property
    def name(self) -> str:
        """The last path segment (the bucket's name for a whole bucket)."""
        return PurePosixPath(self.key).name or self.bucket

    def object_key(self) -> str:
        """The key of the one object this names.

        Raises:
            ValueError: it names a bucket or a folder (ends in ``/``).
        """
        if not self.key or self.key.endswith("/"):
            raise ValueError(
                f"URI {str(self)!r} names a bucket or folder, not an object: expected "
                f"{self.scheme}://bucket/key"
            )
        return self.key

    def join(self, *parts: str) -> Uri:
        """``Uri.parse("gs://b/run").join("ckpt", "e1.pt")`` names ``gs://b/run/ckpt/e1.pt``;
        local paths likewise."""
        key = "/".join([self.key.rstrip("/"), *(p.strip("/") for p in parts)])
        if self.is_remote:
            if not self.key.strip("/"):
                key = key.lstrip("/")
            _check_key(f"{self.scheme}://{self.bucket}/{key}", self.scheme, key)
        return Uri(self.scheme, self.bucket, key)

    def relative_to(self, folder: Uri) -> str:
        """This URI's path below ``folder`` (``a/b.pt``), for one that lies inside it."""
        prefix = folder.folder_prefix if folder.is_remote else folder.key.rstrip("/") + "/"
        if self.scheme != folder.scheme or self.bucket != folder.bucket:
            raise ValueError(f"{self} is not inside {folder}")
        if not self.key.startswith(prefix):
            raise ValueError(f"{self} is not inside {folder}")
        return self.key[len(prefix) :]

    def canonical(self) -> str:
        """The location spelt one way, to compare two URIs: a local path made absolute (``..``
        resolved), an object or folder without its trailing ``/``."""
        if not self.is_remote:
            return posixpath.abspath(self.key)
        return str(Uri(self.scheme, self.bucket, self.key.rstrip("/")))

    def __str__(self) -> str:
        if not self.is_remote:
            return self.key
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")


def remote_scheme(text: str) -> str:
    """The object store's scheme that ``text`` starts with (``gs``, ``s3``, ``minio``), else
    ``""``; no validation (for text that may not be a URI at all, such as a config value)."""
    scheme, sep, _ = text.partition("://")
    return scheme if sep and scheme in REMOTE_SCHEMES else ""


def _check_remote(text: str, scheme: str, bucket: str, key: str) -> None:
    store = REMOTE_SCHEMES[scheme]
    if scheme == "gs":
        pattern, max_length, allowed = _GCS_BUCKET_RE, 222, "'-', '_' and '.'"
    else:
        pattern, max_length, allowed = _S3_BUCKET_RE, 63, "'-' and '.'"
    if not bucket:
        raise ValueError(f"malformed {store} URI {text!r}: no bucket name after {scheme}://")
    if not (3 <= len(bucket) <= max_length and pattern.match(bucket)):
        raise ValueError(
            f"malformed {store} URI {text!r}: bucket name {bucket!r} must be 3-{max_length} "
            f"characters of lowercase letters, digits, {allowed}, starting and ending with a "
            "letter or digit"
        )
    _check_key(text, scheme, key)


def _check_key(text: str, scheme: str, key: str) -> None:
    store = REMOTE_SCHEMES[scheme]
    if "\n" in key or "\r" in key:
        raise ValueError(f"malformed {store} URI {text!r}: object names cannot contain line breaks")
    # Object stores keep "a/./x" and "a//x" literally, as other objects than "a/x": refuse them.
    segments = key.split("/")
    if any(part in (".", "..") for part in segments) or "" in segments[:-1]:
        raise ValueError(
            f"malformed {store} URI {text!r}: empty, '.' and '..' segments are not resolved by "
            f"{store} (they would be stored literally); write the path without them"
        )
