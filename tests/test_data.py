"""Tests of kshot.data: every dataset layout, bad input, splits and batch transforms.

The layouts other than "digits" are written inside ``tmp_path`` from a few dozen rows of the real
CIFAR-10 parquet in ``$KSHOT_TEST_DATA`` (default ``../shared/data``) and must load back to the same pixels and labels.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from kshot.data import (
    ImageDataset,
    batches,
    channel_stats,
    load_dataset,
    make_split,
    normalize,
    random_crop_flip,
    split_from_dict,
    split_to_dict,
)
from tests.conftest import SHARED_DATA, shared_data

CIFAR10_PARQUET = SHARED_DATA / "cifar10" / "train.parquet"
NUM_ROWS = 40


class Rows:
    """A few CIFAR-10 rows: the parquet table, its JPEG bytes, decoded pixels and labels."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.jpeg = table.column("image").combine_chunks().field("bytes").to_pylist()
        self.pixels = np.stack(
            [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in self.jpeg]
        ).transpose(0, 3, 1, 2)
        self.labels = table.column("label").to_numpy().astype(np.int64)


@pytest.fixture(scope="module")
def rows() -> Rows:
    shared_data("cifar10", "train.parquet")
    return Rows(pq.ParquetFile(CIFAR10_PARQUET).read_row_group(0).slice(0, NUM_ROWS))


def write_pickle(path: Path, content: dict, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=protocol))


