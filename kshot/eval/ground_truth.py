"""NAS-Bench-201 ground truth: stand-alone accuracy per cell, keyed by the benchmark's arch string.

Three sources are read:

* ``nb201``: the NAS-Bench-201 table that ships inside this package
  (``index,arch,cifar10_test,cifar100_test,imagenet16_test``, see :data:`BUILTIN_TABLES`);
* a CSV table (optionally gzipped, ``.csv.gz``) with an ``arch`` column and one accuracy column per
  dataset, such as the table the standalone stage writes (``arch,accuracy``);
* the benchmark's own file (``.pth`` / ``.pickle`` / ``.pkl`` / ``.pbz2``, or a folder) through
  its API package, ``nats_bench`` or ``nas_201_api``, when one of them is installed.

Arch strings are normalised with :func:`kshot.spaces.nb201.format_arch`, so ground truth always
joins supernet scores by the same key.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import importlib.util
import io
import math
from collections.abc import Mapping

import numpy as np

from kshot import storage
from kshot.spaces import NB201Space, Space, nb201

__all__ = [
    "BENCHMARK_DATASETS",
    "BUILTIN_TABLES",
    "load_ground_truth",
    "check_ground_truth",
    "check_rankable",
    "write_ground_truth_csv",
    "align_scores",
]

BENCHMARK_DATASETS: dict[str, str] = {
    "cifar10_test": "cifar10",
    "cifar100_test": "cifar100",
    "imagenet16_test": "ImageNet16-120",
}
"""Ground-truth column name → the benchmark API's dataset name (its ``test-accuracy`` is the
CIFAR-10 test set, and the ``x-test`` half of the test set for CIFAR-100 and ImageNet16-120)."""

BUILTIN_TABLES: dict[str, str] = {"nb201": "nb201_accuracy.csv.gz"}
"""Ground-truth names → tables shipped in ``kshot.eval``. ``nb201``: NAS-Bench-201's 200-epoch test
accuracies (%) of all 15,625 cells, mean over seeds, columns ``cifar10_test``, ``cifar100_test`` and
``imagenet16_test`` (source and licence in ``kshot/eval/nb201_accuracy.SOURCE.txt``)."""

_BENCHMARK_SUFFIXES = (".pth", ".pickle", ".pkl", ".pbz2")


def _read_table(uri: str) -> str:
    """The text of a CSV ground-truth table: a :data:`BUILTIN_TABLES` name, or a URI (gzipped when
    it ends with ``.gz``)."""
    if uri in BUILTIN_TABLES:
        return gzip.decompress(
            (importlib.resources.files("kshot.eval") / BUILTIN_TABLES[uri]).read_bytes()
        ).decode()
    if uri.endswith(".gz"):
        return gzip.decompress(storage.read_bytes(uri)).decode()
    return storage.read_text(uri)


def _is_benchmark_file(uri: str) -> bool:
    """Whether ``uri`` names the benchmark's own file or folder rather than a CSV table."""
    if uri in BUILTIN_TABLES:
        return False
    if uri.lower().endswith(_BENCHMARK_SUFFIXES) or uri.endswith("/"):
        return True
    parsed = storage.Uri.parse(uri)
    return not parsed.is_remote and parsed.path.is_dir()


def _normalised_arch(arch: str, where: str, space: Space | None = None) -> str:
    """The string of ``arch`` in ``space`` (default nb201), or a ValueError that says ``where`` it
    was found."""
    space = space or NB201Space()
    try:
        return space.format(space.parse(arch))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def load_ground_truth(uri: str, column: str, space: Space | None = None) -> dict[str, float]:
    """Stand-alone accuracy of every path in a ground-truth table or (nb201) benchmark file.

    Args:
        uri: ``nb201`` (the table shipped with kshot, :data:`BUILTIN_TABLES`), a CSV table (or
            ``.csv.gz``) with an ``arch`` column and ``column``, or the benchmark's own file or
            folder (read through ``nats_bench`` or ``nas_201_api``: 200-epoch results, averaged
            over seeds).
        column: The accuracy column; for a benchmark file one of :data:`BENCHMARK_DATASETS`.
        space: The search space of the paths (default: nb201).

    Returns:
        ``{normalised arch string: accuracy}`` in the order of the source.

    Raises:
        ValueError: a missing column (naming the columns there are), an invalid arch string or
            accuracy (naming the row), a duplicate arch, or a benchmark file without its API
            package.
    """
    space = space or NB201Space()
    if _is_benchmark_file(uri):
        return _load_benchmark(uri, column, space)
    reader = csv.DictReader(io.StringIO(_read_table(uri), newline=""))
    available = reader.fieldnames or []
    for needed in ("arch", column):
        if needed not in available:
            raise ValueError(
                f"ground truth {uri!r} has no column {needed!r}; its columns are {available}"
            )
    accuracies: dict[str, float] = {}
    first_row_of: dict[str, int] = {}
    for row_number, row in enumerate(reader, start=1):
        where = f"ground truth {uri!r}, row {row_number} (file line {reader.line_num})"
        arch = _normalised_arch(row["arch"] or "", where, space)
        try:
            accuracy = float(row[column] or "")
        except ValueError:
            raise ValueError(
                f"{where}: column {column!r} holds {row[column]!r}, not a number"
            ) from None
        if not math.isfinite(accuracy):
            raise ValueError(f"{where}: column {column!r} holds non-finite {row[column]!r}")
        if arch in accuracies:
            raise ValueError(f"{where}: arch {arch!r} already appeared in row {first_row_of[arch]}")
        accuracies[arch] = accuracy
        first_row_of[arch] = row_number
    if not accuracies:
        raise ValueError(f"ground truth {uri!r} holds no rows")
    return accuracies


