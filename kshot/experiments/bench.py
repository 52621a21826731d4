"""Benchmarks of the K-shot supernet against a plain network, measured side by side in one process.

Measures, on whatever device is present:

1. the training-step time of the K-shot supernet for several K on fixed paths (all 3x3 convs, and a
   mixed path) and with a new random path every step, against the plain stand-alone network of the
   same path in idiomatic PyTorch (same batch, dtype, memory format); the path-masked step of config
   key ``compile`` at K = 8, eager and (CUDA) compiled, against (CUDA) the plain all-3x3 network's
   step captured whole in one CUDA graph;
2. the peak GPU memory of each (``None`` on the CPU);
3. the search evaluation throughput: paths per second, BN recalibration on ``bn_images`` images and
   validation on ``eval_images`` included, and the time it implies for all 15,625 paths;
4. the throughput of 2 local gloo processes against 1 on the CPU, as a scaling efficiency: at the
   same global batch (each rank gets half: what adding a worker to a fixed config does) and at the
   same batch per rank (the usual data-parallel figure), medians of alternating rounds
   (:mod:`kshot.experiments.bench_ddp`, run by ``torchrun``);
5. the same training-step comparison in the mbv2 space (width search: every K-slot tensor is cut to
   the path's widths before the merge), K = 1 and 8 against the plain network of the same path.

Timings are medians over repeats after warm-up; nothing here is asserted by a test.
"""

from __future__ import annotations

import datetime
import functools
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kshot.config import Config
from kshot.experiments.bench_ddp import measure_ddp_scaling
from kshot.nn.nb201_supernet import NB201Supernet
from kshot.nn.supernets import build_supernet
from kshot.search.score import PathScorer
from kshot.spaces import MBV2Space, NB201Space, nb201
from kshot.train.builders import autocast
from kshot.train.steps import compile_grouped_loss, grouped_loss

