"""Store requests per checkpoint save, and how often a stage parses its output URI.

Starts the test suite's servers (``gcp-storage-emulator`` of ``tests/gcs.py`` and moto's S3 server
of ``tests/s3.py``, on 127.0.0.1) behind a proxy that records every request, and for each store:

* saves a checkpoint (a 1 MiB tensor, below the 8 MiB upload chunk: one upload request) five times
  into one folder with :func:`kshot.train.checkpoint.save_checkpoint` (keep 2), and counts the
  requests of each save by method; from the third save on, each also removes the oldest one;
* runs the warmup stage of the tests' tiny configuration (digits, C = 4, N = 1, one epoch) with its
  checkpoint folder in the bucket, and counts the requests it makes and how many times a URI under
  that output is parsed from text (:meth:`kshot.storage.Uri.parse`).

Prints a Markdown table and writes JSON to ``--out``. Run from the repository root::

    OMP_NUM_THREADS=1 python scripts/bench_requests.py --out runs/bench-requests.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kshot import storage  # noqa: E402
from kshot.config import load_config  # noqa: E402
from kshot.stages import run_stage  # noqa: E402
from kshot.train.checkpoint import save_checkpoint  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.gcs import FlakyProxy  # noqa: E402
from tests.object_stores import ENDPOINT_ENVS, store_server  # noqa: E402

SAVES = 5
STATE_BYTES = 1024 * 1024


class RecordingProxy(FlakyProxy):
    """Forwards every request and records its method and path."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.requests: list[tuple[str, str]] = []

    def take_staged(self, method: str, path: str) -> object:
        with self._lock:
            self.requests.append((method, path))
        return super().take_staged(method, path)


@contextmanager
def parse_counter(prefix: str) -> Iterator[collections.Counter[str]]:
    """Counts, while the block runs, the parses of URIs that start with ``prefix``."""
    counts: collections.Counter[str] = collections.Counter()
    original = storage.Uri.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type[storage.Uri], text: str | storage.Uri) -> storage.Uri:
        if isinstance(text, str) and text.startswith(prefix):
            counts["parses"] += 1
        return original(cls, text)

    storage.Uri.parse = classmethod(counting)  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        storage.Uri.parse = classmethod(original)  # type: ignore[method-assign]


def _methods(requests: list[tuple[str, str]]) -> str:
    counts = collections.Counter(method for method, _ in requests)
    return ", ".join(f"{n} {method}" for method, n in sorted(counts.items()))


def measure(kind: str, root: str, proxy: RecordingProxy, split: str) -> dict:
    """The saves' and the warmup stage's requests on one store."""
    state = {"epoch": 0, "step": 0, "weights": torch.zeros(STATE_BYTES // 4)}
    folder = storage.join(root, "ckpt")
    saves = []
    for n in range(SAVES):
        state.update(epoch=n, step=n)
        before = len(proxy.requests)
        with parse_counter(folder) as parses:
            save_checkpoint(folder, state, keep=2)
        done = proxy.requests[before:]
        saves.append({"requests": len(done), "methods": _methods(done), "parses": parses["parses"]})
    cfg = load_config({**TINY, "epochs": 1}, sources=["tests.conftest.TINY"])
    output = storage.join(root, "warm")
    before = len(proxy.requests)
    with parse_counter(output) as parses:
        run_stage("warmup", cfg, {"split": split}, {"checkpoint": output})
    stage = proxy.requests[before:]
    return {
        "store": kind,
        "saves": saves,
        "warmup_requests": len(stage),
        "warmup_methods": _methods(stage),
        "warmup_output_parses": parses["parses"],
    }


def run_store(kind: str, split: str) -> dict:
    with store_server(kind) as (_, endpoint, root):
        proxy = RecordingProxy(endpoint)
        proxy.start()
        os.environ[ENDPOINT_ENVS[kind]] = proxy.url
        try:
            return measure(kind, root, proxy, split)
        finally:
            os.environ.pop(ENDPOINT_ENVS[kind], None)
            proxy.stop()


def table(rows: list[dict]) -> str:
    lines = [
        "| store | first save | saves 3–5 (each removes the oldest) | parses of the folder per save "
        "| warmup stage: requests | warmup stage: parses of its output |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        first, later = row["saves"][0], row["saves"][2:]
        steady = sorted({s["requests"] for s in later})
        lines.append(
            f"| {row['store']} | {first['requests']} ({first['methods']}) "
            f"| {'/'.join(map(str, steady))} ({later[-1]['methods']}) "
            f"| {'/'.join(str(s['parses']) for s in row['saves'])} "
            f"| {row['warmup_requests']} | {row['warmup_output_parses']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--stores", default="gcs,s3", help="comma-separated: gcs, s3")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        split = str(Path(tmp) / "split.json")
        run_stage("split", load_config(TINY), {}, {"split": split})
        rows = [run_store(kind, split) for kind in args.stores.split(",")]
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
