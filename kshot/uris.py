"""What an artifact URI names: a local path or an object store (``gs://``, ``s3://``, ``minio://``).

Kept apart from :mod:`kshot.storage` (which re-exports it) so that code that only tells URIs apart,
such as ``kshot pipeline run`` checking a pipeline root, loads no storage client and no torch.
"""

from __future__ import annotations

import re

__all__ = ["is_gcs", "is_s3", "is_minio", "is_remote", "parse_remote"]

_GCS_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")


def is_gcs(uri: str) -> bool:
    """Whether ``uri`` names Google Cloud Storage (``gs://...``); no validation beyond the prefix."""
    return uri.startswith("gs://")


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names an S3-compatible store (``s3://...``); no validation beyond the prefix."""
    return uri.startswith("s3://")


def is_minio(uri: str) -> bool:
    """Whether ``uri`` names KFP's own artifact store (``minio://...``); no validation beyond the
    prefix."""
    return uri.startswith("minio://")


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store (``gs://``, ``s3://``, ``minio://``) rather than a
    local path."""
    return is_gcs(uri) or is_s3(uri) or is_minio(uri)


def parse_remote(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/key``, ``s3://bucket/key`` or ``minio://bucket/key`` into
    ``("bucket", "key")``; the key is ``""`` for ``gs://bucket``.

    Raises:
        ValueError: ``uri`` is neither, has no bucket, or the bucket name breaks the store's rules.
    """
    if is_gcs(uri):
        store, pattern, max_length, allowed = "GCS", _GCS_BUCKET_RE, 222, "'-', '_' and '.'"
    elif is_s3(uri) or is_minio(uri):
        store = "S3" if is_s3(uri) else "MinIO"
        pattern, max_length, allowed = _S3_BUCKET_RE, 63, "'-' and '.'"
    else:
        raise ValueError(f"not a gs://, s3:// or minio:// URI: {uri!r}")
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"malformed {store} URI {uri!r}: no bucket name after {scheme}://")
    if not (3 <= len(bucket) <= max_length and pattern.match(bucket)):
        raise ValueError(
            f"malformed {store} URI {uri!r}: bucket name {bucket!r} must be 3-{max_length} "
            f"characters of lowercase letters, digits, {allowed}, starting and ending with a "
            "letter or digit"
        )
    if "\n" in key or "\r" in key:
        raise ValueError(f"malformed {store} URI {uri!r}: object names cannot contain line breaks")
    # Object stores keep "a/./x" and "a//x" literally, as other objects than "a/x": refuse them.
    segments = key.split("/")
    if any(part in (".", "..") for part in segments) or "" in segments[:-1]:
        raise ValueError(
            f"malformed {store} URI {uri!r}: empty, '.' and '..' segments are not resolved by "
            f"{store} (they would be stored literally); write the path without them"
        )
    return bucket, key
