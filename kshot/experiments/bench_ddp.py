"""The data-parallel scaling benchmark of ``kshot bench``: the throughput of 2 local gloo processes
against 1 on the CPU.

Run as a module by ``torchrun``, each rank trains a K = 8 NAS-Bench-201 supernet on its share of a
fixed global batch, a new path every step, its K-slot gradients all-reduced as in training
(:func:`kshot.distributed.all_reduce_kshot_gradients`), and rank 0 prints the images per second as
one JSON line::

    torchrun --standalone --nproc-per-node=2 -m kshot.experiments.bench_ddp C N BATCH RESOLUTION STEPS

:func:`measure_ddp_scaling` runs it with 1 process and with 2, in turn, and reports the scaling
efficiency at the same global batch and at the same batch per rank.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import kshot
from kshot import distributed as dist
from kshot.launch.local import torchrun_command
from kshot.nn.nb201_supernet import NB201Supernet
from kshot.spaces import nb201

__all__ = ["main", "measure_ddp_scaling"]


def main() -> None:
    """One rank of the benchmark; its arguments: C, N, global batch, resolution and timed steps."""
    dist.init_from_env("cpu")
    torch.set_num_threads(1)
    C, N, batch, res, steps = (int(v) for v in sys.argv[1:6])
    torch.manual_seed(0)
    net = NB201Supernet(8, C=C, N=N)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    local = batch // dist.world_size()
    x, y = torch.randn(local, 3, res, res), torch.randint(0, 10, (local,))
    lam = torch.full((8,), 1 / 8)

    def step(i: int) -> None:
        loss = F.cross_entropy(net(x, nb201.from_index(i * 7919 % nb201.SIZE), lam), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.all_reduce_kshot_gradients(net.parameters(), lam)
        opt.step()

    for i in range(3):
        step(i)
    dist.barrier()
    start = time.perf_counter()
    for i in range(steps):
        step(3 + i)
    dist.barrier()
    elapsed = time.perf_counter() - start
    if dist.is_main():
        print(json.dumps({"images_per_s": batch * steps / elapsed}))
    dist.shutdown()


def measure_ddp_scaling(
    C: int, N: int, batch: int, resolution: int, steps: int, rounds: int = 3
) -> dict[str, float]:
    """Images/s of 1 process and of 2 (at the same global batch, and at the same batch per rank),
    each the median of ``rounds`` runs taken in turn, so that a load change hits all three."""
    runs: dict[str, list[float]] = {"ddp1": [], "ddp2": [], "ddp2_per_rank": []}
    # the workers import this kshot, installed or not, from whatever folder they start in
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(kshot.__file__)))
    pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    configs = (("ddp1", 1, batch), ("ddp2", 2, batch), ("ddp2_per_rank", 2, 2 * batch))
    for _, (name, nproc, global_batch) in itertools.product(range(rounds), configs):
        done = subprocess.run(
            torchrun_command(
                nproc,
                "kshot.experiments.bench_ddp",
                [str(v) for v in (C, N, global_batch, resolution, steps)],
            ),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath},
        )
        runs[name].append(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])
    rate = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "ddp1_images_per_s": rate["ddp1"],
        "ddp2_images_per_s": rate["ddp2"],
        "ddp2_per_rank_batch_images_per_s": rate["ddp2_per_rank"],
        "ddp2_efficiency": rate["ddp2"] / (2 * rate["ddp1"]),
        "ddp2_efficiency_same_batch_per_rank": rate["ddp2_per_rank"] / (2 * rate["ddp1"]),
        "rounds": rounds,
    }


if __name__ == "__main__":
    main()
