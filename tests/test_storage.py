"""kshot.storage against a local folder and real servers: GCS (gcp-storage-emulator), S3 (moto).

Needs the fixtures of ``tests/gcs.py``, ``tests/s3.py`` and ``tests/object_stores.py`` (registered
in conftest). Tests of the object stores' guarantees take ``remote`` and run once per store.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch

from kshot import storage
from kshot.storage import gcs as gcs_store
from kshot.storage import s3 as s3_store
from tests.gcs import FlakyProxy
from tests.object_stores import Remote
from tests.s3 import direct_client


@pytest.fixture(params=["local", "gcs", "s3", "minio"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder URI to work under: a local path, or a folder in a fresh GCS, S3 or KFP (minio://)
    bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue(f"{request.param}_bucket")
    return storage.join(bucket, "root")


def _make_tree(folder: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 4, "sub/deeper/c.json": b"{}"}
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return files


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_bytes_text_json_round_trip(root: str) -> None:
    storage.write_bytes(storage.join(root, "raw.bin"), b"\x00\x01payload")
    storage.write_text(storage.join(root, "notes", "n.txt"), "héllo\n")
    storage.write_json(storage.join(root, "m.json"), {"acc": [0.5, 0.75], "arch": "0-1-2"})

    assert storage.read_bytes(storage.join(root, "raw.bin")) == b"\x00\x01payload"
    assert storage.read_text(storage.join(root, "notes/n.txt")) == "héllo\n"
    assert storage.read_json(storage.join(root, "m.json")) == {"acc": [0.5, 0.75], "arch": "0-1-2"}
    assert storage.exists(storage.join(root, "raw.bin"))
    assert storage.exists(storage.join(root, "notes"))
    assert not storage.exists(storage.join(root, "absent.bin"))


def test_overwrite_replaces_content(root: str) -> None:
    uri = storage.join(root, "x.txt")
    storage.write_text(uri, "first version, longer")
    storage.write_text(uri, "second")
    assert storage.read_text(uri) == "second"


def test_torch_round_trip(root: str) -> None:
    state = {"weight": torch.arange(12.0).reshape(3, 4), "step": 7}
    uri = storage.join(root, "ckpt", "e1.pt")
    storage.save_torch(state, uri)
    loaded = storage.load_torch(uri)
    assert loaded["step"] == 7
    assert torch.equal(loaded["weight"], state["weight"])


def test_folder_round_trip_listing_and_local_copy(root: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    files = _make_tree(source)
    run = storage.join(root, "run")
    storage.upload_dir(source, run)
    storage.write_text(storage.join(root, "run2", "other.txt"), "not inside run")

    assert storage.list_uris(run) == sorted(storage.join(run, name) for name in files)
    assert storage.list_uris(storage.join(root, "nothing-here")) == []
    assert storage.exists(run)

    with storage.local_copy(run) as copy:
        assert _read_tree(copy) == files
    with storage.local_copy(storage.join(run, "sub/b.bin")) as copy:
        assert copy.read_bytes() == files["sub/b.bin"]

    destination = tmp_path / "downloaded"
    storage.download_dir(run, destination)
    assert _read_tree(destination) == files


def test_local_copy_of_an_object_store_is_removed_after_the_block(remote: Remote) -> None:
    storage.write_text(storage.join(remote.bucket, "d", "f.txt"), "x")
    with storage.local_copy(storage.join(remote.bucket, "d")) as copy:
        assert (copy / "f.txt").read_text() == "x"
    assert not copy.exists()


def test_delete_file_and_folder(root: str) -> None:
    storage.write_text(storage.join(root, "keep.txt"), "k")
    storage.write_text(storage.join(root, "one.txt"), "1")
    storage.write_text(storage.join(root, "dir", "a.txt"), "a")
    storage.write_text(storage.join(root, "dir", "sub", "b.txt"), "b")

    storage.delete(storage.join(root, "one.txt"))
    storage.delete(storage.join(root, "dir"))

    assert storage.list_uris(root) == [storage.join(root, "keep.txt")]
    with pytest.raises(FileNotFoundError, match="one.txt"):
        storage.delete(storage.join(root, "one.txt"))


def test_open_write_that_raises_leaves_nothing(root: str) -> None:
    fresh = storage.join(root, "fresh.bin")
    existing = storage.join(root, "existing.bin")
    storage.write_bytes(existing, b"old content")

    for uri in (fresh, existing):
        with pytest.raises(RuntimeError, match="worker killed"), storage.open_write(uri) as f:
            f.write(b"half of the new ")
            raise RuntimeError("worker killed")

    assert not storage.exists(fresh)
    assert storage.read_bytes(existing) == b"old content"
    assert storage.list_uris(root) == [existing]


def test_reader_never_sees_a_partial_object(root: str) -> None:
    uri = storage.join(root, "hot.bin")
    versions = [bytes([value]) * 200_000 for value in (1, 2)]
    storage.write_bytes(uri, versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read_repeatedly() -> None:
        while not stop.is_set():
            seen.add(storage.read_bytes(uri))

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        for round_number in range(20):
            storage.write_bytes(uri, versions[round_number % 2])
    finally:
        stop.set()
        reader.join()
    assert seen and seen <= set(versions)


def test_large_checkpoint_streams_through_object_stores(remote: Remote) -> None:
    state = {"weight": torch.randn(12 * 1024 * 1024)}  # 48 MiB: a resumable / multipart upload
    size = state["weight"].numel() * state["weight"].element_size()
    uri = storage.join(remote.bucket, "ckpt", "big.pt")
    assert not storage.exists(uri)  # the client is built (botocore loads its API models) by now

    tracemalloc.start()
    try:
        storage.save_torch(state, uri)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loaded = storage.load_torch(uri)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert torch.equal(loaded["weight"], state["weight"])
    assert upload_peak < size / 2, f"upload held {upload_peak} bytes of a {size}-byte file"
    assert download_peak < size / 2, f"download held {download_peak} bytes of a {size}-byte file"


def test_operations_succeed_through_flaky_connection(
    flaky_remote: FlakyProxy, remote: Remote, tmp_path: Path
) -> None:
    flaky_proxy = flaky_remote
    flaky_proxy.fail_share = 0.3
    run = storage.join(remote.bucket, "run")
    blob = bytes(range(256)) * 40_000  # 10 MB: an upload in two chunks / parts
    files = _make_tree(tmp_path / "source")

    storage.write_bytes(storage.join(run, "blob.bin"), blob)
    storage.write_json(storage.join(run, "m.json"), {"ok": True})
    storage.upload_dir(tmp_path / "source", storage.join(run, "tree"))
    storage.save_torch({"w": torch.ones(3)}, storage.join(run, "w.pt"))

    assert storage.read_bytes(storage.join(run, "blob.bin")) == blob
    assert storage.read_json(storage.join(run, "m.json")) == {"ok": True}
    assert torch.equal(storage.load_torch(storage.join(run, "w.pt"))["w"], torch.ones(3))
    assert storage.exists(storage.join(run, "tree"))
    with storage.local_copy(storage.join(run, "tree")) as copy:
        assert _read_tree(copy) == files
    storage.delete(storage.join(run, "tree"))
    assert storage.list_uris(run) == [
        storage.join(run, name) for name in ("blob.bin", "m.json")
    ] + [storage.join(run, "w.pt")]
    total = flaky_proxy.failed + flaky_proxy.forwarded
    assert flaky_proxy.failed >= 0.25 * total, "the proxy should fail about 30% of the requests"


def test_faults_that_never_stop_fail_clearly_and_write_nothing(
    flaky_remote: FlakyProxy, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky_proxy = flaky_remote
    monkeypatch.setenv(storage.RETRY_DEADLINE_ENV, "1.5")
    flaky_proxy.fail_share = 1.0
    uri = storage.join(remote.bucket, "never.bin")

    started = time.monotonic()
    with pytest.raises(storage.StorageError) as failure:
        storage.write_bytes(uri, b"x" * 1000)
    assert time.monotonic() - started < 10
    message = str(failure.value)
    assert uri in message
    assert "last error" in message and storage.RETRY_DEADLINE_ENV in message
    with pytest.raises(storage.StorageError, match=uri):
        storage.read_bytes(uri)

    flaky_proxy.fail_share = 0.0
    assert not storage.exists(uri)


@pytest.mark.parametrize("size", [4, 10_000_000])  # one request; a resumable / multipart upload
@pytest.mark.parametrize("existed", [True, False])
def test_a_write_never_replaces_what_another_writer_put_there_meanwhile(
    flaky_remote: FlakyProxy, remote: Remote, existed: bool, size: int
) -> None:
    if existed and size > 8 * 1024 * 1024 and storage.Uri.parse(remote.bucket).scheme == "s3":
        pytest.skip("moto ignores If-Match on CompleteMultipartUpload (AWS S3 and MinIO do not)")
    flaky_proxy = flaky_remote
    uri = storage.join(remote.bucket, "contested.bin")
    if existed:
        storage.write_bytes(uri, b"before")
    flaky_proxy.before_next(*remote.write_request(uri, size), lambda: remote.put(uri, b"theirs"))

    with pytest.raises(storage.StorageError, match="another writer changed it") as failure:
        storage.write_bytes(uri, b"ours" if size < 256 else bytes(range(256)) * (size // 256))
    assert uri in str(failure.value)
    assert storage.read_bytes(uri) == b"theirs"
    assert flaky_proxy.refused_preconditions == 1


@pytest.mark.parametrize("size", [1000, 10_000_000])  # one request; a resumable / multipart upload
def test_a_write_whose_answer_was_lost_is_retried_and_lands_once(
    flaky_remote: FlakyProxy, remote: Remote, size: int
) -> None:
    flaky_proxy = flaky_remote
    uri = storage.join(remote.bucket, "lost.bin")
    storage.write_bytes(uri, b"old")
    data = bytes(range(256)) * (size // 256)
    flaky_proxy.lose_next_answer(*remote.write_request(uri, size))

    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    assert flaky_proxy.lost == 1
    # the retried one-request upload met its own first attempt's object: 412, then found to be
    # ours; a retried resumable upload starts a new session, a retried multipart completion is
    # answered as the completion it repeats
    assert flaky_proxy.refused_preconditions == (1 if size < 8 * 1024 * 1024 else 0)


def test_a_retried_write_that_finds_other_bytes_fails(
    flaky_remote: FlakyProxy, remote: Remote
) -> None:
    flaky_proxy = flaky_remote
    uri = storage.join(remote.bucket, "lost-then-replaced.bin")
    flaky_proxy.lose_next_answer(*remote.write_request(uri, 4))
    # the first attempt lands, its answer is lost; another writer replaces it before the retry
    flaky_proxy.before_next(*remote.write_request(uri, 4), lambda: remote.put(uri, b"theirs"))

    with pytest.raises(storage.StorageError, match="another writer changed it"):
        storage.write_bytes(uri, b"ours")
    assert storage.read_bytes(uri) == b"theirs"


def test_a_download_cut_off_part_way_resumes_where_it_stopped(
    flaky_remote: FlakyProxy, remote: Remote
) -> None:
    """The retry asks for the missing bytes only, so a fault costs what was in flight, not the
    whole checkpoint."""
    flaky_proxy = flaky_remote
    uri = storage.join(remote.bucket, "cut.bin")
    data = bytes(range(256)) * 40_000  # 10 MB
    storage.write_bytes(uri, data)
    flaky_proxy.cut_next_answer(*remote.download_request(uri), keep_bytes=4_000_000)

    with storage.local_copy(uri) as copy:
        assert copy.read_bytes() == data
    (resumed,) = flaky_proxy.ranges
    first_missing = int(resumed.removeprefix("bytes=").split("-")[0])
    assert 2_000_000 < first_missing <= 4_000_000, resumed


def test_a_download_resumed_after_a_replacement_starts_over(
    flaky_remote: FlakyProxy, remote: Remote
) -> None:
    """Bytes of two versions are never stitched together: when the object was replaced between
    the cut-off answer and the retry, the download starts over on the new version."""
    if storage.Uri.parse(remote.bucket).scheme == "gs":
        pytest.skip(
            "the GCS emulator ignores the generation google-cloud-storage pins a resumed download to"
        )
    flaky_proxy = flaky_remote
    uri = storage.join(remote.bucket, "replaced.bin")
    old, new = bytes(range(256)) * 40_000, bytes(reversed(range(256))) * 40_000
    storage.write_bytes(uri, old)
    flaky_proxy.cut_next_answer(*remote.download_request(uri), keep_bytes=4_000_000)
    flaky_proxy.before_next(*remote.download_request(uri), lambda: remote.put(uri, new))

    with storage.local_copy(uri) as copy:
        assert copy.read_bytes() == new


def test_a_delete_whose_answer_was_lost_succeeds(flaky_remote: FlakyProxy, remote: Remote) -> None:
    flaky_proxy = flaky_remote
    uri = storage.join(remote.bucket, "gone.bin")
    storage.write_bytes(uri, b"x")
    flaky_proxy.lose_next_answer(*remote.delete_request(uri))

    storage.delete(uri)
    assert flaky_proxy.lost == 1
    assert not storage.exists(uri)


@pytest.mark.parametrize(
    ("operation", "uri", "message"),
    [
        (storage.read_bytes, "gs://", "no bucket name"),
        (storage.read_bytes, "gs:///key", "no bucket name"),
        (storage.read_bytes, "gs://bucket-only", "not an object"),
        (lambda uri: storage.write_bytes(uri, b"x"), "gs://bucket-only/folder/", "not an object"),
        (lambda uri: storage.write_bytes(uri, b"x"), "hdfs://node/key", "unsupported URI scheme"),
        (storage.exists, "https://example.com/key", "unsupported URI scheme"),
        (storage.list_uris, "gs://Not_A_Bucket!/key", "bucket name"),
        (storage.delete, "gs://whole-bucket", "refusing to delete"),
        (storage.read_bytes, "s3://", "no bucket name"),
        (storage.read_bytes, "s3://bucket-only", "not an object"),
        (lambda uri: storage.write_bytes(uri, b"x"), "s3://bucket-only/folder/", "not an object"),
        (storage.list_uris, "s3://under_score/key", "bucket name"),  # fine on GCS, not on S3
        (storage.exists, "s3://" + "b" * 64 + "/key", "3-63 characters"),
        (storage.delete, "s3://whole-bucket", "refusing to delete"),
        (storage.read_bytes, "minio://", "no bucket name"),
        (storage.list_uris, "minio://under_score/key", "bucket name"),
        (storage.delete, "minio://mlpipeline", "refusing to delete"),
        (storage.read_bytes, "", "empty URI"),
    ],
)
def test_malformed_uris_are_rejected_before_any_request(
    operation, uri: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    for name in s3_store.S3_ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=message) as failure:
        operation(uri)
    assert repr(uri) in str(failure.value) or not uri
    assert list(tmp_path.iterdir()) == [], "nothing may be written for a malformed URI"


@pytest.mark.parametrize(
    ("operation", "key", "message"),
    [
        (storage.read_bytes, "missing.bin", "does not exist"),
        (storage.load_torch, "missing.pt", "does not exist"),
        (lambda uri: storage.local_copy(uri).__enter__(), "missing-folder", "does not exist"),
        (lambda uri: storage.download_dir(uri, "unused"), "missing-folder", "holds no objects"),
        (storage.delete, "missing.bin", "does not exist"),
    ],
)
def test_missing_objects_name_the_uri(operation, key: str, message: str, remote: Remote) -> None:
    uri = storage.join(remote.bucket, key)
    with pytest.raises(FileNotFoundError, match=message) as failure:
        operation(uri)
    assert uri in str(failure.value)


@pytest.mark.parametrize(
    "operation",
    [
        storage.read_bytes,
        lambda uri: storage.write_bytes(uri, b"x"),
        storage.list_uris,
        storage.exists,
        storage.check_writable,
    ],
)
def test_missing_bucket_names_the_uri(operation, remote: Remote) -> None:
    scheme = remote.bucket.partition("://")[0]
    uri = f"{scheme}://kshot-no-such-bucket/run/file.bin"
    with pytest.raises(
        FileNotFoundError, match=f"{uri}: bucket {scheme}://kshot-no-such-bucket does not exist"
    ):
        operation(uri)


def test_missing_local_file_names_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match="missing.bin"), storage.local_copy(missing):
        pass


def test_bad_retry_deadline_setting_is_named(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(storage.RETRY_DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match=f"{storage.RETRY_DEADLINE_ENV}='soon'"):
        storage.read_bytes(storage.join(remote.bucket, "x"))


def test_gs_without_credentials_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    monkeypatch.setattr(gcs_store.STORE, "_cached", None)
    with pytest.raises(PermissionError, match="no usable Google Cloud credentials .*Workload"):
        storage.read_bytes("gs://some-bucket/split.json")


def test_s3_without_credentials_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(s3_store.S3_STORE, "_cached", None)
    with pytest.raises(PermissionError, match="no usable S3 credentials .*AWS_ACCESS_KEY_ID"):
        storage.read_bytes("s3://some-bucket/split.json")


def test_minio_uris_reach_kfps_store_with_the_keys_of_its_secret(
    minio_bucket: str, s3_server: str
) -> None:
    """``minio://`` (KFP's default pipeline root) is the S3-compatible server at
    ``KSHOT_MINIO_ENDPOINT``, signed with the keys from KFP's Secret: with no AWS_* keys and no
    s3:// endpoint set, what is written there is the server's object at that bucket and key, and
    the lease primitives hold there too."""
    name = minio_bucket.removeprefix("minio://")
    uri = storage.join(minio_bucket, "run", "split.json")
    storage.write_json(uri, {"train": [1, 2]})
    body = direct_client(s3_server).get_object(Bucket=name, Key="run/split.json")["Body"].read()
    assert json.loads(body) == {"train": [1, 2]}
    assert storage.list_uris(storage.join(minio_bucket, "run")) == [uri]
    lease = storage.join(minio_bucket, ".kshot-leases", "x.json")
    first = storage.create_if_absent(lease, b"first")
    assert first is not None and storage.create_if_absent(lease, b"other") is None
    assert storage.delete_if_generation(lease, first) is True


def test_minio_without_the_secrets_keys_names_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in s3_store.MINIO_SECRET_KEYS.values():
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PermissionError) as failure:
        storage.read_bytes("minio://mlpipeline/v2/artifacts/split.json")
    message = str(failure.value)
    assert "minio://mlpipeline/v2/artifacts/split.json" in message
    assert s3_store.MINIO_SECRET in message and "KSHOT_MINIO_ACCESS_KEY" in message


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, "http://seaweedfs.kubeflow:9000"),  # KFP 2.17's default store, in kubeflow
        (  # a minio-service of the namespace's own (older installs)
            {"MINIO_SERVICE_SERVICE_HOST": "10.0.0.7", "MINIO_SERVICE_SERVICE_PORT": "9000"},
            "http://10.0.0.7:9000",
        ),
        (  # an IPv6 ClusterIP goes in brackets
            {"MINIO_SERVICE_SERVICE_HOST": "fd00::7", "MINIO_SERVICE_SERVICE_PORT": "9000"},
            "http://[fd00::7]:9000",
        ),
        (
            {"MINIO_SERVICE_SERVICE_HOST": "10.0.0.7", "MINIO_SERVICE_SERVICE_PORT": "9000"}
            | {s3_store.MINIO_ENDPOINT_ENV: "https://store.example:443"},
            "https://store.example:443",
        ),
    ],
)
def test_minio_endpoint_is_found_as_kfps_launcher_finds_it(
    env: dict[str, str], endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (s3_store.MINIO_ENDPOINT_ENV, "MINIO_SERVICE_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert s3_store.minio_endpoint() == endpoint


def test_an_interrupted_s3_multipart_upload_leaves_no_parts(
    s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload in parts stopped part-way (the worker interrupted at part 2) is aborted: neither
    the object nor the parts already sent remain (S3 keeps, and bills, an unfinished upload's
    parts until it is aborted)."""
    uri = storage.join(s3_bucket, "interrupted.bin")
    client = s3_store.S3_STORE.client()
    upload_part = client.upload_part

    def interrupted_at_part_2(**request: Any) -> Any:
        if request["PartNumber"] == 2:
            raise KeyboardInterrupt
        return upload_part(**request)

    monkeypatch.setattr(client, "upload_part", interrupted_at_part_2)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes(uri, bytes(20 * 1024 * 1024))  # three parts
    bucket = storage.Uri.parse(uri).bucket
    assert direct_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not storage.exists(uri)


