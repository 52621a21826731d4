"""Images/s of ``data_loading: stream``: class folders against shards, from GCS and S3 with latency.

Writes a few thousand synthetic JPEGs of ImageNet's size (about 500 × 375, ~110 KB) as a
class-folder tree, puts the tree and its shards (``kshot data shard``) on the GCS emulator and on
moto's S3 server (both on 127.0.0.1, the test suite's servers of ``tests/gcs.py`` and
``tests/s3.py``), and reads them through a proxy that holds every request for a fixed time before
forwarding it, as a remote store's latency would. For each store, latency, format and number of
loader workers it measures, with the training batches of the ImageNet recipe's rank (128 images,
RandomResizedCrop to 224 and flip):

* images/s after the first batch, over at least two batches and about ``--seconds``;
* requests per 1,000 images (counted by the proxy) in that window;
* time to the first batch of a fresh process: the index (listing the tree, or reading the
  shards' index) plus the first batch;
* CPU seconds (user + system) spent in the timed window by the loader (this process and its
  DataLoader workers, less the proxy's threads) and by the store side (the server process and its
  children, plus the proxy's threads in this process), per image, and images per loader CPU
  second. The store servers here are pure Python on the loader's own cores; a real store's CPU is
  not the training node's, so the loader's CPU per image is what a node pays.

The decode-bound rate is the same JPEGs read from local disk. Prints a Markdown table and writes
JSON to ``--out``. Run from the repository root::

    OMP_NUM_THREADS=1 python scripts/bench_loading.py --images 2000 --out runs/bench-loading.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kshot import storage  # noqa: E402
from kshot.data.folder_index import ImageFolderIndex  # noqa: E402
from kshot.data.shards import ShardIndex, write_shards  # noqa: E402
from kshot.data.stream import train_batches  # noqa: E402
from tests.gcs import FlakyProxy  # noqa: E402
from tests.object_stores import ENDPOINT_ENVS, store_server  # noqa: E402

BATCH = 128  # a rank's share of the ImageNet recipe's 1,024 on 8 GPUs
RESOLUTION = 224
CLASSES = 10
FORMATS = ("folders", "shards")
_CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


class LatencyProxy(FlakyProxy):
    """Forwards every request after holding it ``latency_s`` seconds; counts the requests."""

    def __init__(self, upstream: str, latency_s: float) -> None:
        super().__init__(upstream)
        self.latency_s = latency_s

        self._cpu_lock = threading.Lock()
        self._finished_cpu_s = 0.0
        serve_one = self._server.process_request_thread  # one thread per request

        def timed(request: object, client_address: object) -> None:
            try:
                serve_one(request, client_address)
            finally:
                with self._cpu_lock:
                    self._finished_cpu_s += time.thread_time()

        self._server.process_request_thread = timed  # type: ignore[method-assign]

    def next_fault(self) -> str | None:
        time.sleep(self.latency_s)
        return super().next_fault()

    def cpu_s(self) -> float:
        """CPU seconds of the proxy's threads so far: the request threads that have ended and the
        accepting thread (a request in flight is counted when it ends)."""
        with self._cpu_lock:
            finished = self._finished_cpu_s
        ident = self._thread.ident
        if ident is None or not self._thread.is_alive():
            return finished
        return finished + time.clock_gettime(time.pthread_getcpuclockid(ident))


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 on), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    """Every process's child pids, by parent pid."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def _tree_cpu(pid: int, tree: dict[int, list[int]], into: dict[int, float]) -> None:
    """The CPU seconds (user + system) of ``pid`` and its descendants, each into ``into[pid]``."""
    fields = _stat_fields(pid)
    if fields is not None:
        into[pid] = (int(fields[11]) + int(fields[12])) * _CLOCK_TICK_S  # utime, stime
    for child in tree.get(pid, []):
        _tree_cpu(child, tree, into)