def check_ground_truth(uri: str, column: str, space: Space | None = None) -> None:
    """Refuse before training what :func:`load_ground_truth` would refuse after it: a CSV table is
    read whole (it is small); a benchmark file is only checked to exist, with its column and API
    package (loading it takes minutes)."""
    space = space or NB201Space()
    if not _is_benchmark_file(uri):
        check_rankable(load_ground_truth(uri, column, space), uri, column)
        return
    _benchmark_package(uri, column, space)
    if not storage.exists(uri):
        raise FileNotFoundError(f"ground truth {uri!r} does not exist")


def check_rankable(truth: Mapping[str, float], uri: str, column: str) -> None:
    """Refuse ground truth that no ranking can be measured against: fewer than 2 paths, or every
    path of the same accuracy (τ, ρ and r are then undefined).

    Args:
        truth: ``{arch: accuracy}`` of the paths to rank (all of a table, or those drawn from it).
        uri: where the ground truth came from, for the message.
        column: its accuracy column, for the message.

    Raises:
        ValueError: naming ``uri``, how many paths and the accuracy they share.
    """
    if len(truth) < 2:
        raise ValueError(
            f"ground truth {uri!r} gives {len(truth)} path to rank: a ranking needs at least 2"
        )
    values = set(truth.values())
    if len(values) == 1:
        raise ValueError(
            f"ground truth {uri!r}: all {len(truth)} paths to rank have accuracy {values.pop()} "
            f"(column {column!r}): τ, ρ and r are undefined against a constant; a ranking needs "
            "paths of different accuracy"
        )


def _benchmark_package(uri: str, column: str, space: Space) -> str:
    """The API package that reads benchmark file ``uri``; fails on another space than nb201 or a
    column the benchmark does not have."""
    if not isinstance(space, NB201Space):
        raise ValueError(
            f"ground truth {uri!r}: benchmark files hold nb201 cells, not {space.name}"
        )
    if column not in BENCHMARK_DATASETS:
        raise ValueError(
            f"column {column!r} for benchmark file {uri!r} is not one of {list(BENCHMARK_DATASETS)}"
        )
    package = next(
        (name for name in ("nats_bench", "nas_201_api") if importlib.util.find_spec(name)), None
    )
    if package is None:
        raise ValueError(
            f"reading the benchmark file {uri!r} needs its API package: pip install nats_bench "
            "(or nas-bench-201); or pass a CSV ground-truth table"
        )
    return package


def _load_benchmark(uri: str, column: str, space: Space) -> dict[str, float]:
    """Ground truth through the benchmark's API package (hp="200", mean over seeds)."""
    package = _benchmark_package(uri, column, space)
    dataset = BENCHMARK_DATASETS[column]
    with storage.local_copy(uri) as path:
        if package == "nats_bench":
            import nats_bench

            api = nats_bench.create(str(path), "tss", fast_mode=path.is_dir(), verbose=False)
        else:
            from nas_201_api import NASBench201API

            api = NASBench201API(str(path), verbose=False)
        return {
            nb201.format_arch(api.arch(index)): float(
                api.get_more_info(index, dataset, hp="200", is_random=False)["test-accuracy"]
            )
            for index in range(len(api))
        }


def write_ground_truth_csv(
    uri: str,
    rows: dict[str, float],
    column: str = "accuracy",
    space: Space | None = None,
    constants: Mapping[str, int] | None = None,
) -> None:
    """Write ``{arch: accuracy}`` (paths of ``space``, default nb201) as a CSV ``arch,<column>``
    that :func:`load_ground_truth` reads; each of ``constants`` (e.g. ``{"test_images": 449}``,
    what every accuracy was measured on) adds a column holding its value on every row.

    Raises:
        ValueError: an invalid arch string or non-finite accuracy (naming it), before writing.
    """
    space = space or NB201Space()
    normalised: dict[str, float] = {}
    for arch, accuracy in rows.items():
        key = _normalised_arch(arch, f"ground truth for {uri!r}", space)
        if not math.isfinite(float(accuracy)):
            raise ValueError(f"ground truth for {uri!r}: arch {arch!r} has accuracy {accuracy!r}")
        if key in normalised:
            raise ValueError(f"ground truth for {uri!r}: arch {arch!r} appears twice")
        normalised[key] = float(accuracy)
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    extra = dict(constants or {})
    writer.writerow(["arch", column, *extra])
    writer.writerows([arch, accuracy, *extra.values()] for arch, accuracy in normalised.items())
    storage.write_text(uri, text.getvalue())


def align_scores(
    truth: dict[str, float],
    scores: dict[str, float],
    truth_source: str,
    space: Space | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Pair supernet scores with ground truth by normalised arch string.

    Args:
        truth: ``{arch: accuracy}`` from :func:`load_ground_truth`.
        scores: ``{arch: supernet score}`` of the scored paths.
        truth_source: Where ``truth`` came from (a URI), for error messages.
        space: The search space of the paths (default: nb201).

    Returns:
        ``(archs, truth_values, score_values)`` in the order of ``scores``.

    Raises:
        ValueError: a scored arch is invalid or absent from the ground truth (naming it).
    """
    archs, truth_values, score_values = [], [], []
    for arch, score in scores.items():
        key = _normalised_arch(arch, "scored path", space)
        if key not in truth:
            raise ValueError(f"scored arch {arch!r} is not in the ground truth {truth_source!r}")
        archs.append(key)
        truth_values.append(truth[key])
        score_values.append(float(score))
    return archs, np.asarray(truth_values), np.asarray(score_values)