# ------------------------------------------------------------------ safe loading, modes, full disk


class _CreatesMarker:
    """Unpickling it calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_torch_file_holding_code_is_refused_without_running_it(root: str, tmp_path: Path):
    """A file whose unpickling would call a function is refused by name; the function never
    runs (the marker it would create stays absent), from a local folder and from gs:// alike."""
    marker = tmp_path / "MARKER"
    uri = storage.join(root, "evil.pt")
    storage.save_torch({"weight": torch.ones(2), "payload": _CreatesMarker(marker)}, uri)
    with pytest.raises(storage.UnsafeFileError, match=f"refusing to load {uri}: .*run as code"):
        storage.load_torch(uri)
    assert not marker.exists()


def test_plain_metadata_loads_with_weights_only(root: str) -> None:
    """What checkpoints and exported models hold besides tensors loads under weights_only."""
    state = {
        "config": {"dataset": "digits", "top_n": [10, 50], "lr": 0.1, "ground_truth": None},
        "history": {"loss": [1.5, float("nan")]},
        "shape": (4, 1),
        "flag": True,
        "weight": torch.arange(3.0),
    }
    uri = storage.join(root, "meta.pt")
    storage.save_torch(state, uri)
    loaded = storage.load_torch(uri)
    assert loaded["config"] == state["config"] and loaded["shape"] == (4, 1)
    assert loaded["history"]["loss"][0] == 1.5 and loaded["flag"] is True


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_get_the_mode_of_the_umask(tmp_path: Path, umask: int) -> None:
    """Atomic writes (a temporary file renamed into place) give the mode a plain open would:
    0666 less the umask, not mkstemp's 0600."""
    previous = os.umask(umask)
    try:
        storage.write_json(str(tmp_path / "a.json"), {"k": 1})
        storage.save_torch({"w": torch.ones(1)}, str(tmp_path / "sub" / "w.pt"))
    finally:
        os.umask(previous)
    for path in (tmp_path / "a.json", tmp_path / "sub" / "w.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_non_finite_numbers_are_written_as_null_with_a_warning(root: str) -> None:
    uri = storage.join(root, "metrics.json")
    with pytest.warns(UserWarning, match=r"kendall_tau, top\[1\] are not a finite number"):
        storage.write_json(uri, {"kendall_tau": float("nan"), "top": [0.5, float("inf")], "n": 3})
    text = storage.read_text(uri)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"kendall_tau": None, "top": [0.5, None], "n": 3}


