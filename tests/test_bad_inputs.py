"""Bad input gets a clear error naming it, before any expensive work, and nothing is written.

Each row of the table runs one ``kshot stage`` command (``kshot.cli.main``, as a user would) with
one bad input: the command must exit with code 2, print ``kshot stage: error: …`` naming the
offending value (URI, config key, arch string, file), and leave the output folder exactly as it was:
no new file, and an output that already existed keeps its old bytes.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from kshot import storage
from kshot.cli import main
from kshot.config import load_config
from kshot.spaces import nb201
from kshot.stages import run_stage
from kshot.train import checkpoint as ckpt
from tests.conftest import TINY

SENTINEL = b"old bytes of an earlier, successful run\n"
VALID_ARCH = nb201.format_arch(nb201.from_index(1234))
OTHER_ARCHS = [nb201.format_arch(nb201.from_index(i)) for i in (7, 9999)]
NO_BUCKET = "gs://kshot-no-such-bucket"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good artifacts (TINY config file, digits split, a warmup checkpoint, search results and a
    ground-truth table) that each row spoils one thing of."""
    d = tmp_path_factory.mktemp("good")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cfg = load_config(TINY)
    run_stage("split", cfg, {}, {"split": str(d / "split.json")})
    run_stage("warmup", cfg, {"split": str(d / "split.json")}, {"checkpoint": str(d / "warm")})
    (d / "results.json").write_text(json.dumps({"best": {"arch": VALID_ARCH}}))
    rows = zip([VALID_ARCH, *OTHER_ARCHS], (50.0, 60.0, 70.0), strict=True)
    (d / "truth.csv").write_text("arch,accuracy\n" + "".join(f"{a},{v}\n" for a, v in rows))
    return d


# ------------------------------------------------------------------- files that spoil a run


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _newest_checkpoint(good: Path) -> Path:
    return Path(ckpt.list_checkpoints(str(good / "warm"))[-1])


def empty_checkpoint(t: Path, good: Path) -> None:
    (t / "empty-ckpt").mkdir()
    (t / "empty-ckpt" / _newest_checkpoint(good).name).write_bytes(b"")


def truncated_checkpoint(t: Path, good: Path) -> None:
    newest = _newest_checkpoint(good)
    (t / "cut-ckpt").mkdir()
    (t / "cut-ckpt" / newest.name).write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])


def parquet_label_out_of_range(t: Path, good: Path) -> None:
    """Two classes named in the schema, and a label 5."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": _png(8), "path": f"{i}.png"} for i in range(4)], image),
            "label": pa.array([0, 1, 5, 0], pa.int64()),
        }
    ).replace_schema_metadata({"label_names": "zero,one"})
    pq.write_table(table, t / "bad.parquet")


def cifar_label_out_of_range(t: Path, good: Path) -> None:
    """A CIFAR-10 pickle folder whose last training batch holds a label 10."""
    folder = t / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 10] if name == "data_batch_5" else [0, 9]
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def mixed_image_sizes(t: Path, good: Path) -> None:
    for cls, side in (("a", 8), ("b", 6)):
        (t / "tree" / "train" / cls).mkdir(parents=True)
        (t / "tree" / "train" / cls / f"{cls}.png").write_bytes(_png(side))


def file_where_a_folder_should_be(t: Path, good: Path) -> None:
    (t / "afile").write_bytes(b"a file, not a folder")


def config_with_unknown_key(t: Path, good: Path) -> None:
    (t / "bad.yaml").write_text(yaml.safe_dump({**TINY, "colour": "red"}))


def results_with_invalid_arch(t: Path, good: Path) -> None:
    (t / "results.json").write_text(json.dumps({"best": {"arch": "|conv_5x5~0|+|none~0|"}}))


def truth_without_the_column(t: Path, good: Path) -> None:
    (t / "truth.csv").write_text(f"arch,acc\n{VALID_ARCH},50.0\n")


def truth_of_one_path(t: Path, good: Path) -> None:
    (t / "one.csv").write_text(f"arch,accuracy\n{VALID_ARCH},50.0\n")


def truth_of_equal_accuracies(t: Path, good: Path) -> None:
    archs = [VALID_ARCH, *OTHER_ARCHS]
    (t / "flat.csv").write_text("arch,accuracy\n" + "".join(f"{a},50.0\n" for a in archs))


def split_of_another_dataset(t: Path, good: Path) -> None:
    split = {
        "dataset": "gs://datasets/cifar10-small.parquet",
        "seed": 0,
        "valid_fraction": 0.5,
        "num_images": 20,
        "train": list(range(10)),
        "valid": list(range(10, 20)),
        "test": None,
    }
    (t / "other-split.json").write_text(json.dumps(split))


def split_that_is_not_json(t: Path, good: Path) -> None:
    (t / "garbage.json").write_text('{"train": [1, 2,')


def output_folder_of_another_k(t: Path, good: Path) -> None:
    """An output checkpoint folder already holding a K = 4 run (the existing output to keep)."""
    shutil.copytree(good / "warm", t / "out" / "trained")


class _RunsCodeWhenLoaded:
    """Unpickling it calls ``open(marker, "w")``: creates the marker file, if anything runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _spoiled_checkpoint(t: Path, good: Path, folder: str, state: object) -> None:
    (t / folder).mkdir()
    torch.save(state, t / folder / _newest_checkpoint(good).name)


