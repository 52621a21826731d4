"""Two local torchrun processes (gloo) against one: same paths, averaged gradients, no hang."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from kshot.launch.local import local_command
from kshot.launch.spec import LaunchSpec
from kshot.stages import run_stage
from kshot.train import checkpoint as ckpt

# Ranks normalise with the batch statistics of their own half of the batch (BN is not synchronised,
# as in plain DDP), so 2 processes match 1 up to that: after one epoch (14 supernet and 14 simplex
# steps) the supernet weights agree to 1% and the simplex-net's to 10% in relative L2 norm. BN's
# running statistics are compared with neither: each rank's follow the groups of a simplex-net step
# that it runs, and every path's are recalibrated before it is scored.
SUPERNET_RTOL = 0.01
SIMPLEX_RTOL = 0.10


def _relative_distance(a: dict, b: dict) -> float:
    """Of the learned tensors of two state dicts (BN's running statistics left out)."""
    names = [n for n in a if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    num = sum(float((a[n].double() - b[n].double()).norm() ** 2) for n in names)
    den = sum(float(a[n].double().norm() ** 2) for n in names)
    return math.sqrt(num / den)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tiny_cfg, digits_split, tmp_path):
    cfg = tiny_cfg.replace(augment=True)
    warm = str(tmp_path / "warm")
    run_stage("warmup", cfg, {"split": digits_split}, {"checkpoint": warm})
    finals = {}
    for workers in (1, 2):
        out = str(tmp_path / f"train{workers}")
        spec = LaunchSpec(
            stage="train",
            config=cfg.to_dict(),
            inputs={"split": digits_split, "checkpoint": warm},
            outputs={"checkpoint": out},
            workers=workers,
        )
        # a rank waiting on an all-reduce the other never joins would hang: the timeout catches it
        done = subprocess.run(local_command(spec), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count('{"stage": "train", "result"') == 1  # rank 0 reports, alone
        finals[workers] = ckpt.load_latest(out)
    one, two = finals[1], finals[2]
    assert one["step"] == two["step"] == 2 * (899 // cfg.batch_size)
    assert _relative_distance(one["supernet"], two["supernet"]) < SUPERNET_RTOL
    assert _relative_distance(one["simplex"], two["simplex"]) < SIMPLEX_RTOL
    # not trivially equal: the weights moved (0.9% in the run this was written on), twice as far
    # as the two runs are apart
    start = ckpt.load_latest(warm)
    moved = _relative_distance(start["supernet"], one["supernet"])
    assert moved > 0.004 and moved > 2 * _relative_distance(one["supernet"], two["supernet"])


def _torchrun_two(script) -> None:
    """Run ``script`` as 2 local gloo ranks; its asserts fail the test."""
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + [str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_gradients_are_averaged_only_where_they_exist(tmp_path):
    """The coalesced all-reduce on a real 2-rank gloo group: None stays None, values average."""
    script = tmp_path / "reduce.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from kshot import distributed as kd\n"
        "kd.init_from_env('cpu')\n"
        "r = kd.rank()\n"
        "a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))\n"
        "a.grad = torch.full((3,), float(r + 1))\n"
        "kd.all_reduce_gradients([a, b])\n"
        "assert b.grad is None\n"
        "assert torch.equal(a.grad, torch.full((3,), 1.5)), a.grad\n"
        "assert kd.gather_lists([r]) == [0, 1]\n"
        "kd.shutdown()\n"
    )
    _torchrun_two(script)


def test_no_rank_leaves_the_group_before_its_peers_and_in_flight_work_outlives_it(tmp_path):
    """``shutdown`` on a real 2-rank gloo group: rank 0 returns only once rank 1 (busy 2 s longer)
    has reached it too, and the barrier's work object, which holds the collectives still in
    flight, is released only after the group is destroyed. Torch before 2.8 destroys a gloo group
    holding the GIL: a worker thread left to drop those tensors then waits for it forever (the
    hang of pytorch/pytorch#154976, 1 run in 3 on torch 2.5.1 without this order)."""
    script = tmp_path / "shutdown.py"
    script.write_text(
        "import json, sys, time\n"
        "import torch.distributed as dist\n"
        "from kshot import distributed as kd\n"
        "kd.init_from_env('cpu')\n"
        "r = kd.rank()\n"
        "events = []\n"
        "barrier, destroy = dist.barrier, dist.destroy_process_group\n"
        "class Watched:\n"
        "    def __init__(self, work):\n"
        "        self.work = work\n"
        "    def wait(self):\n"
        "        return self.work.wait()\n"
        "    def __del__(self):\n"
        "        events.append('released')\n"
        "dist.barrier = lambda *a, **k: events.append('barrier') or Watched(barrier(*a, **k))\n"
        "dist.destroy_process_group = lambda *a, **k: events.append('destroy') or destroy(*a, **k)\n"
        "assert kd.gather_lists([r]) == [0, 1]\n"
        "if r == 1:\n"
        "    time.sleep(2)\n"
        "entered = time.time()\n"
        "kd.shutdown()\n"
        "left = time.time()\n"
        "assert not dist.is_initialized()\n"
        "assert events == ['barrier', 'destroy', 'released'], events\n"
        f"open(f'{tmp_path}/rank{{r}}.json', 'w').write(json.dumps([entered, left]))\n"
    )
    _torchrun_two(script)
    (_, left_0), (entered_1, _) = (
        json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)
    )
    assert left_0 >= entered_1


@pytest.mark.numerics
def test_kshot_gradients_average_as_the_slots_would_with_k_times_fewer_bytes(tmp_path):
    """On a real 2-rank gloo group, averaging the merged weight's gradient and handing slot k its
    λ_k share gives the average of the slots' own gradients, and sends 1/K of their elements."""
    script = tmp_path / "reduce_kshot.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "import torch.nn.functional as F\n"
        "from kshot import distributed as kd\n"
        "from kshot.nn.nb201_supernet import NB201Supernet\n"
        "kd.init_from_env('cpu')\n"
        "torch.manual_seed(0)\n"
        "net = NB201Supernet(4, C=4, N=1)\n"
        "lam = torch.softmax(torch.randn(4), 0)\n"
        "torch.manual_seed(1 + kd.rank())\n"
        "x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))\n"
        "F.cross_entropy(net(x, '|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|"
        "nor_conv_1x1~1|none~2|', lam), y).backward()\n"
        "params = list(net.parameters())\n"
        "expected = [torch.nn.Parameter(p.detach().clone()) for p in params]\n"
        "for e, p in zip(expected, params):\n"
        "    e.grad = None if p.grad is None else p.grad.clone()\n"
        "kd.all_reduce_gradients(expected)\n"
        "sent = []\n"
        "all_reduce = dist.all_reduce\n"
        "dist.all_reduce = lambda t, *a, **k: sent.append(t.numel()) or all_reduce(t, *a, **k)\n"
        "kd.all_reduce_kshot_gradients(params, lam)\n"
        "assert 0 < sum(p.grad is None for p in params) < len(params)\n"
        "for e, p in zip(expected, params):\n"
        "    assert (e.grad is None) == (p.grad is None)\n"
        "    if p.grad is not None:\n"
        "        torch.testing.assert_close(p.grad, e.grad, rtol=1e-5, atol=1e-7)\n"
        "assert sent == [sum(p.grad.numel() for p in params if p.grad is not None) // 4], sent\n"
        "kd.shutdown()\n"
    )
    _torchrun_two(script)


def test_every_supernet_parameter_is_a_k_slot_of_a_kshot_layer():
    """What :func:`all_reduce_kshot_gradients` relies on when the trainer hands it the supernet."""
    from kshot.nn.kshot import KShotLayer
    from kshot.nn.mbv2_supernet import MBV2Supernet
    from kshot.nn.nb201_supernet import NB201Supernet

    for net in (
        NB201Supernet(3, C=4, N=1),
        MBV2Supernet(3, num_classes=10, width_mult=0.125, divisor=1),
    ):
        slots = {id(p) for m in net.modules() if isinstance(m, KShotLayer) for p in m.slots()}
        assert all(id(p) in slots and p.shape[0] == 3 for p in net.parameters())


def test_local_command_runs_the_worker_under_torchrun():
    spec = LaunchSpec(
        stage="search",
        config={"k": 2},
        inputs={"split": "s.json"},
        outputs={"results": "r.json"},
        workers=2,
    )
    cmd = local_command(spec)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:8] == ["-m", "kshot.worker", "search"]
    assert "split=s.json" in cmd and "results=r.json" in cmd
    assert cmd[0] == sys.executable  # the worker needs this interpreter's torch and kshot