def _fill_disk(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make every file write past ``after`` bytes fail as a full disk does (ENOSPC)."""
    real_fdopen = os.fdopen

    class FullDisk(io.BufferedWriter):
        written = 0

        def write(self, data) -> int:  # type: ignore[override]
            FullDisk.written += len(data)
            if FullDisk.written > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def fdopen(fd: int, mode: str = "r", *args, **kwargs):
        if "w" not in mode:
            return real_fdopen(fd, mode, *args, **kwargs)
        return FullDisk(io.FileIO(fd, "w"))

    monkeypatch.setattr(storage.os, "fdopen", fdopen)


@pytest.mark.parametrize("save", ["json", "torch"])
def test_a_full_disk_is_named_with_the_path_and_the_old_file_is_kept(
    save: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save alone reports a full disk as ``unexpected pos N``: the error names the file and
    says "no space left"; the previous file keeps its bytes and no temporary file stays."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    _fill_disk(monkeypatch, after=64)
    with pytest.raises(OSError, match=f"writing {target}: no space left on device") as failure:
        if save == "json":
            storage.write_json(str(target), {"x": list(range(100))})
        else:
            storage.save_torch({"w": torch.zeros(1000)}, str(target))
    assert failure.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_full_tmpfs_is_named_with_the_path(tmp_path: Path) -> None:
    """The same on a real full file system: a 64 KiB tmpfs (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        target = mount / "ckpt.pt"
        with pytest.raises(OSError, match=f"writing {target}: no space left on device"):
            storage.save_torch({"w": torch.zeros(100_000)}, str(target))
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs:/bucket/split.json", "malformed URI 'gs:/bucket/split.json'"),
        ("gs:bucket/split.json", "malformed URI"),
        ("s3:/bucket/x", "malformed URI"),
        ("minio:mlpipeline/x", "malformed URI"),
        ("gs://bucket-ok/a/./x", "'.' and '..' segments"),
        ("gs://bucket-ok/a/../x", "'.' and '..' segments"),
        ("gs://bucket-ok/a//x", "empty, '.' and '..' segments"),
    ],
)
def test_malformed_scheme_uris_never_become_local_files(
    uri: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        storage.write_text(uri, "x")
    assert list(tmp_path.iterdir()) == []


def test_an_output_of_the_wrong_kind_is_refused(tmp_path: Path, remote: Remote) -> None:
    """A file artifact where a folder lies (or names a bucket), a folder artifact where a file
    lies: refused by check_writable, locally and on gs:// and s3://."""
    bucket = remote.bucket
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    storage.write_text(storage.join(bucket, "run", "inside.txt"), "x")
    storage.write_text(storage.join(bucket, "object"), "x")
    refused = [
        (str(tmp_path / "folder"), False, "is a folder, but a file is expected"),
        (str(tmp_path / "new") + "/", False, "is a folder, but a file is expected"),
        (str(tmp_path / "file"), True, "is a file, but a folder is expected"),
        (bucket, False, "names a bucket or folder"),
        (storage.join(bucket, "run"), False, "is a folder (objects lie under it)"),
        (storage.join(bucket, "object"), True, "is an object (a file)"),
    ]
    for uri, folder, message in refused:
        with pytest.raises(ValueError, match=re.escape(message)):
            storage.check_writable(uri, folder=folder)
    for uri, folder in [
        (str(tmp_path / "new.json"), False),
        (str(tmp_path / "folder"), True),
        (storage.join(bucket, "run"), True),
        (storage.join(bucket, "new.json"), False),
    ]:
        storage.check_writable(uri, folder=folder)


def test_conditional_writes_name_the_version_they_expect(
    flaky_remote: FlakyProxy, remote: Remote
) -> None:
    """The lease primitives on each store: create only where nothing is, replace and delete only
    the version last seen (a GCS generation, an S3 ETag); a stale version is refused and leaves
    the object as it is."""
    uri = storage.join(remote.bucket, ".kshot-leases", "x.json")
    assert storage.read_versioned(uri) is None
    first = storage.create_if_absent(uri, b"first")
    assert first is not None
    assert storage.create_if_absent(uri, b"other") is None
    assert storage.read_versioned(uri) == (b"first", first)
    second = storage.replace_if_generation(uri, b"second", first)
    assert second is not None and second != first
    assert storage.replace_if_generation(uri, b"stale", first) is None
    assert storage.read_versioned(uri) == (b"second", second)
    assert storage.delete_if_generation(uri, first) is False
    assert storage.read_versioned(uri) == (b"second", second)
    assert storage.delete_if_generation(uri, second) is True
    assert storage.read_versioned(uri) is None
    assert storage.delete_if_generation(uri, second) is False
    assert storage.replace_if_generation(uri, b"gone", second) is None
    assert storage.read_versioned(uri) is None