__all__ = ["run_benchmarks", "HEADLINE", "SECTIONS", "ALL_3X3", "MIXED"]

ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
MIXED = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(
    step: Callable[[int], None], device: torch.device, warmup: int, repeats: int
) -> float:
    for i in range(warmup):
        step(i)
    _sync(device)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        step(warmup + i)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_memory(run: Callable[[], None], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def _sgd(params: Any) -> torch.optim.SGD:
    """The optimiser of every timed step: NAS-Bench-201's SGD (Nesterov, weight decay 5e-4)."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _train_steps(
    model_step: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    params: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
    after_backward: Callable[[int], None] = lambda i: None,
) -> tuple[float, int | None]:
    """Step time and peak memory of SGD on ``model_step``'s logits (or its loss, when it returns a
    0-dim tensor)."""
    opt = _sgd(params)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(i: int) -> None:
        with autocast:
            out = model_step(x, y, i)
            loss = out if out.dim() == 0 else F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        after_backward(i)
        opt.step()

    seconds = _median_time(step, device, warmup, repeats)
    return seconds, _peak_memory(lambda: [step(i) for i in range(2)], device)


def _graphed_train_step(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> float:
    """Step time of ``net`` with forward, backward and SGD captured whole in one CUDA graph (the
    PyTorch documentation's whole-network capture): the launch-free ceiling of a plain network."""
    opt = _sgd(net.parameters())
    static_x, static_y = x.clone(), y.clone()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = F.cross_entropy(net(static_x), static_y)
        loss.backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (cuDNN choices, optimiser state) off the capture
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return _median_time(lambda i: graph.replay(), device, warmup, repeats)


def _bench_training(
    device: torch.device,
    C: int,
    N: int,
    batch: int,
    resolution: int,
    ks: list[int],
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    x = x.contiguous(memory_format=torch.channels_last)  # as the trainer feeds its networks
    out: dict[str, Any] = {}
    for name, arch in (("all_3x3", ALL_3X3), ("mixed", MIXED)):
        torch.manual_seed(0)
        plain = nb201.build(arch, C=C, N=N).to(device)
        t_plain, m_plain = _train_steps(
            lambda x, y, i, net=plain: net(x), plain.parameters(), x, y, device, warmup, repeats
        )
        rows = {
            "standalone": {
                "step_s": t_plain,
                "images_per_s": batch / t_plain,
                "peak_bytes": m_plain,
            }
        }
        del plain
        for k in ks:
            supernet = NB201Supernet(k, C=C, N=N).to(device)
            lam = torch.full((k,), 1.0 / k, device=device)
            t, m = _train_steps(
                lambda x, y, i, net=supernet, a=arch, lam=lam: net(x, a, lam),
                supernet.parameters(),
                x,
                y,
                device,
                warmup,
                repeats,
            )
            rows[f"k{k}"] = {"step_s": t, "images_per_s": batch / t, "peak_bytes": m}
        out[name] = rows
        del supernet  # peak memory counts every live tensor: only the measured model may be
    # real training samples a new path every step
    rng_paths = [nb201.sample(np.random.default_rng([0, i])) for i in range(warmup + repeats)]
    random_rows = {}
    for k in ks:
        supernet = NB201Supernet(k, C=C, N=N).to(device)
        lam = torch.full((k,), 1.0 / k, device=device)
        t, _ = _train_steps(
            lambda x, y, i, net=supernet, lam=lam: net(x, rng_paths[i % len(rng_paths)], lam),
            supernet.parameters(),
            x,
            y,
            device,
            warmup,
            repeats,
        )
        random_rows[f"k{k}"] = {"step_s": t, "images_per_s": batch / t}
    out["random_path"] = random_rows
    # config key compile: the path-masked forward, the same graph for every path (eager here, to
    # show what running every operation costs; compiled on CUDA, where capture pays)
    codes = [nb201.one_hot(p).to(device)[None] for p in rng_paths]
    supernet = NB201Supernet(8, C=C, N=N).to(device)
    lam = torch.full((1, 8), 1.0 / 8, device=device)
    variants = {"masked_eager": functools.partial(grouped_loss, supernet.forward_masked)}
    if device.type == "cuda":
        variants["masked_compiled"] = compile_grouped_loss(supernet, device)
    for name, loss_fn in variants.items():

        def masked_step(x, y, i, loss_fn=loss_fn, graphed=name == "masked_compiled"):
            if graphed:
                torch.compiler.cudagraph_mark_step_begin()
            return loss_fn(x, y, codes[i % len(rng_paths)], lam)[0]

        t, _ = _train_steps(
            masked_step,
            supernet.parameters(),
            x,
            y,
            device,
            warmup,
            repeats,
            after_backward=lambda i: supernet.drop_off_path_gradients(
                rng_paths[i % len(rng_paths)]
            ),
        )
        random_rows[f"k8_{name}"] = {"step_s": t, "images_per_s": batch / t}
    if device.type == "cuda":
        torch.manual_seed(0)
        plain = nb201.build(ALL_3X3, C=C, N=N).to(device)  # as the eager one: only x is NHWC
        t = _graphed_train_step(plain, x, y, device, warmup, repeats)
        out["all_3x3"]["standalone_cuda_graph"] = {"step_s": t, "images_per_s": batch / t}
    return out


def _bench_mbv2_training(
    device: torch.device, width_mult: float, batch: int, resolution: int, warmup: int, repeats: int
) -> dict[str, Any]:
    """mbv2: K = 1 and 8 on a new random path (widths included) every step, and on one fixed path
    against its plain network."""
    space = MBV2Space(shape={"num_classes": 100, "width_mult": width_mult}, resolution=resolution)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device=device)
    paths = [space.sample(np.random.default_rng([1, i])) for i in range(warmup + repeats)]
    torch.manual_seed(0)
    plain = space.build(paths[0]).to(device)
    t_plain, m_plain = _train_steps(
        lambda x, y, i, net=plain: net(x), plain.parameters(), x, y, device, warmup, repeats
    )
    out: dict[str, Any] = {"fixed_path": {"standalone": {"step_s": t_plain, "peak_bytes": m_plain}}}
    del plain  # peak memory counts every live tensor: only the measured model may be
    out["random_path"] = {}
    for k in (1, 8):
        supernet = build_supernet(space, k).to(device)
        lam = torch.full((k,), 1.0 / k, device=device)
        for name, pick in (("fixed_path", lambda i: paths[0]), ("random_path", paths.__getitem__)):
            t, m = _train_steps(
                lambda x, y, i, net=supernet, lam=lam, pick=pick: net(x, pick(i), lam),
                supernet.parameters(),
                x,
                y,
                device,
                warmup,
                repeats,
            )
            out[name][f"k{k}"] = {"step_s": t, "peak_bytes": m}
    fixed, rand = out["fixed_path"], out["random_path"]
    out["train_step_ratio_k8_vs_k1"] = rand["k8"]["step_s"] / rand["k1"]["step_s"]
    out["supernet_vs_standalone_k8"] = fixed["standalone"]["step_s"] / fixed["k8"]["step_s"]
    out["shape"] = {"width_mult": width_mult, "batch": batch, "resolution": resolution}
    return out


def _bench_search(
    device: torch.device,
    C: int,
    N: int,
    bn_images: int,
    eval_images: int,
    resolution: int,
    paths: int,
) -> dict[str, float]:
    torch.manual_seed(0)
    supernet = NB201Supernet(8, C=C, N=N).to(device)
    scorer = PathScorer(
        NB201Space(),
        supernet,
        None,
        bn_images=torch.randn(bn_images, 3, resolution, resolution, device=device),
        valid_images=torch.randn(eval_images, 3, resolution, resolution, device=device),
        valid_labels=torch.randint(0, 10, (eval_images,), device=device),
        bn_batch_size=bn_images,
        eval_batch_size=min(eval_images, 2500),
        autocast=lambda: autocast(Config(), device),  # the search stage's default precision
    )
    rng = np.random.default_rng(0)
    scorer.score(nb201.sample(rng))  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(paths):
        scorer.score(nb201.sample(rng))
    _sync(device)
    per_s = paths / (time.perf_counter() - start)
    return {
        "search_evals_per_s": per_s,
        "seconds_per_1000_evals": 1000 / per_s,
        "estimated_seconds_all_15625": nb201.SIZE / per_s,
        "paths_timed": paths,
    }


HEADLINE = (
    "device",
    "train_step_ratio_k8_vs_k1",
    "supernet_vs_standalone_k8",
    "supernet_random_path_compiled_vs_graphed_standalone_k8",
    "peak_memory_ratio_k8_vs_k1",
    "search_evals_per_s",
    "ddp2_efficiency",
)
"""The report's headline keys (the goals of ``docs/benchmarks.md``); ``kshot bench`` prints them."""

SECTIONS = ("training", "search", "ddp", "mbv2")
"""The parts of :func:`run_benchmarks`, in the order they run."""


def run_benchmarks(
    quick: bool = True,
    device: str = "auto",
    sections: Sequence[str] = SECTIONS,
    on_section: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmarks of ``sections``; ``quick`` sizes them for a CPU in a few minutes.

    ``on_section`` gets the report so far after each section (a GPU allocation with a time limit
    keeps what finished); the figures of sections not run are ``None``.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}: choose from {SECTIONS}")
    dev = torch.device(
        "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    if dev.type == "cpu":
        torch.set_num_threads(1)  # small networks: one thread is faster and far less noisy
    if quick:
        mbv2_shape = {"width_mult": 0.25, "batch": 32, "resolution": 64}
        shape = {"C": 8, "N": 1, "batch": 64, "resolution": 32}
        timing = {"warmup": 5, "repeats": 30}
        search = {"bn_images": 256, "eval_images": 1000, "paths": 10}
        ddp = {"C": 8, "N": 1, "batch": 64, "resolution": 32, "steps": 20}
    else:
        mbv2_shape = {"width_mult": 1.0, "batch": 128, "resolution": 224}
        shape = {"C": 16, "N": 5, "batch": 256, "resolution": 32}
        timing = {"warmup": 10, "repeats": 50}
        search = {"bn_images": 2048, "eval_images": 10_000, "paths": 50}
        ddp = {"C": 16, "N": 1, "batch": 128, "resolution": 32, "steps": 20}
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "training": lambda: _bench_training(
            dev,
            shape["C"],
            shape["N"],
            shape["batch"],
            shape["resolution"],
            [1, 2, 4, 8, 12],
            timing["warmup"],
            timing["repeats"],
        ),
        "search": lambda: {
            **_bench_search(
                dev,
                shape["C"],
                shape["N"],
                search["bn_images"],
                search["eval_images"],
                shape["resolution"],
                search["paths"],
            ),
            **search,
        },
        "ddp": lambda: {**measure_ddp_scaling(**ddp), **ddp},
        "mbv2": lambda: _bench_mbv2_training(
            dev, **mbv2_shape, warmup=timing["warmup"], repeats=min(timing["repeats"], 20)
        ),
    }
    header = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "quick": quick,
        "shape": shape,
    }
    parts: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        if name in sections:
            parts[name] = runners[name]()
            if on_section is not None:
                on_section(_report(header, parts))
    return _report(header, parts)