def write_cifar10(folder: Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Five train batches of 6 images and a test batch of the rest, as in cifar-10-batches-py."""
    flat = pixels.reshape(len(pixels), -1)
    for batch in range(5):
        rows = slice(6 * batch, 6 * batch + 6)
        content = {b"data": flat[rows], b"labels": labels[rows].tolist(), b"batch_label": b"x"}
        write_pickle(folder / f"data_batch_{batch + 1}", content)
    write_pickle(folder / "test_batch", {b"data": flat[30:], b"labels": labels[30:].tolist()})


def assert_loads(dataset: ImageDataset | None, pixels: np.ndarray, labels: np.ndarray) -> None:
    assert dataset is not None
    assert dataset.images.dtype == torch.uint8 and dataset.labels.dtype == torch.int64
    np.testing.assert_array_equal(dataset.images.numpy(), pixels)
    np.testing.assert_array_equal(dataset.labels.numpy(), labels)
    assert len(dataset) == len(labels)


def write_png(path: Path, pixels_chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels_chw.transpose(1, 2, 0))).save(path)


# --- layouts -------------------------------------------------------------------------------------


def test_digits_loads_whole_set_as_train_and_has_no_test() -> None:
    dataset = load_dataset("digits")
    assert dataset is not None
    assert tuple(dataset.images.shape) == (1797, 1, 8, 8)
    assert dataset.images.dtype == torch.uint8 and int(dataset.images.max()) == 255
    assert dataset.num_classes == 10 and set(dataset.labels.tolist()) == set(range(10))
    assert load_dataset("digits", "test") is None
    assert load_dataset("digits") is dataset  # decoded once


def test_cifar10_pickles_from_folder_or_parent(rows: Rows, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, rows.pixels, rows.labels)
    for uri in (str(folder), str(tmp_path)):
        train = load_dataset(uri, "train")
        assert_loads(train, rows.pixels[:30], rows.labels[:30])
        assert train.num_classes == 10 and train.name == "cifar10"
        assert_loads(load_dataset(uri, "test"), rows.pixels[30:], rows.labels[30:])


def test_cifar100_pickles(rows: Rows, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    fine = rows.labels * 10 + 7
    flat = rows.pixels.reshape(NUM_ROWS, -1)
    write_pickle(folder / "train", {b"data": flat[:25], b"fine_labels": fine[:25].tolist()})
    write_pickle(folder / "test", {b"data": flat[25:], b"fine_labels": fine[25:].tolist()}, 5)
    train = load_dataset(str(tmp_path))
    assert_loads(train, rows.pixels[:25], fine[:25])
    assert train.num_classes == 100 and train.name == "cifar100"
    assert_loads(load_dataset(str(folder), "test"), rows.pixels[25:], fine[25:])


def test_imagenet16_keeps_first_120_classes_zero_based(rows: Rows, tmp_path: Path) -> None:
    folder = tmp_path / "ImageNet16"
    small = np.ascontiguousarray(rows.pixels[:, :, ::2, ::2])
    one_based = rows.labels + 1
    one_based[::4] = 500  # a class beyond the first 120: dropped
    kept = one_based <= 120
    for batch in range(10):
        rows_of_batch = slice(3 * batch, 3 * batch + 3)
        content = {"data": small[rows_of_batch].reshape(3, -1), "labels": one_based[rows_of_batch]}
        write_pickle(folder / f"train_data_batch_{batch + 1}", content, protocol=4)
    write_pickle(
        folder / "val_data", {"data": small[30:].reshape(10, -1), "labels": one_based[30:]}
    )
    train = load_dataset(str(tmp_path))
    assert_loads(train, small[:30][kept[:30]], one_based[:30][kept[:30]] - 1)
    assert train.num_classes == 120 and tuple(train.images.shape[1:]) == (3, 16, 16)
    assert_loads(
        load_dataset(str(folder), "test"), small[30:][kept[30:]], one_based[30:][kept[30:]] - 1
    )


def test_parquet_file_and_folder_with_shards(rows: Rows, tmp_path: Path) -> None:
    single = tmp_path / "single" / "cifar10.parquet"
    single.parent.mkdir()
    pq.write_table(rows.table, single)
    train = load_dataset(str(single))
    assert_loads(train, rows.pixels, rows.labels)
    assert train.num_classes == 10 and train.name == "cifar10"
    assert load_dataset(str(single), "test") is None

    folder = tmp_path / "sharded"
    folder.mkdir()
    pq.write_table(rows.table.slice(0, 15), folder / "train-00000-of-00002.parquet")
    pq.write_table(rows.table.slice(15, 15), folder / "train-00001-of-00002.parquet")
    pq.write_table(rows.table.slice(30), folder / "test.parquet")
    assert_loads(load_dataset(str(folder)), rows.pixels[:30], rows.labels[:30])
    assert_loads(load_dataset(str(folder), "test"), rows.pixels[30:], rows.labels[30:])


def test_parquet_without_label_names_counts_classes_from_labels(rows: Rows, tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(rows.table.replace_schema_metadata(None), path)
    assert load_dataset(str(path)).num_classes == int(rows.labels.max()) + 1


def test_class_folders_sorted_classes_and_resolution(rows: Rows, tmp_path: Path) -> None:
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    for index in range(NUM_ROWS):
        part = "train" if index < 30 else "val"
        write_png(
            tmp_path / part / names[rows.labels[index]] / f"{index:03d}.png", rows.pixels[index]
        )
    (tmp_path / "train" / "readme.txt").write_text("not an image")
    order = sorted(range(30), key=lambda index: (rows.labels[index], index))
    train = load_dataset(str(tmp_path))
    assert_loads(train, rows.pixels[order], rows.labels[order])
    assert train.num_classes == len({names[label] for label in rows.labels[:30]})
    test_order = sorted(range(30, NUM_ROWS), key=lambda index: (rows.labels[index], index))
    assert_loads(
        load_dataset(str(tmp_path), "test"), rows.pixels[test_order], rows.labels[test_order]
    )
    resized = load_dataset(str(tmp_path), resolution=8)
    assert tuple(resized.images.shape) == (30, 3, 8, 8)


def test_resolution_resizes_array_layouts() -> None:
    dataset = load_dataset("digits", resolution=16)
    assert tuple(dataset.images.shape) == (1797, 1, 16, 16)


# --- bad input -----------------------------------------------------------------------------------


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(missing)


@pytest.mark.parametrize("content", ["folder", "file"])
def test_unknown_layout_names_uri_and_lists_layouts(tmp_path: Path, content: str) -> None:
    target = tmp_path / "odd"
    if content == "folder":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    else:
        target = tmp_path / "table.csv"
        target.write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown dataset layout") as error:
        load_dataset(str(target))
    assert str(target) in str(error.value) and "cifar-10-batches-py" in str(error.value)


def test_bad_part_and_resolution() -> None:
    with pytest.raises(ValueError, match="'valid'"):
        load_dataset("digits", "valid")
    with pytest.raises(ValueError, match="resolution"):
        load_dataset("digits", resolution=0)


def test_cifar_label_out_of_range_names_file(rows: Rows, tmp_path: Path) -> None:
    labels = rows.labels.copy()
    labels[3] = 10
    write_cifar10(tmp_path, rows.pixels, labels)
    with pytest.raises(ValueError, match=r"data_batch_1.*label 10 is outside \[0, 10\)"):
        load_dataset(str(tmp_path))


def test_parquet_label_beyond_label_names_names_uri(rows: Rows, tmp_path: Path) -> None:
    path = tmp_path / "three.parquet"
    pq.write_table(rows.table.replace_schema_metadata({"label_names": "a,b,c"}), path)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)") as error:
        load_dataset(str(path))
    assert str(path) in str(error.value)


def test_mixed_image_sizes_name_the_file(rows: Rows, tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "a" / "big.png", rows.pixels[0])
    write_png(tmp_path / "train" / "b" / "small.png", rows.pixels[1][:, :16, :16])
    with pytest.raises(ValueError, match="small.png is 16x16"):
        load_dataset(str(tmp_path))
    assert tuple(load_dataset(str(tmp_path), resolution=16).images.shape) == (2, 3, 16, 16)


def test_pickle_with_foreign_global_is_refused_unexecuted(tmp_path: Path) -> None:
    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        write_pickle(tmp_path / name, {b"data": Sneaky(), b"labels": [0]})
    with pytest.raises(ValueError, match="posix.getcwd is not allowed|nt.getcwd is not allowed"):
        load_dataset(str(tmp_path))


def test_image_dataset_validates() -> None:
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="label 3 is outside"):
        ImageDataset(images, torch.tensor([0, 3]), num_classes=3, name="toy")
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        ImageDataset(images, torch.tensor([0]), num_classes=3, name="toy")
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), torch.tensor([0, 1]), num_classes=3, name="toy")


@pytest.mark.slow
def test_real_cifar10_decodes_with_expected_channel_means() -> None:
    shared_data("cifar10", "train.parquet")
    train = load_dataset(str(CIFAR10_PARQUET.parent))
    assert tuple(train.images.shape) == (50000, 3, 32, 32) and train.num_classes == 10
    assert np.bincount(train.labels.numpy()).tolist() == [5000] * 10
    mean, _ = channel_stats(train.images)
    np.testing.assert_allclose(np.array(mean) * 255, [125.27, 122.93, 113.86], atol=0.01)
    assert len(load_dataset(str(CIFAR10_PARQUET.parent), "test")) == 10000


# --- splits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("carve_test", [False, True])
def test_split_deterministic_disjoint_covering(carve_test: bool) -> None:
    split = make_split(1797, valid_fraction=0.2, seed=3, carve_test=carve_test)
    again = make_split(1797, valid_fraction=0.2, seed=3, carve_test=carve_test)
    other = make_split(1797, valid_fraction=0.2, seed=4, carve_test=carve_test)
    parts = [split.train, split.valid] + ([split.test] if carve_test else [])
    assert (split.test is None) == (not carve_test)
    for part, part_again in zip(parts, [again.train, again.valid, again.test], strict=False):
        np.testing.assert_array_equal(part, part_again)
        assert part.dtype == np.int64
    assert not np.array_equal(split.valid, other.valid)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1797))
    held_out = round(1797 * 0.2)
    assert len(split.train) == 1797 - held_out
    if carve_test:
        assert (len(split.valid), len(split.test)) == (held_out - held_out // 2, held_out // 2)


@pytest.mark.parametrize("carve_test", [False, True])
def test_split_round_trips_through_json(carve_test: bool) -> None:
    split = make_split(100, valid_fraction=0.3, seed=0, carve_test=carve_test)
    data = json.loads(json.dumps(split_to_dict(split, "digits", seed=0, valid_fraction=0.3)))
    assert data["dataset"] == "digits" and data["num_images"] == 100 and data["seed"] == 0
    loaded = split_from_dict(data, "split.json", num_images=100)
    np.testing.assert_array_equal(loaded.train, split.train)
    np.testing.assert_array_equal(loaded.valid, split.valid)
    assert (loaded.test is None) == (split.test is None)
    if carve_test:
        np.testing.assert_array_equal(loaded.test, split.test)


def test_split_bad_input() -> None:
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="valid_fraction"):
            make_split(100, fraction, seed=0, carve_test=False)
    with pytest.raises(ValueError, match="cannot split 2 images"):
        make_split(2, 0.5, seed=0, carve_test=True)
    data = split_to_dict(make_split(10, 0.2, seed=0, carve_test=False), "d", 0, 0.2)
    with pytest.raises(ValueError, match="split.json: split covers 10 images.*has 20"):
        split_from_dict(data, "split.json", num_images=20)
    with pytest.raises(ValueError, match=r"split.json: 'valid' holds index 10, outside \[0, 10\)"):
        split_from_dict({**data, "valid": [10]}, "split.json")
    with pytest.raises(ValueError, match="in more than one part"):
        split_from_dict({**data, "valid": data["valid"] + data["train"][:1]}, "split.json")
    with pytest.raises(ValueError, match="missing keys"):
        split_from_dict({"train": []}, "split.json")


# --- transforms ----------------------------------------------------------------------------------


def test_random_crop_flip_deterministic_and_identity() -> None:
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = random_crop_flip(images, torch.Generator().manual_seed(5))
    second = random_crop_flip(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, second) and first.shape == images.shape
    assert not torch.equal(first, random_crop_flip(images, torch.Generator().manual_seed(6)))
    identity = random_crop_flip(images, torch.Generator(), pad=0, flip=False)
    assert torch.equal(identity, images)


def test_random_crop_flip_takes_windows_of_the_padded_image() -> None:
    images = torch.rand(32, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    out = random_crop_flip(images, torch.Generator().manual_seed(2), pad=2, flip=True)
    windows_seen = set()
    for index in range(len(images)):
        matches = [
            (top, left, flipped)
            for top in range(5)
            for left in range(5)
            for flipped in (False, True)
            if torch.equal(
                out[index],
                padded[index, :, top : top + 6, left : left + 6].flip(-1)
                if flipped
                else padded[index, :, top : top + 6, left : left + 6],
            )
        ]
        assert matches, f"image {index} is not a (flipped) window of the padded input"
        windows_seen.update(matches)
    assert any(flipped for _, _, flipped in windows_seen)
    assert any(not flipped for _, _, flipped in windows_seen)


def test_normalize_and_channel_stats() -> None:
    images = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    scaled = images.double() / 255
    np.testing.assert_allclose(mean, scaled.mean(dim=(0, 2, 3)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std, scaled.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-9)
    normalized = normalize(images, mean, std)
    assert normalized.dtype == torch.float32
    np.testing.assert_allclose(normalized.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalized.std(dim=(0, 2, 3), unbiased=False).numpy(), 1, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels but mean has 1"):
        normalize(images, [0.5], [0.5])


def test_batches() -> None:
    indices = np.arange(10)
    assert [len(batch) for batch in batches(indices, 4, drop_last=False)] == [4, 4, 2]
    assert [len(batch) for batch in batches(indices, 4, drop_last=True)] == [4, 4]
    np.testing.assert_array_equal(np.concatenate(list(batches(indices, 3, False))), indices)
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(indices, 0, drop_last=False))