class CpuMeter:
    """CPU seconds by side: this process (less the proxy's threads) and its other child processes
    (DataLoader workers) are the loader; the server's process tree and the proxy are the store."""

    def __init__(self, server_pid: int | None = None, proxy: LatencyProxy | None = None) -> None:
        self.server_pid, self.proxy = server_pid, proxy

    def sample(self) -> dict[str, dict[int, float] | float]:
        tree = _children()
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, ended ones included
        workers: dict[int, float] = {}
        for child in tree.get(os.getpid(), []):
            if child != self.server_pid:
                _tree_cpu(child, tree, workers)
        server: dict[int, float] = {}
        if self.server_pid is not None:
            _tree_cpu(self.server_pid, tree, server)
        return {
            "own": usage.ru_utime + usage.ru_stime,
            "proxy": self.proxy.cpu_s() if self.proxy is not None else 0.0,
            "workers": workers,
            "server": server,
        }

    @staticmethod
    def spent(before: dict, after: dict) -> dict[str, float]:
        """CPU seconds between two samples; a process started between them counts from zero
        (one that ended between them is lost: the window holds none)."""

        def grown(key: str) -> float:
            return sum(t - before[key].get(pid, 0.0) for pid, t in after[key].items())

        proxy = after["proxy"] - before["proxy"]
        return {
            "loader_cpu_s": after["own"] - before["own"] - proxy + grown("workers"),
            "server_cpu_s": grown("server"),
            "proxy_cpu_s": proxy,
        }