def _report(header: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON report: the headline figures (None for sections not run), then every section."""
    training, search, ddp = (parts.get(n) for n in ("training", "search", "ddp"))
    headline: dict[str, Any] = dict.fromkeys(
        (
            "train_step_ratio_k8_vs_k1",
            "supernet_vs_standalone_k8",
            "supernet_random_path_vs_standalone_k8",
            "supernet_random_path_compiled_vs_graphed_standalone_k8",
            "peak_memory_ratio_k8_vs_k1",
        )
    )
    if training is not None:
        fixed, random_path = training["all_3x3"], training["random_path"]
        mem_k1, mem_k8 = fixed["k1"]["peak_bytes"], fixed["k8"]["peak_bytes"]
        plain = fixed["standalone"]["images_per_s"]
        headline = {
            "train_step_ratio_k8_vs_k1": fixed["k8"]["step_s"] / fixed["k1"]["step_s"],
            "supernet_vs_standalone_k8": fixed["k8"]["images_per_s"] / plain,
            "supernet_random_path_vs_standalone_k8": random_path["k8"]["images_per_s"] / plain,
            # the GPU goal: ≥ 0.9 (and the eager plain network's rate in any case)
            "supernet_random_path_compiled_vs_graphed_standalone_k8": None
            if "standalone_cuda_graph" not in fixed
            else random_path["k8_masked_compiled"]["images_per_s"]
            / fixed["standalone_cuda_graph"]["images_per_s"],
            "peak_memory_ratio_k8_vs_k1": None if mem_k1 is None else mem_k8 / mem_k1,
        }
    return {
        **header,
        **headline,
        "search_evals_per_s": None if search is None else search["search_evals_per_s"],
        "ddp2_efficiency": None if ddp is None else ddp["ddp2_efficiency"],
        **parts,
    }