def checkpoint_that_runs_code(t: Path, good: Path) -> None:
    """A real checkpoint, plus one value whose unpickling would create ``{t}/MARKER``."""
    state = torch.load(_newest_checkpoint(good), weights_only=True)
    state["history"]["note"] = _RunsCodeWhenLoaded(t / "MARKER")
    _spoiled_checkpoint(t, good, "evil-ckpt", state)


def checkpoint_that_is_a_list(t: Path, good: Path) -> None:
    _spoiled_checkpoint(t, good, "list-ckpt", [torch.zeros(2)])


def checkpoint_without_supernet(t: Path, good: Path) -> None:
    state = torch.load(_newest_checkpoint(good), weights_only=True)
    del state["supernet"]
    _spoiled_checkpoint(t, good, "nosupernet-ckpt", state)


def split_with_an_empty_train_part(t: Path, good: Path) -> None:
    split = json.loads((good / "split.json").read_text())
    split["valid"] = sorted(split["valid"] + split["train"])
    split["train"] = []
    (t / "empty-train.json").write_text(json.dumps(split))


def folder_where_a_file_should_be(t: Path, good: Path) -> None:
    (t / "out" / "results.json").mkdir()
    (t / "out" / "results.json" / "kept.txt").write_bytes(SENTINEL)


# ------------------------------------------------------------------------------- the table


@dataclass
class Case:
    """One bad input: the stage, what differs from a good command, and what the error says."""

    id: str
    stage: str
    says: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    setup: Callable[[Path, Path], None] | None = None
    existing: tuple[str, ...] = ()  # output files an earlier run left, which must keep their bytes
    warns: str | None = None
    gcs: bool = False


GOOD_INPUTS = {
    "split": {},
    "warmup": {"split": "{good}/split.json"},
    "train": {"split": "{good}/split.json", "checkpoint": "{good}/warm"},
    "search": {"split": "{good}/split.json", "checkpoint": "{good}/warm"},
    "retrain": {"split": "{good}/split.json", "results": "{good}/results.json"},
    "rank": {
        "split": "{good}/split.json",
        "checkpoint": "{good}/warm",
        "ground_truth": "{good}/truth.csv",
    },
}
GOOD_OUTPUTS = {
    "split": {"split": "{out}/split.json"},
    "warmup": {"checkpoint": "{out}/warm"},
    "train": {"checkpoint": "{out}/trained"},
    "search": {"results": "{out}/results.json"},
    "retrain": {"model": "{out}/model.pt", "metrics": "{out}/metrics.json"},
    "rank": {"scores": "{out}/scores.csv", "metrics": "{out}/rank.json"},
}

