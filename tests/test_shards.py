"""Sharded datasets: written once from a class-folder tree, read with a few ranged requests per
batch under the batch contract, from disk, the GCS emulator and the S3 server; a killed training
worker on shards in a bucket resumes to bitwise the weights of an uninterrupted run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot import seeds, storage
from kshot.cli import main
from kshot.config import load_config
from kshot.data import folder_index, shards
from kshot.data.decode import decode_image_bytes, eval_transform, train_transform
from kshot.data.folder_index import ImageFolderIndex
from kshot.data.samplers import RUN_LENGTH, run_order
from kshot.data.shards import MERGE_GAP_BYTES, ShardIndex, read_plan, write_shards
from kshot.data.split import make_split
from kshot.data.stream import eval_batches, train_batches
from kshot.launch.spec import LaunchSpec
from kshot.stages import run_stage
from kshot.train import checkpoint as ckpt
from tests.conftest import MBV2_TINY, spy_on_resume
from tests.object_stores import Remote
from tests.test_stream import _write_tree

RES = 16
IMAGENET_CONFIG = Path(__file__).resolve().parents[1] / "kshot" / "configs" / "mbv2-imagenet.yaml"
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    _write_tree(root)
    _write_tree(root, "test")
    return root


@pytest.fixture(scope="module")
def sharded(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> ShardIndex:
    """The tree as shards of about 4 images each (several shards, runs cut at their ends)."""
    return write_shards(str(tree), str(tmp_path_factory.mktemp("shards") / "ds"), shard_bytes=12000)


@pytest.fixture(scope="module")
def split(sharded: ShardIndex) -> np.ndarray:
    return make_split(len(sharded), 0.0, seed=3, carve_test=False, held_out=6).train


def _train(index: ShardIndex, indices: np.ndarray, **overrides: object) -> list:
    kwargs = dict(seed=5, start_step=0, steps_per_epoch=3, batch_size=4, resolution=RES)
    kwargs.update(augment=True, num_workers=0, pin_memory=False)
    count = int(overrides.pop("count", 6))  # type: ignore[call-overload]
    kwargs.update(overrides)
    batches = train_batches(index, indices, **kwargs)  # type: ignore[arg-type]
    taken = list(itertools.islice(batches, count))
    batches.close()
    return taken


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _member_bytes(index: ShardIndex, position: int) -> bytes:
    return storage.read_range(
        index.shards[index.shard_of[position]],
        int(index.offsets[position]),
        int(index.sizes[position]),
    )


# ---------------------------------------------------------------------------------- format


def test_shards_hold_every_image_once_in_the_seeded_order(tree: Path, sharded: ShardIndex) -> None:
    folders = ImageFolderIndex.scan(str(tree))
    order = np.random.default_rng(0).permutation(len(folders))  # seed 0: the writer's default
    assert len(sharded) == len(folders) == 18 and len(sharded.shards) > 2
    assert sharded.classes == folders.classes
    for position, source in enumerate(order):
        assert _member_bytes(sharded, position) == Path(folders.files[source]).read_bytes()
        assert sharded.labels[position] == folders.labels[source]
    assert np.all(np.diff(sharded.shard_of) >= 0)  # images numbered in shard order
    # WebDataset's layout: <key>.<image suffix> then <key>.cls, readable by any tar reader
    with tarfile.open(sharded.shards[1]) as tar:
        names = tar.getnames()
        first = int(np.flatnonzero(sharded.shard_of == 1)[0])
        assert names[:2] == [
            f"{first:09d}{Path(folders.files[order[first]]).suffix}",
            f"{first:09d}.cls",
        ]
        label = tar.extractfile(names[1]).read()  # type: ignore[union-attr]
        assert int(label) == sharded.labels[first]
    test = ShardIndex.load(sharded.uri, "test")
    assert len(test) == 18 and test.digest == sharded.digest and test.shards[0].endswith(".tar")


def test_the_digest_names_the_content(tree: Path, sharded: ShardIndex, tmp_path: Path) -> None:
    """The same tree and seed give the same bytes and digest; another seed another digest; a
    changed index.npz is refused."""
    again = write_shards(str(tree), str(tmp_path / "again"), shard_bytes=12000)
    assert again.digest == sharded.digest == sharded.fingerprint()
    assert [Path(s).read_bytes() for s in again.shards] == [
        Path(s).read_bytes() for s in sharded.shards
    ]
    other = write_shards(str(tree), str(tmp_path / "other"), shard_bytes=12000, seed=1)
    assert other.digest != sharded.digest
    arrays = tmp_path / "again" / shards.ARRAYS_NAME
    arrays.write_bytes(arrays.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="index.npz does not match the SHA-256"):
        ShardIndex.load(str(tmp_path / "again"))


def test_bad_sources_and_destinations_are_named_before_writing(
    tree: Path, sharded: ShardIndex, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="already holds a sharded dataset"):
        write_shards(str(tree), sharded.uri)
    with pytest.raises(ValueError, match="shard_bytes must be a positive int, got 0"):
        write_shards(str(tree), str(tmp_path / "x"), shard_bytes=0)
    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no class folders"):
        write_shards(str(tmp_path / "flat"), str(tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / shards.INDEX_NAME).exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / shards.INDEX_NAME).write_text('{"format": "other/2"}')
    with pytest.raises(ValueError, match="format 'other/2', expected 'kshot-shards/1'"):
        ShardIndex.load(str(tmp_path / "notes"))


def test_the_command_writes_a_dataset_and_prints_its_digest(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "shard", str(tree), str(tmp_path / "ds"), "--shard-mb", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    index = ShardIndex.load(str(tmp_path / "ds"))
    assert printed == {
        "dataset": str(tmp_path / "ds"),
        "train_images": 18,
        "train_shards": 1,
        "classes": 3,
        "sha256": index.digest,
    }
    assert main(["data", "shard", str(tree), str(tmp_path / "z"), "--shard-mb", "0"]) == 2
    assert "--shard-mb must be >= 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reading


def test_run_order_permutes_runs_of_neighbours_of_one_shard() -> None:
    shard_of = np.repeat(np.arange(5), [40, 3, 17, 33, 1]).astype(np.int32)
    order = run_order(shard_of, seeds.rng(5, 0, seeds.EPOCH_ORDER))
    assert sorted(order.tolist()) == list(range(len(shard_of)))
    assert np.array_equal(order, run_order(shard_of, seeds.rng(5, 0, seeds.EPOCH_ORDER)))
    assert not np.array_equal(order, run_order(shard_of, seeds.rng(5, 1, seeds.EPOCH_ORDER)))
    runs = np.split(order, np.flatnonzero(np.diff(order) != 1) + 1)
    assert len(runs) > len(shard_of) // RUN_LENGTH  # permuted, not laid in place
    for run in runs:  # consecutive positions; cut where a shard ends or at the epoch's phase
        for piece in np.split(run, np.flatnonzero(np.diff(shard_of[run]) != 0) + 1):
            assert len(set(shard_of[piece].tolist())) == 1


def test_read_plan_merges_neighbours_and_splits_far_images() -> None:
    sizes = np.full(6, 1000)
    offsets = np.array([0, 1512, 3024, 3024 + MERGE_GAP_BYTES + 2000, 0, 1512])
    index = ShardIndex(
        uri="ds",
        part="train",
        shards=["ds/a.tar", "ds/b.tar"],
        shard_of=np.array([0, 0, 0, 0, 1, 1], dtype=np.int32),
        offsets=offsets,
        sizes=sizes,
        labels=np.zeros(6, dtype=np.int64),
        classes=["c"],
        digest="",
    )
    reads = read_plan(index, [5, 2, 0, 3, 4])
    assert [(r.shard, r.start, r.length) for r in reads] == [
        ("ds/a.tar", 0, 4024),
        ("ds/a.tar", int(offsets[3]), 1000),
        ("ds/b.tar", 0, 2512),
    ]
    assert reads[0].members == ((2, 0, 1000), (1, 3024, 1000))  # (slot in the request, at, size)
    assert reads[2].members == ((4, 0, 1000), (0, 1512, 1000))


def test_sharded_batches_keep_the_contract(
    tree: Path, sharded: ShardIndex, split: np.ndarray
) -> None:
    """Workers, a resumed start and the split over ranks change nothing; each epoch visits the
    split once; every image is its source file augmented from (seed, step, image)."""
    base = _train(sharded, split)
    _assert_same(_train(sharded, split, num_workers=2), base)
    _assert_same(_train(sharded, split, start_step=2, count=4, num_workers=1), base[2:])
    ranks = [_train(sharded, split, rank=r, world=2, num_workers=r) for r in (0, 1)]
    for step, ((x0, y0), (x1, y1)) in enumerate(zip(*ranks, strict=True)):
        assert torch.equal(torch.cat([x0, x1]), base[step][0])
        assert torch.equal(torch.cat([y0, y1]), base[step][1])
    for epoch in range(2):
        labels = torch.cat([y for _, y in base[epoch * 3 : (epoch + 1) * 3]])
        assert Counter(labels.tolist()) == Counter(sharded.labels[split].tolist())
    order = run_order(sharded.shard_of[split], seeds.rng(5, 1, seeds.EPOCH_ORDER))
    step = 4  # epoch 1, position 1
    for slot, index in enumerate(split[order[4:8]].tolist()):
        image = decode_image_bytes(_member_bytes(sharded, index), "x")
        rng = seeds.rng(5, step, seeds.AUGMENT, index)
        assert torch.equal(base[step][0][slot], train_transform(image, RES, rng))
    whole = list(eval_batches(sharded, split, batch_size=5, resolution=RES, num_workers=2))
    want = [eval_transform(decode_image_bytes(_member_bytes(sharded, i), "x"), RES) for i in split]
    assert torch.equal(torch.cat([x for x, _ in whole]), torch.stack(want))


def test_a_batch_costs_a_few_ranged_reads(
    sharded: ShardIndex, split: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[str, int, int]] = []
    original = storage.read_range

    def counted(uri: str, start: int, length: int) -> bytes:
        reads.append((uri, start, length))
        return original(uri, start, length)

    monkeypatch.setattr(storage, "read_range", counted)
    batches = _train(sharded, split, count=3)
    # each batch's plan: 4 images from runs of up to 4 (a shard's images), at most 3 reads
    planned = []
    for step in range(4):  # the 4th batch (epoch 1) is fetched ahead while the 3rd is decoded
        order = run_order(sharded.shard_of[split], seeds.rng(5, step // 3, seeds.EPOCH_ORDER))
        positions = split[order[(step % 3) * 4 : (step % 3 + 1) * 4]]
        planned.append([(r.shard, r.start, r.length) for r in read_plan(sharded, positions)])
    assert all(len(plan) <= 3 for plan in planned)
    # every read is one of a planned batch's, and none is made twice: a read fetched ahead is
    # used, not made again (epoch 1 may read the ranges epoch 0 read, so equal ranges can recur)
    assert Counter(reads) <= Counter(itertools.chain(*planned))
    assert Counter(itertools.chain(*planned[:3])) <= Counter(reads)
    assert sum(len(y) for _, y in batches) == 12 and all(uri.endswith(".tar") for uri, *_ in reads)


# ------------------------------------------------------------------------- gs://, s3://


def test_shards_in_a_bucket_stream_like_on_disk_without_listing(
    tree: Path, sharded: ShardIndex, split: np.ndarray, remote: Remote, monkeypatch
) -> None:
    """A tree in a bucket shards to the same bytes as on disk, and training reads the bucket's
    shards with two index reads and ranged reads, never a listing (workers included)."""
    storage.upload_dir(tree, f"{remote.bucket}/tree")
    uri = f"{remote.bucket}/shards"
    written = write_shards(f"{remote.bucket}/tree", uri, shard_bytes=12000)
    assert written.digest == sharded.digest

    def no_listing(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError(f"listed {args}")

    monkeypatch.setattr(storage, "list_uris", no_listing)
    index = ShardIndex.load(uri)
    assert index.shards == [f"{uri}/{Path(s).name}" for s in sharded.shards]
    _assert_same(
        _train(index, split, start_step=1, count=3, num_workers=2), _train(sharded, split)[1:4]
    )


# -------------------------------------------------------- ImageNet's config on shards


def _synthetic_tree(root: Path, classes: int = 10, per_class: int = 20) -> None:
    rng = np.random.default_rng(11)
    for label in range(classes):
        for part, count in (("train", per_class), ("val", 4)):
            folder = root / part / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(24 + i % 5, 20 + label, 3), dtype=np.uint8)
                pixels[..., label % 3] = 200
                Image.fromarray(pixels).save(folder / f"{part}_{label}_{i}.JPEG", quality=90)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ImageNet-shaped tree (train/ and val/ class folders of JPEGs), sharded."""
    root = tmp_path_factory.mktemp("imagenet-like")
    _synthetic_tree(root / "tree")
    write_shards(str(root / "tree"), str(root / "shards"), shard_bytes=40000)
    return root / "shards"