def test_sharded_evaluation_counts_every_image_once(tmp_path):
    """Data-parallel retraining evaluates the test set split over the ranks: the same accuracy."""
    script = tmp_path / "evaluate.py"
    script.write_text(
        "import sys, torch\n"
        "from kshot import distributed as kd\n"
        "from kshot.train.standalone import evaluate\n"
        "from kshot.train.run_data import TrainData\n"
        "kd.init_from_env('cpu')\n"
        "g = torch.Generator().manual_seed(0)\n"
        "images = torch.randint(0, 256, (23, 1, 4, 4), dtype=torch.uint8, generator=g)\n"
        "labels = torch.randint(0, 3, (23,), generator=g)\n"
        "data = TrainData(images, labels, images, labels, [0.5], [0.25], 3)\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))\n"
        "one = evaluate(model, images, labels, data, 5, torch.device('cpu'))\n"
        "shared = evaluate(model, images, labels, data, 5, torch.device('cpu'), shard=True)\n"
        "assert one == shared and 0 < one < 100, (one, shared)\n"
        "kd.shutdown()\n"
    )
    _torchrun_two(script)


@pytest.mark.slow
def test_data_parallel_retraining_reports_the_accuracy_of_the_model_it_saves(
    tiny_cfg, digits_split, digits_data, tmp_path
):
    """Each rank's BN statistics come from its share of the batch; rank 0's are broadcast before
    evaluating, so the sharded test accuracy is the saved model's."""
    from kshot import storage
    from kshot.export import load_model
    from kshot.spaces import nb201
    from kshot.train.standalone import evaluate

    results = tmp_path / "results.json"
    arch = nb201.format_arch((3, 3, 2, 1, 3, 2))
    storage.write_json(str(results), {"search_space": "nb201", "front": [], "best": {"arch": arch}})
    outputs = {"model": str(tmp_path / "model.pt"), "metrics": str(tmp_path / "metrics.json")}
    spec = LaunchSpec(
        stage="retrain",
        config=tiny_cfg.replace(augment=True, retrain_epochs=2).to_dict(),
        inputs={"split": digits_split, "results": str(results)},
        outputs=outputs,
        workers=2,
    )
    done = subprocess.run(local_command(spec), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    model, _ = load_model(outputs["model"])
    data = digits_data
    alone = evaluate(model, data.test_images, data.test_labels, data, 256, torch.device("cpu"))
    reported = storage.read_json(outputs["metrics"])["test_accuracy"]
    assert reported == pytest.approx(alone, abs=1e-9)
