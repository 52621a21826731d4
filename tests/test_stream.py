"""The streaming class-folder loader: index, transforms, the batch contract, splits and gs://."""

from __future__ import annotations

import itertools
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot import storage
from kshot.data import decode, stream
from kshot.data.decode import (
    decode_image_bytes,
    eval_transform,
    random_resized_crop_params,
    read_image,
)
from kshot.data.folder_index import ImageFolderIndex
from kshot.data.split import make_split
from kshot.data.stream import StreamingImages, eval_batches, train_batches

CLASSES = ["cat", "dog", "emu"]
PER_CLASS = 6
SIZES = [(40, 30), (30, 50), (48, 48), (64, 36), (33, 41), (50, 40)]  # (width, height)
RES = 16

# torchvision 0.29 deprecates its image decoders (per call); the module falls back to PIL later.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _write_tree(root: Path, part: str = "train", classes: list[str] = CLASSES) -> None:
    """``PER_CLASS`` images per class, each of its own size and noisy content."""
    rng = np.random.default_rng(7)
    for label, name in enumerate(classes):
        folder = root / part / name
        folder.mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES[:PER_CLASS]):
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            pixels[..., label] = 255 - 20 * i  # a class colour, to tell images apart
            suffix = (".jpg", ".jpeg", ".png")[i % 3]
            Image.fromarray(pixels).save(folder / f"img{i}{suffix}", quality=95)
        (folder / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    _write_tree(root)
    return root


@pytest.fixture(scope="module")
def index(tree) -> ImageFolderIndex:
    return ImageFolderIndex.scan(str(tree))


@pytest.fixture(scope="module")
def split(index) -> tuple[np.ndarray, np.ndarray]:
    split = make_split(len(index), 0.0, seed=3, carve_test=False, held_out=6)  # 12 train images
    return split.train, split.valid


def _take(batches, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    taken = list(itertools.islice(batches, count))
    batches.close()
    return taken


def _train(index, indices, **overrides) -> list[tuple[torch.Tensor, torch.Tensor]]:
    kwargs = dict(seed=5, start_step=0, steps_per_epoch=3, batch_size=4, resolution=RES)
    kwargs.update(augment=True, num_workers=0, pin_memory=False)
    count = overrides.pop("count", 6)
    kwargs.update(overrides)
    return _take(train_batches(index, indices, **kwargs), count)


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ------------------------------------------------------------------------------------ index


def test_scan_lists_classes_sorted_and_labels(tree, index):
    assert index.classes == CLASSES and index.num_classes == 3
    assert len(index) == 3 * PER_CLASS and index.labels.dtype == np.int64
    assert index.labels.tolist() == [label for label in range(3) for _ in range(PER_CLASS)]
    for file, label in zip(index.files, index.labels, strict=True):
        path = Path(file)
        assert path.parent.name == CLASSES[label] and path.parent.parent == tree / "train"
    names = [Path(f).name for f in index.files[:PER_CLASS]]
    assert names == sorted(names) and not any(n.endswith(".txt") for n in index.files)


def test_scan_test_part_from_val(tmp_path):
    _write_tree(tmp_path)
    _write_tree(tmp_path, "val", classes=["dog"])
    train = ImageFolderIndex.scan(str(tmp_path))
    val = ImageFolderIndex.scan(str(tmp_path), "test", classes=train.classes)
    assert val.classes == CLASSES and set(val.labels.tolist()) == {1}
    assert len(val) == PER_CLASS and all("/val/dog/" in f for f in val.files)
    assert ImageFolderIndex.scan(str(tmp_path), "test").files == val.files


def test_scan_errors_name_the_uri(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(ValueError, match=r"empty.*no class folders"):
        ImageFolderIndex.scan(str(root))
    (root / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty.*no \.jpg/\.jpeg/\.png images"):
        ImageFolderIndex.scan(str(root))
    with pytest.raises(FileNotFoundError, match="no test part"):
        ImageFolderIndex.scan(str(root), "test")
    _write_tree(tmp_path / "bad")
    _write_tree(tmp_path / "bad", "val", classes=["dog", "zebra"])
    with pytest.raises(ValueError, match=r"bad.*\['zebra'\].*not in train/"):
        ImageFolderIndex.scan(str(tmp_path / "bad"), "test")
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderIndex.scan(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="part must be one of"):
        ImageFolderIndex.scan(str(root), "valid")


# ------------------------------------------------------------------------------ train batches


def test_train_batches_follow_the_trainer_contract(index, split):
    train, _ = split
    seed, spe, b = 5, 3, 4
    got = _train(index, train, augment=False)
    for step, (x, y) in enumerate(got):
        assert x.dtype == torch.uint8 and x.shape == (b, 3, RES, RES) and y.dtype == torch.int64
        epoch, pos = divmod(step, spe)
        order = np.random.default_rng([seed, epoch, 2]).permutation(len(train))
        expected = train[order[pos * b : (pos + 1) * b]]
        assert y.tolist() == index.labels[expected].tolist()
        want = torch.stack([eval_transform(read_image(index.files[i]), RES) for i in expected])
        assert torch.equal(x, want)
    for epoch in range(2):  # each epoch visits the split exactly once
        labels = torch.cat([y for _, y in got[epoch * spe : (epoch + 1) * spe]])
        assert Counter(labels.tolist()) == Counter(index.labels[train].tolist())


def test_train_batches_same_with_workers_resumed_and_split_over_ranks(index, split):
    train, _ = split
    base = _train(index, train, count=5)
    _assert_same(_train(index, train, count=5, num_workers=2), base)
    _assert_same(_train(index, train, start_step=2, count=3), base[2:])
    ranks = [_train(index, train, count=5, rank=r, world=2, num_workers=r) for r in (0, 1)]
    for step, ((x0, y0), (x1, y1)) in enumerate(zip(*ranks, strict=True)):
        assert x0.shape[0] == 2
        assert torch.equal(torch.cat([x0, x1]), base[step][0])
        assert torch.equal(torch.cat([y0, y1]), base[step][1])


def test_train_batches_with_spawned_workers(index, split):
    train, _ = split
    base = _train(index, train, count=2, start_step=4)
    spawned = _train(
        index, train, count=2, start_step=4, num_workers=1, multiprocessing_context="spawn"
    )
    _assert_same(spawned, base)


def test_augmentation_depends_on_step_and_image_only(index):
    data = StreamingImages(index, resolution=RES, augment=True, seed=5)
    crops = [data[(4, step)][0] for step in range(4)]
    assert all(c.shape == (3, RES, RES) and c.dtype == torch.uint8 for c in crops)
    assert len({c.numpy().tobytes() for c in crops}) == 4  # different steps, different crops
    assert torch.equal(data[(4, 2)][0], crops[2])
    again = pickle.loads(pickle.dumps(data))  # what spawned workers receive
    assert torch.equal(again[(4, 1)][0], crops[1]) and again[(4, 1)][1] == index.labels[4]
    other_seed = StreamingImages(index, resolution=RES, augment=True, seed=6)
    assert not torch.equal(other_seed[(4, 2)][0], crops[2])


def test_random_resized_crop_boxes_stay_inside_and_in_range():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        height, width = (30, 40) if seed % 2 else (200, 90)
        top, left, h, w = random_resized_crop_params(height, width, rng)
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        assert h > 0 and w > 0 and 0.07 <= h * w / (height * width) <= 1.0
    # an extreme aspect ratio never fits: the central fallback clamps the ratio to 4/3
    assert random_resized_crop_params(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 13)


def test_train_batches_reject_bad_arguments(index, split):
    train, _ = split
    with pytest.raises(ValueError, match=r"batch_size 5 must be divisible by the world size 2"):
        _train(index, train, batch_size=5, world=2, steps_per_epoch=2)
    with pytest.raises(ValueError, match=r"rank 2 must be in \[0, world\)"):
        _train(index, train, rank=2, world=2)
    with pytest.raises(ValueError, match="exceeds the 12 training images"):
        _train(index, train, steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 18\)"):
        _train(index, np.array([0, 18]))


# ----------------------------------------------------------------------------------- eval


def test_eval_transform_resizes_shorter_side_and_crops_the_center():
    image = torch.zeros(3, 48, 64, dtype=torch.uint8)  # 64 wide, 48 high
    image[1, :, :8] = image[1, :, 56:] = 255  # green edges: outside the center crop
    image[0, :, 8:32] = 255  # red left
    image[2, :, 32:56] = 255  # blue right
    out = eval_transform(image, 14)  # shorter side → round(14 / 0.875) = 16, then 14 × 14
    assert out.shape == (3, 14, 14) and out.dtype == torch.uint8
    assert int(out[1].max()) == 0  # squashing the whole image would have kept green
    red, blue = torch.tensor([255, 0, 0]), torch.tensor([0, 0, 255])
    assert torch.equal(out[:, :, :5].permute(1, 2, 0).reshape(-1, 3), red.expand(70, 3).byte())
    assert torch.equal(out[:, :, 9:].permute(1, 2, 0).reshape(-1, 3), blue.expand(70, 3).byte())
    tall = eval_transform(image.transpose(1, 2), 14)  # 48 wide, 64 high: the same, transposed
    assert torch.equal(tall, out.transpose(1, 2))


def test_eval_batches_in_order_and_round_robin_over_ranks(index, split):
    _, valid = split
    whole = list(eval_batches(index, valid, batch_size=4, resolution=RES, num_workers=0))
    assert [x.shape[0] for x, _ in whole] == [4, 2]
    assert torch.cat([y for _, y in whole]).tolist() == index.labels[valid].tolist()
    want = torch.stack([eval_transform(read_image(index.files[i]), RES) for i in valid])
    assert torch.equal(torch.cat([x for x, _ in whole]), want)
    ranks = [
        list(
            eval_batches(index, valid, batch_size=4, resolution=RES, rank=r, world=2, num_workers=1)
        )
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 1
    _assert_same([ranks[0][0], ranks[1][0]], whole)


def test_decode_falls_back_to_pil_and_names_bad_files(tmp_path, monkeypatch):
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    bmp = tmp_path / "really_a_bmp.jpg"
    Image.fromarray(pixels).save(bmp, format="BMP")
    assert torch.equal(read_image(str(bmp)), torch.from_numpy(pixels).permute(2, 0, 1))
    gray = tmp_path / "gray.png"
    Image.fromarray(pixels[..., 0]).save(gray)
    assert torch.equal(read_image(str(gray)), torch.from_numpy(pixels[..., 0]).expand(3, 9, 11))
    monkeypatch.setattr(decode, "decode_image", None)  # a torchvision without image decoders
    assert torch.equal(read_image(str(gray)), torch.from_numpy(pixels[..., 0]).expand(3, 9, 11))
    with pytest.raises(ValueError, match="broken.jpg"):
        decode_image_bytes(b"not an image at all", "broken.jpg")
    with pytest.raises(ValueError, match="empty.png.*empty"):
        decode_image_bytes(b"", "empty.png")


# ---------------------------------------------------------------------------- gs://, s3://


def test_a_bucket_tree_streams_like_the_local_one(tree, index, split, remote):
    """On gs:// and s3:// (``remote``), DataLoader workers included."""
    uri = f"{remote.bucket}/imagenet"
    storage.upload_dir(tree, uri)
    remote = ImageFolderIndex.scan(uri)
    assert remote.classes == index.classes
    assert np.array_equal(remote.labels, index.labels)
    local_names = [Path(f).relative_to(tree).as_posix() for f in index.files]
    assert remote.files == [f"{uri}/{name}" for name in local_names]
    train, _ = split
    remote_batches = _train(remote, train, count=1, start_step=1, num_workers=2)
    _assert_same(remote_batches, _train(index, train, count=1, start_step=1))


def test_a_flat_val_folder_is_refused_alike_on_disk_and_in_a_bucket(tmp_path, remote):
    """ImageNet's raw val/ (images, no class folders) must fail loudly, not vanish as no test part."""
    root = tmp_path / "flat-val"
    _write_tree(root)
    (root / "val").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    uri = f"{remote.bucket}/flat-val"
    storage.upload_dir(root, uri)
    for where in (str(root), uri):
        with pytest.raises(ValueError, match="must sit in <class>/ folders"):
            ImageFolderIndex.scan(where, "test")


def test_held_out_images_reach_the_device_batch_by_batch(index, split, monkeypatch):
    """The scorer's validation images of a streamed split are those of the in-memory path (the
    evaluation transform, in order), decoded in batches straight into the device tensor."""
    from kshot.stages import data

    _, valid = split
    part = stream.StreamedPart(index, valid, RES, num_workers=0)
    monkeypatch.setattr(data, "_DECODE_BATCH", 4)  # several batches, the last one short
    on_device = data.images_on_device(part, 5, torch.device("cpu"))
    want = torch.stack([eval_transform(read_image(index.files[i]), RES) for i in valid[:5]])
    assert on_device.dtype == torch.uint8 and torch.equal(on_device, want)