def _mbv2_imagenet(dataset: str, **overrides: object):
    """kshot/configs/mbv2-imagenet.yaml at tiny sizes, reading ``dataset``."""
    tiny = {k: v for k, v in MBV2_TINY.items() if k not in ("augment", "valid_fraction", "k")}
    return load_config(
        str(IMAGENET_CONFIG),
        {
            **tiny,
            "dataset": dataset,
            "valid_size": 40,
            "loader_workers": 1,
            "epochs": 2,
            "warmup_epochs": 1,
            "eval_images": 0,
            "retrain_epochs": 1,
            **overrides,
        },
    )


def test_the_imagenet_config_runs_on_a_sharded_tree(imagenet_like: Path, tmp_path: Path) -> None:
    cfg = _mbv2_imagenet(str(imagenet_like))
    assert cfg.data_loading == "stream" and cfg.search_space == "mbv2" and cfg.k == 8
    uri = {n: str(tmp_path / n) for n in ("split", "warm", "trained", "search", "recal", "model")}
    run_stage("split", cfg, {}, {"split": uri["split"]})
    split = json.loads(Path(uri["split"]).read_text())
    assert split["files_sha256"] == ShardIndex.load(str(imagenet_like)).digest
    assert (len(split["train"]), len(split["valid"]), split["test"]) == (160, 40, None)
    inputs = {"split": uri["split"]}
    run_stage("warmup", cfg, inputs, {"checkpoint": uri["warm"]})
    run_stage("train", cfg, {**inputs, "checkpoint": uri["warm"]}, {"checkpoint": uri["trained"]})
    trained = {**inputs, "checkpoint": uri["trained"]}
    run_stage("search", cfg, trained, {"results": uri["search"]})
    run_stage("recalibrate", cfg, {**trained, "results": uri["search"]}, {"results": uri["recal"]})
    metrics = run_stage(
        "retrain",
        cfg,
        {**inputs, "results": uri["recal"]},
        {"model": uri["model"], "metrics": str(tmp_path / "retrain.json")},
    )
    assert 0 <= metrics["test_accuracy"] <= 100  # on the shards' own test part (val/)