CASES = [
    # --- URIs
    Case(
        "gs-uri-without-bucket",
        "warmup",
        ("input artifact split='gs://'", "no bucket name"),
        inputs={"split": "gs://"},
    ),
    Case(
        "unsupported-input-uri",
        "warmup",
        ("split='hdfs://node/split.json'", "unsupported URI scheme 'hdfs'"),
        inputs={"split": "hdfs://node/split.json"},
    ),
    Case(
        "unsupported-output-uri",
        "search",
        ("output artifact results='hdfs://node/results.json'", "unsupported URI scheme"),
        outputs={"results": "hdfs://node/results.json"},
    ),
    Case(
        "invalid-s3-bucket-name",
        "search",
        ("s3://under_score/results.json", "bucket name 'under_score'"),
        outputs={"results": "s3://under_score/results.json"},
    ),
    Case(
        "invalid-bucket-name",
        "search",
        ("gs://Not_A_Bucket!/results.json", "bucket name 'Not_A_Bucket!'"),
        outputs={"results": "gs://Not_A_Bucket!/results.json"},
    ),
    Case(
        "missing-bucket-input",
        "warmup",
        (f"{NO_BUCKET}/split.json", f"bucket {NO_BUCKET} does not exist"),
        inputs={"split": f"{NO_BUCKET}/split.json"},
        gcs=True,
    ),
    Case(
        "missing-bucket-output",
        "search",
        (f"results='{NO_BUCKET}/results.json'", f"bucket {NO_BUCKET} does not exist"),
        outputs={"results": f"{NO_BUCKET}/results.json"},
        gcs=True,
    ),
    Case(
        "missing-gcs-object",
        "warmup",
        ("{bucket}/no-such-split.json does not exist",),
        inputs={"split": "{bucket}/no-such-split.json"},
        gcs=True,
    ),
    Case(
        "gs-uri-with-one-slash-is-not-a-local-file",
        "split",
        ("output artifact split='gs:/bucket/split.json'", "malformed URI", "followed by '//'"),
        outputs={"split": "gs:/bucket/split.json"},
    ),
    Case(
        "gs-uri-without-slashes",
        "warmup",
        ("input artifact split='gs:bucket/split.json'", "malformed URI"),
        inputs={"split": "gs:bucket/split.json"},
    ),
    Case(
        "gs-uri-with-a-dot-segment",
        "warmup",
        ("'gs://kshot-data/a/./split.json'", "'.' and '..' segments"),
        inputs={"split": "gs://kshot-data/a/./split.json"},
    ),
    Case(
        "gs-uri-with-an-empty-segment",
        "search",
        ("'gs://kshot-data/run//results.json'", "empty, '.' and '..' segments"),
        outputs={"results": "gs://kshot-data/run//results.json"},
    ),
    Case(
        "bucket-where-a-file-output-is-expected",
        "search",
        ("results='gs://kshot-data'", "names a bucket or folder"),
        outputs={"results": "gs://kshot-data"},
    ),
    Case(
        "gcs-folder-where-a-file-output-is-expected",
        "search",
        ("results='gs://kshot-data/run/'", "names a bucket or folder"),
        outputs={"results": "gs://kshot-data/run/"},
    ),
    Case(
        "existing-folder-where-a-file-output-is-expected",
        "search",
        ("results='{out}/results.json'", "is a folder, but a file is expected"),
        setup=folder_where_a_file_should_be,
    ),
    Case(
        "file-where-a-folder-output-is-expected",
        "warmup",
        ("checkpoint='{t}/afile'", "{t}/afile is a file, but a folder is expected"),
        outputs={"checkpoint": "{t}/afile"},
        setup=file_where_a_folder_should_be,
    ),
    Case(
        "file-where-a-folder-input-is-expected",
        "search",
        ("input artifact checkpoint='{good}/split.json'", "is a file, but a folder is expected"),
        inputs={"checkpoint": "{good}/split.json"},
    ),
    Case(
        "folder-where-a-file-input-is-expected",
        "warmup",
        ("input artifact split='{good}/warm'", "is a folder, but a file is expected"),
        inputs={"split": "{good}/warm"},
    ),
    Case(
        "unknown-output-artifact-name",
        "train",
        ("no output artifact 'curve'", "did you mean 'curves'?"),
        outputs={"checkpoint": "{out}/trained", "curve": "{out}/curves.json"},
    ),
    Case(
        "unknown-output-artifact-name-refused-before-torchrun-starts",
        "search",
        ("no output artifact 'result'", "did you mean 'results'?"),
        outputs={"result": "{out}/results.json"},
        extra=("--workers", "2"),
    ),
    Case(
        "unknown-input-artifact-name",
        "search",
        ("no input artifact 'checkpoints'", "did you mean 'checkpoint'?"),
        inputs={"checkpoints": "{good}/warm"},
    ),
    Case(
        "missing-local-file",
        "warmup",
        ("{t}/no-such-split.json",),
        inputs={"split": "{t}/no-such-split.json"},
    ),
    Case(
        "unwritable-output-under-a-file",
        "search",
        ("results='{t}/afile/results.json'", "{t}/afile is a file, not a folder"),
        outputs={"results": "{t}/afile/results.json"},
        setup=file_where_a_folder_should_be,
    ),
    # --- checkpoints
    Case(
        "missing-checkpoint-folder",
        "search",
        ("input artifact checkpoint='{t}/no-ckpt': {t}/no-ckpt does not exist",),
        inputs={"checkpoint": "{t}/no-ckpt"},
    ),
    Case(
        "empty-checkpoint-file",
        "search",
        ("'{t}/empty-ckpt' holds only damaged checkpoints",),
        inputs={"checkpoint": "{t}/empty-ckpt"},
        setup=empty_checkpoint,
        warns="empty-ckpt/ckpt-.* is damaged",
    ),
    Case(
        "truncated-checkpoint",
        "search",
        ("'{t}/cut-ckpt' holds only damaged checkpoints",),
        inputs={"checkpoint": "{t}/cut-ckpt"},
        setup=truncated_checkpoint,
        warns="cut-ckpt/ckpt-.* is damaged",
    ),
    Case(
        "checkpoint-that-would-run-code-is-refused-unrun",
        "search",
        ("refusing to load {t}/evil-ckpt/ckpt-", "would run as code"),
        inputs={"checkpoint": "{t}/evil-ckpt"},
        setup=checkpoint_that_runs_code,
    ),
    Case(
        "checkpoint-that-is-a-list",
        "search",
        ("checkpoint {t}/list-ckpt/ckpt-", "holds a list, not a checkpoint's dict"),
        inputs={"checkpoint": "{t}/list-ckpt"},
        setup=checkpoint_that_is_a_list,
    ),
    Case(
        "checkpoint-without-supernet",
        "search",
        ("checkpoint {t}/nosupernet-ckpt/ckpt-", "lacks 'supernet'"),
        inputs={"checkpoint": "{t}/nosupernet-ckpt"},
        setup=checkpoint_without_supernet,
    ),
    Case(
        "checkpoint-of-another-k",
        "search",
        ("{good}/warm/ckpt-", "does not match the config", "k = 4 (config: 2)"),
        extra=("--set", "k=2"),
    ),
    Case(
        "checkpoint-of-another-shape",
        "search",
        ("{good}/warm/ckpt-", "channels = 4 (config: 8)"),
        extra=("--set", "channels=8"),
    ),
    Case(
        "train-output-folder-of-another-k-is-kept",
        "train",
        ("{t}/out/trained/ckpt-", "k = 4 (config: 2)"),
        extra=("--set", "k=2"),
        setup=output_folder_of_another_k,
    ),
    # --- datasets and splits
    Case(
        "parquet-label-out-of-range",
        "split",
        ("{t}/bad.parquet", "label 5 is outside [0, 2)"),
        extra=("--set", "dataset={t}/bad.parquet"),
        setup=parquet_label_out_of_range,
    ),
    Case(
        "cifar-label-out-of-range",
        "split",
        ("{t}/cifar-10-batches-py/data_batch_5", "label 10 is outside [0, 10)"),
        extra=("--set", "dataset={t}"),
        setup=cifar_label_out_of_range,
    ),
    Case(
        "class-folders-of-mixed-image-sizes",
        "split",
        ("{t}/tree/train/b/b.png is 6x6", "all images must have the same size"),
        extra=("--set", "dataset={t}/tree"),
        setup=mixed_image_sizes,
    ),
    Case(
        "missing-dataset",
        "split",
        ("/no/such/dataset",),
        extra=("--set", "dataset=/no/such/dataset"),
    ),
    Case(
        "split-of-another-dataset",
        "warmup",
        ("{t}/other-split.json", "made for dataset 'gs://datasets/cifar10-small.parquet'"),
        inputs={"split": "{t}/other-split.json"},
        setup=split_of_another_dataset,
    ),
    Case(
        "split-with-an-empty-train-part",
        "warmup",
        ("{t}/empty-train.json", "the 'train' part is empty"),
        inputs={"split": "{t}/empty-train.json"},
        setup=split_with_an_empty_train_part,
    ),
    Case(
        "split-that-is-a-list",
        "warmup",
        ("{t}/list-split.json", "a split must be a JSON object, got list"),
        inputs={"split": "{t}/list-split.json"},
        setup=lambda t, good: (t / "list-split.json").write_text("[[0, 1], [2, 3]]"),
    ),
    Case(
        "empty-dataset",
        "split",
        ("config key 'dataset' from --set: '' is empty",),
        extra=("--set", "dataset="),
    ),
    Case(
        "split-that-is-not-json",
        "warmup",
        ("{t}/garbage.json is not valid JSON",),
        inputs={"split": "{t}/garbage.json"},
        setup=split_that_is_not_json,
    ),
    # --- configuration
    Case(
        "unknown-key-in-config-file",
        "search",
        ("unknown config key 'colour' from {t}/bad.yaml",),
        extra=("--config", "{t}/bad.yaml"),
        setup=config_with_unknown_key,
    ),
    Case(
        "empty-config-file",
        "split",
        ("config file '{t}/empty.yaml' is empty",),
        extra=("--config", "{t}/empty.yaml"),
        setup=lambda t, good: (t / "empty.yaml").write_bytes(b""),
    ),
    Case(
        "config-file-with-a-key-twice",
        "warmup",
        ("config file '{t}/twice.yaml'", "key 'k' is given twice (lines 1 and 3)"),
        extra=("--config", "{t}/twice.yaml"),
        setup=lambda t, good: (t / "twice.yaml").write_text("k: 2\nseed: 1\nk: 4\n"),
    ),
    Case(
        "k-beyond-the-machines-memory",
        "warmup",
        ("config key 'k' = 1000000", "GiB of memory here"),
        extra=("--set", "k=1000000"),
    ),
    Case(
        "k-beyond-the-machines-memory-when-scoring",
        "search",
        ("config key 'k' = 100000000", "GiB of memory here"),
        extra=("--set", "k=100000000"),
    ),
    Case(
        "resolution-beyond-the-machines-memory",
        "warmup",
        ("config key 'resolution' = 100000", "batch_size = 32", "GiB of memory here"),
        extra=("--set", "resolution=100000"),
    ),
    Case(
        "resolution-beyond-the-machines-memory-when-retraining",
        "retrain",
        ("config key 'resolution' = 100000", "retrain_batch_size = 64"),
        extra=("--set", "resolution=100000"),
        existing=("model.pt", "metrics.json"),
    ),
    Case(
        "negative-epochs",
        "warmup",
        ("'epochs' from --set: -1 must be >= 1",),
        extra=("--set", "epochs=-1"),
    ),
    Case("k-zero", "warmup", ("'k' from --set: 0 must be >= 1",), extra=("--set", "k=0")),
    *(
        []
        if torch.cuda.is_available()
        else [
            Case(
                "cuda-on-a-machine-without-a-gpu",
                "warmup",
                ("config key 'device' = 'cuda': no CUDA device",),
                extra=("--set", "device=cuda"),
            )
        ]
    ),
    Case(
        "nan-learning-rate",
        "warmup",
        ("'lr' from --set: nan must be a finite number",),
        extra=("--set", "lr=.nan"),
    ),
    Case(
        "negative-seed",
        "split",
        ("'seed' from --set: -5 must be >= 0",),
        extra=("--set", "seed=-5"),
    ),
    Case(
        "checkpoint-of-another-simplex-net-size",
        "search",
        ("simplex_hidden = 64 (config: 32)",),
        extra=("--set", "simplex_hidden=32"),
    ),
    Case(
        "checkpoint-trained-at-another-resolution",
        "train",
        ("resolution = 8 (config: 12)",),
        extra=("--set", "resolution=12"),
    ),
    Case(
        "workers-not-dividing-batch-size-refused-before-torchrun-starts",
        "warmup",
        ("config key 'batch_size' = 32 must be divisible by the 3 processes (--workers 3)",),
        extra=("--workers", "3"),
    ),
    Case(
        "m-and-workers-not-dividing-each-other-refused-before-torchrun-starts",
        "train",
        ("config key 'm' = 4 and 3 processes (--workers 3): one must divide the other",),
        extra=("--workers", "3", "--set", "batch_size=48"),
    ),
    Case(
        "m-not-dividing-batch-size",
        "train",
        ("'m' from --set: 5 does not divide batch_size = 32",),
        extra=("--set", "m=5"),
    ),
    Case(
        "flops-budget-no-arch-meets",
        "search",
        ("'flops_budget' = 0.0001", "no nb201 path meets it"),
        extra=("--set", "flops_budget=0.0001"),
    ),
    Case(
        "flops-budget-no-arch-meets-refused-before-training",
        "warmup",
        ("'flops_budget' = 0.0001", "no nb201 path meets it"),
        extra=("--set", "flops_budget=0.0001"),
    ),
    Case(
        "bn-images-beyond-the-split-refused-before-training",
        "warmup",
        ("'bn_images' = 5000 exceeds the 899 training images",),
        extra=("--set", "bn_images=5000"),
    ),
    Case(
        "missing-ground-truth-refused-before-training",
        "warmup",
        ("config key 'ground_truth' = '{t}/no-truth.csv'",),
        extra=("--set", "ground_truth={t}/no-truth.csv"),
    ),
    Case(
        "bn-images-beyond-the-training-split",
        "search",
        ("'bn_images' = 5000 exceeds the 899 training images",),
        extra=("--set", "bn_images=5000"),
    ),
    # --- results and ground truth
    Case(
        "invalid-arch-in-results",
        "retrain",
        ("{t}/results.json", "best.arch", "invalid nb201 arch string '|conv_5x5~0|+|none~0|'"),
        inputs={"results": "{t}/results.json"},
        setup=results_with_invalid_arch,
    ),
    Case(
        "ground-truth-without-the-column",
        "rank",
        ("{t}/truth.csv", "has no column 'accuracy'", "['arch', 'acc']"),
        inputs={"ground_truth": "{t}/truth.csv"},
        setup=truth_without_the_column,
    ),
    Case(
        "ground-truth-of-one-path-refused-before-scoring",
        "rank",
        ("ground truth '{t}/one.csv' gives 1 path to rank: a ranking needs at least 2",),
        inputs={"ground_truth": "{t}/one.csv"},
        setup=truth_of_one_path,
    ),
    Case(
        "ground-truth-of-equal-accuracies-refused-before-scoring",
        "rank",
        ("ground truth '{t}/flat.csv': all 3 paths to rank have accuracy 50.0",),
        inputs={"ground_truth": "{t}/flat.csv"},
        setup=truth_of_equal_accuracies,
    ),
    Case(
        "ground-truth-of-equal-accuracies-refused-before-training",
        "warmup",
        ("config key 'ground_truth' = '{t}/flat.csv'", "all 3 paths to rank have accuracy 50.0"),
        extra=("--set", "ground_truth={t}/flat.csv", "--set", "ground_truth_column=accuracy"),
        setup=truth_of_equal_accuracies,
    ),
    Case(
        "rank-paths-of-one",
        "rank",
        ("'rank_paths' from --set: 1 must be 0 (all) or at least 2",),
        extra=("--set", "rank_paths=1"),
    ),
    # --- outputs that no kshot run wrote: kept unless --overwrite
    Case(
        "existing-results-without-run-record-are-kept",
        "search",
        ("output results='{out}/results.json' already exists and has no run record",),
        existing=("results.json",),
    ),
    Case(
        "existing-outputs-without-run-record-are-kept-before-retraining",
        "retrain",
        ("output metrics='{out}/metrics.json' already exists and has no run record",),
        existing=("model.pt", "metrics.json"),
    ),
    Case(
        "existing-results-without-run-record-refused-before-torchrun-starts",
        "search",
        ("{out}/.results.json.kshot-run.json", "pass --overwrite to replace it"),
        extra=("--workers", "2"),
        existing=("results.json",),
    ),
    Case("unknown-stage", "sprint", ("invalid choice: 'sprint'",)),
    Case(
        "config-file-that-is-not-text",
        "split",
        ("config file '{t}/binary.yaml' is not UTF-8 text",),
        extra=("--config", "{t}/binary.yaml"),
        setup=lambda t, good: (t / "binary.yaml").write_bytes(b"k: \xff\xfe\n"),
    ),
]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporary ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_and_nothing_is_written(
    case: Case,
    good: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command exits 2 with ``kshot stage: error:`` and the offending value in the message;
    the output folder holds exactly what it held before (nothing new, old bytes kept)."""
    monkeypatch.chdir(tmp_path)  # a URI taken for a relative local path would land in the tree
    names = {"good": str(good), "t": str(tmp_path), "out": str(tmp_path / "out")}
    if case.gcs:
        names["bucket"] = request.getfixturevalue("gcs_bucket")
    (tmp_path / "out").mkdir()
    if case.setup:
        case.setup(tmp_path, good)
    for name in case.existing:
        (tmp_path / "out" / name).write_bytes(SENTINEL)
    before = _tree(tmp_path)

    argv = ["stage", case.stage, "--config", str(good / "tiny.yaml")]
    artifacts = {
        "--input": {**GOOD_INPUTS.get(case.stage, {}), **case.inputs},
        "--output": {**GOOD_OUTPUTS.get(case.stage, {}), **case.outputs},
    }
    for flag, table in artifacts.items():
        for name, uri in table.items():
            argv += [flag, f"{name}={uri.format(**names)}"]
    argv += [arg.format(**names) for arg in case.extra]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refuses the command line itself
            code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "kshot stage: error: " in err
    for piece in case.says:
        assert piece.format(**names) in err, f"{piece.format(**names)!r} not in {err!r}"
    if case.warns:  # the damaged file itself is named too
        assert any(re.search(case.warns, str(w.message)) for w in caught), caught
    assert _tree(tmp_path) == before
    if case.gcs:
        assert storage.list_uris(names["bucket"]) == []


def test_keys_of_the_other_search_space_are_named_as_ignored():
    with pytest.warns(
        UserWarning, match=r"'channels' \(from base.yaml\) do not apply to search_space 'mbv2'"
    ):
        load_config({"channels": 32}, {"search_space": "mbv2"}, sources=["base.yaml", "--set"])


def test_a_sweep_with_an_invalid_or_repeated_k_is_refused_before_any_request():
    from kshot.config import ConfigError
    from kshot.pipeline.cli import run_arguments

    with pytest.raises(ConfigError, match="'k' from --set k_values: 0 must be >= 1"):
        run_arguments([], ["k_values=[4,0]"], sweep=True)
    with pytest.raises(ConfigError, match="repeats a K"):
        run_arguments([], ["k_values=[4,4]"], sweep=True)


def test_a_local_run_to_an_unwritable_output_fails_before_any_step(tmp_path, monkeypatch):
    from kshot.pipeline.local_run import DEFAULT_CONFIG, run_local_pipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unsupported URI scheme 'hdfs'"):
        run_local_pipeline(load_config(DEFAULT_CONFIG), "hdfs://node/run")
    assert not any(tmp_path.iterdir())


def test_a_local_run_on_workers_not_dividing_the_batch_fails_before_any_step(tmp_path):
    from kshot.config import ConfigError
    from kshot.pipeline.local_run import DEFAULT_CONFIG, run_local_pipeline

    cfg = load_config(DEFAULT_CONFIG, {"workers": 3})
    with pytest.raises(ConfigError, match=r"64 must be divisible by the 3 processes \(config key"):
        run_local_pipeline(cfg, str(tmp_path / "run"))
    assert not any(tmp_path.iterdir())


def test_a_local_run_into_a_file_fails_before_any_step(tmp_path):
    from kshot.pipeline.local_run import DEFAULT_CONFIG, run_local_pipeline

    (tmp_path / "run").write_bytes(SENTINEL)
    with pytest.raises(ValueError, match="run is a file, but a folder is expected"):
        run_local_pipeline(load_config(DEFAULT_CONFIG), str(tmp_path / "run"))
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (tmp_path / "run").read_bytes() == SENTINEL


def test_a_ranking_experiment_with_an_invalid_arm_config_is_refused_before_any_run(tmp_path):
    from kshot.config import ConfigError
    from kshot.experiments.ranking import run_ranking_experiment

    base = load_config(
        TINY, {"k": 1, "m": 5, "batch_size": 32, "ground_truth": str(tmp_path / "truth.csv")}
    )
    with pytest.raises(ConfigError, match="arm C, seed 0: .*'m'.* does not divide batch_size"):
        run_ranking_experiment(
            base, ["A", "C"], [0, 1], 8, str(tmp_path / "runs"), str(tmp_path / "r.json")
        )
    assert not (tmp_path / "runs").exists()


def test_zero_workers_are_refused_by_the_command_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["stage", "split", "--workers", "0"])
    assert stop.value.code == 2
    assert "argument --workers: 0 must be >= 1" in capsys.readouterr().err


def test_an_exported_model_holding_code_is_refused_without_running_it(tmp_path):
    from kshot.export import load_model

    marker = tmp_path / "MARKER"
    torch.save(
        {"search_space": "nb201", "arch": VALID_ARCH, "x": _RunsCodeWhenLoaded(marker)},
        tmp_path / "model.pt",
    )
    with pytest.raises(ValueError, match=f"refusing to load {tmp_path}/model.pt"):
        load_model(str(tmp_path / "model.pt"))
    assert not marker.exists()


def test_a_full_disk_exits_2_naming_the_output_and_leaves_no_file(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """The split stage's output on a disk that is full: one line naming the file and "no space
    left", exit 2, and neither the file nor a temporary one left (that an earlier file keeps its
    bytes is the store's own test: an existing output is refused before the stage runs)."""
    out = tmp_path / "split.json"

    def full(fd: int, *args, **kwargs):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "fdopen", full)
    code = main(["stage", "split", "--config", str(good / "tiny.yaml"), "--output", f"split={out}"])
    monkeypatch.undo()
    assert code == 2
    err = capsys.readouterr().err
    assert f"kshot stage: error: [Errno 28] writing {out}: no space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_constant_scores_write_null_metrics_with_a_warning(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """τ, ρ and r against constant supernet scores are undefined (a constant ground truth is
    refused before scoring): the metrics JSON holds null (strict JSON, no bare NaN token), a
    warning names them, and reading it back gives NaN again."""
    from kshot.eval.ranking import metrics_from_json
    from kshot.stages import rank

    def constant(*args, **kwargs):
        return [{**record, "accuracy": 50.0} for record in score_paths(*args, **kwargs)]

    score_paths = rank.score_paths
    monkeypatch.setattr(rank, "score_paths", constant)
    cfg = load_config(TINY)
    with pytest.warns(
        UserWarning, match="kendall_tau_a, kendall_tau_b, spearman_rho, pearson_r.*written as null"
    ):
        run_stage(
            "rank",
            cfg,
            {
                "split": str(good / "split.json"),
                "checkpoint": str(good / "warm"),
                "ground_truth": str(good / "truth.csv"),
            },
            {"scores": str(tmp_path / "scores.csv"), "metrics": str(tmp_path / "rank.json")},
        )
    text = (tmp_path / "rank.json").read_text()
    assert "NaN" not in text
    written = json.loads(text)
    assert written["kendall_tau_a"] is None and written["n_paths"] == 3
    assert np.isnan(metrics_from_json(written)["kendall_tau_a"])
    assert np.isnan(metrics_from_json(written)["kendall_tau_b"])