def write_tree(root: Path, count: int) -> int:
    """``count`` JPEGs of ImageNet's size in ``CLASSES`` class folders; returns their bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(count):
        w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(smooth + rng.integers(-24, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / "train" / f"n{i % CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:06d}.JPEG"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def _batches(index: ImageFolderIndex | ShardIndex, workers: int):
    """The ImageNet recipe's training batches of every image of ``index``, read by ``workers``
    loader workers (0: in this process)."""
    return train_batches(
        index,
        np.arange(len(index)),
        seed=0,
        start_step=0,
        steps_per_epoch=len(index) // BATCH,
        batch_size=BATCH,
        resolution=RESOLUTION,
        augment=True,
        num_workers=workers,
        pin_memory=False,
    )


def measure(
    index: ImageFolderIndex | ShardIndex, workers: int, seconds: float, cpu: CpuMeter
) -> dict:
    """Images/s of a training stream over the whole index, in steady state: the first round of
    batches (one per worker, all started together) is left out, then at least two more rounds
    and about ``seconds`` are timed; with the CPU each side spent in that window."""
    started = time.perf_counter()
    batches = _batches(index, workers)
    rounds = max(1, workers)
    try:
        next(batches)
        first = time.perf_counter() - started
        for _ in range(rounds - 1):
            next(batches)
        before = cpu.sample()
        t0, images = time.perf_counter(), 0
        for count in itertools.count(1):
            images += len(next(batches)[1])
            if count >= 2 * rounds and time.perf_counter() - t0 >= seconds:
                break
        elapsed = time.perf_counter() - t0
        spent = cpu.spent(before, cpu.sample())  # the workers still run
    finally:
        batches.close()
    store_s = spent["server_cpu_s"] + spent["proxy_cpu_s"]
    return {
        "first_batch_s": first,
        "images": images,
        "seconds": elapsed,
        "rate": images / elapsed,
        **spent,
        "loader_cpu_ms_per_image": 1000 * spent["loader_cpu_s"] / images,
        "store_cpu_ms_per_image": 1000 * store_s / images,
        "images_per_loader_cpu_s": images / spent["loader_cpu_s"],
    }


def requests_per_thousand(proxy: LatencyProxy, index: ImageFolderIndex | ShardIndex) -> float:
    """Requests per 1,000 images over 4 training batches read in this process (no prefetch)."""
    before = proxy.forwarded
    batches = _batches(index, 0)
    images = sum(len(labels) for _, labels in itertools.islice(batches, 4))
    batches.close()
    return 1000 * (proxy.forwarded - before) / images


def run_remote(
    local: ImageFolderIndex,
    kind: str,
    tree: Path,
    shards_local: Path,
    latencies: list[float],
    workers: list[int],
    seconds: float,
    formats: list[str],
) -> list[dict]:
    """Every latency × format × workers on one store."""
    rows = []
    per_thousand: dict[tuple[str, str], float] = {}
    env_name = ENDPOINT_ENVS[kind]
    with store_server(kind) as (process, endpoint, root):
        os.environ[env_name] = endpoint
        storage.upload_dir(tree, f"{root}/folders")
        storage.upload_dir(shards_local, f"{root}/shards")
        for latency in latencies:
            proxy = LatencyProxy(endpoint, latency)
            proxy.start()
            os.environ[env_name] = proxy.url
            cpu = CpuMeter(process.pid, proxy)
            try:
                for fmt in formats:
                    for n in workers:
                        before = proxy.forwarded
                        started = time.perf_counter()
                        if fmt == "folders":
                            index = ImageFolderIndex.scan(f"{root}/folders")
                        else:
                            index = ShardIndex.load(f"{root}/shards")
                        index_s = time.perf_counter() - started
                        index_requests = proxy.forwarded - before
                        result = measure(index, n, seconds, cpu)
                        # decode-bound: the same JPEGs from local disk, measured next to the row
                        reference = measure(local, n, seconds, cpu)["rate"]
                        if (fmt, kind) not in per_thousand:
                            per_thousand[fmt, kind] = requests_per_thousand(proxy, index)
                        row = {
                            "store": kind,
                            "latency_ms": round(latency * 1000),
                            "format": fmt,
                            "workers": n,
                            "index_s": index_s,
                            "index_requests": index_requests,
                            "requests_per_1000": per_thousand[fmt, kind],
                            "decode_bound_rate": reference,
                            **result,
                        }
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        rows.append(row)
            finally:
                proxy.stop()
                os.environ[env_name] = endpoint
        os.environ.pop(env_name, None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latencies-ms", default="20,100")
    parser.add_argument("--workers", default="1,8")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per row")
    parser.add_argument("--stores", default="gcs,s3")
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help="formats read from the stores (the local class folders, the decode-bound rate, are "
        "always measured)",
    )
    parser.add_argument(
        "--shard-mb",
        type=int,
        default=8,
        help="shard size; moto reads a whole object for every ranged GET (0.66 s at 128 MiB, "
        "0.08 s at 8 MiB here), real stores do not",
    )
    parser.add_argument("--out", default="runs/bench-loading.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    latencies = [float(v) / 1000 for v in args.latencies_ms.split(",")]
    workers = [int(v) for v in args.workers.split(",")]
    formats = args.formats.split(",")
    if unknown := set(formats) - set(FORMATS):
        parser.error(f"--formats: unknown {sorted(unknown)}, choose from {FORMATS}")
    with tempfile.TemporaryDirectory(prefix="kshot-bench-") as work:
        tree, shards = Path(work) / "tree", Path(work) / "shards"
        size = write_tree(tree, args.images)
        index = write_shards(str(tree), str(shards), shard_bytes=args.shard_mb << 20)
        rows = []
        for n in workers:  # the decode-bound rate: the same JPEGs and shards on local disk
            local_formats = (("folders", ImageFolderIndex.scan(str(tree))), ("shards", index))
            reference = 0.0
            for fmt, local in local_formats:
                if fmt != "folders" and fmt not in formats:
                    continue
                row = {"store": "local", "latency_ms": 0, "format": fmt, "workers": n}
                row |= {"index_s": 0.0, "index_requests": 0, "requests_per_1000": 0.0}
                row |= measure(local, n, args.seconds, CpuMeter())
                reference = reference or row["rate"]  # the class folders' rate
                row["decode_bound_rate"] = reference
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
        for kind in args.stores.split(","):
            rows += run_remote(
                ImageFolderIndex.scan(str(tree)),
                kind,
                tree,
                shards,
                latencies,
                workers,
                args.seconds,
                formats,
            )
    meta = {
        "images": args.images,
        "mean_jpeg_bytes": size / args.images,
        "shards": len(index.shards),
        "shard_mb": args.shard_mb,
        "batch": BATCH,
        "resolution": RESOLUTION,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))
    print(
        "| store | latency | format | workers | images/s | of decode-bound (measured beside it) "
        "| requests / 1000 images | first batch (index + batch) | loader CPU ms / image "
        "| store CPU ms / image (proxy) | images / loader CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_k = r["requests_per_1000"]
        print(
            f"| {r['store']} | {r['latency_ms']} ms | {r['format']} | {r['workers']} "
            f"| {r['rate']:.0f} | {100 * r['rate'] / r['decode_bound_rate']:.0f} % | {per_k:.0f} "
            f"| {r['index_s'] + r['first_batch_s']:.1f} s ({r['index_s']:.2f} s, "
            f"{r['index_requests']} requests) | {r['loader_cpu_ms_per_image']:.2f} "
            f"| {r['store_cpu_ms_per_image']:.2f} ({1000 * r['proxy_cpu_s'] / r['images']:.2f}) "
            f"| {r['images_per_loader_cpu_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