def _kill_after(command: list[str], out: Path, step: int, timeout_s: float = 240.0) -> str:
    """Start ``command`` in its own process group; SIGKILL the group once a checkpoint of step
    ``step`` or later is in ``out``. Returns the newest checkpoint then."""
    proc = subprocess.Popen(
        command,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
                pytest.fail(f"the worker exited ({proc.returncode}) before it was killed:\n{err}")
            found = ckpt.list_checkpoints(str(out))
            if found and int(found[-1].rsplit("-s", 1)[1].removesuffix(".pt")) >= step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return ckpt.list_checkpoints(str(out))[-1]
            time.sleep(0.02)
        pytest.fail(f"no checkpoint of step {step} appeared in {out} within {timeout_s} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.slow
def test_a_killed_worker_on_shards_in_a_bucket_resumes_bitwise(
    imagenet_like: Path, remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train on the shards in gs:// or s3:// (DataLoader workers reading ranged requests), SIGKILL
    the worker mid-epoch, run the stage again: it resumes from the newest checkpoint and ends with
    bitwise the weights, optimiser and curves of an uninterrupted run."""
    dataset = f"{remote.bucket}/imagenet-shards"
    storage.upload_dir(imagenet_like, dataset)
    cfg = _mbv2_imagenet(dataset, epochs=3, checkpoint_every_steps=1, m=2)
    steps_per_epoch = 160 // cfg.batch_size
    split = {"split": str(tmp_path / "split.json")}
    run_stage("split", cfg, {}, {"split": split["split"]})
    run_stage("warmup", cfg, split, {"checkpoint": str(tmp_path / "warm")})
    inputs = {**split, "checkpoint": str(tmp_path / "warm")}
    straight = tmp_path / "straight"
    run_stage("train", cfg, inputs, {"checkpoint": str(straight)})

    out = tmp_path / "killed"
    spec = LaunchSpec(
        stage="train", config=cfg.to_dict(), inputs=inputs, outputs={"checkpoint": str(out)}
    )
    mid_epoch = steps_per_epoch + 2  # warmup is epoch 0: half-way through training's first
    killed_at = _kill_after(
        [sys.executable, "-m", "kshot.worker", *spec.worker_args()], out, mid_epoch
    )
    assert int(killed_at.rsplit("-s", 1)[1].removesuffix(".pt")) < cfg.epochs * steps_per_epoch
    resumed_from = spy_on_resume(monkeypatch)
    run_stage("train", cfg, inputs, {"checkpoint": str(out)})
    assert resumed_from == [killed_at]

    final, reference = ckpt.load_latest(str(out)), ckpt.load_latest(str(straight))
    assert final["step"] == reference["step"] == cfg.epochs * steps_per_epoch
    for net in ("supernet", "simplex"):
        for name, tensor in reference[net].items():
            assert torch.equal(final[net][name], tensor), f"{net}.{name} differs"
    assert json.dumps(final["history"], sort_keys=True) == json.dumps(
        reference["history"], sort_keys=True
    )


def test_stream_reads_shards_where_the_dataset_has_an_index(
    imagenet_like: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split stage of a sharded dataset reads its index and lists nothing."""

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned a class-folder tree")

    monkeypatch.setattr(folder_index.ImageFolderIndex, "scan", no_scan)
    cfg = _mbv2_imagenet(str(imagenet_like))
    assert run_stage("split", cfg, {}, {"split": str(tmp_path / "s.json")})["train"] == 160
