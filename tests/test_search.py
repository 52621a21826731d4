"""NSGA-II under a FLOPs budget, and BN recalibration on exactly N images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kshot.nn.nb201_supernet import NB201Supernet
from kshot.search.nsga2 import BudgetError, nsga2_search, nsga2_survival, pareto_front
from kshot.search.recalibrate import bn_layers, recalibrate_bn
from kshot.spaces import nb201


def _flops(arch):
    return nb201.flops(arch, C=16, N=5)


def _synthetic_accuracy(arch):
    """A deterministic stand-in for supernet accuracy: convs help, with arch-dependent noise."""
    rng = np.random.default_rng(nb201.to_index(arch))
    return 60 + 2 * sum(c in (2, 3) for c in arch) + 3 * rng.random()


def _evaluate(archs):
    return [{"accuracy": _synthetic_accuracy(a)} for a in archs]


def test_nsga2_keeps_every_path_within_the_budget_and_evaluates_the_papers_1000():
    budget = 60.0
    result = nsga2_search(
        nb201,
        _evaluate,
        _flops,
        budget=budget,
        population=50,
        generations=20,
        parents=20,
        seed=0,
        progress=False,
    )
    archs = [r["choice"] for r in result.evaluated]
    assert len(archs) == 1000 == len(set(archs))  # 50 x 20, never the same path twice
    assert all(_flops(a) <= budget for a in archs)
    assert all(r["flops"] <= budget for r in result.front)
    assert result.best["accuracy"] == max(r["accuracy"] for r in result.evaluated)
    # the first generation is sampled inside the budget; later ones come from the top-20 parents
    assert sum(r["generation"] == 0 for r in result.evaluated) == 50


def test_nsga2_improves_on_random_search():
    result = nsga2_search(
        nb201,
        _evaluate,
        _flops,
        budget=None,
        population=20,
        generations=10,
        parents=8,
        seed=1,
        progress=False,
    )
    first = [r["accuracy"] for r in result.evaluated if r["generation"] == 0]
    last = [r["accuracy"] for r in result.evaluated if r["generation"] == 9]
    assert np.mean(last) > np.mean(first)


def test_pareto_front_is_non_dominated_and_complete():
    rng = np.random.default_rng(0)
    records = [
        {"accuracy": float(a), "flops": float(f)}
        for a, f in zip(rng.random(60), rng.random(60), strict=True)
    ]
    front = pareto_front(records)

    def dominates(p, q):
        return (
            p["accuracy"] >= q["accuracy"]
            and p["flops"] <= q["flops"]
            and (p["accuracy"] > q["accuracy"] or p["flops"] < q["flops"])
        )

    for r in records:
        on_front = any(r is f for f in front)
        dominated = any(dominates(q, r) for q in records)
        assert on_front == (not dominated)


def test_survival_keeps_whole_fronts_first():
    records = [{"accuracy": 10.0 - i, "flops": float(i)} for i in range(5)]  # one front
    records += [{"accuracy": 1.0, "flops": 100.0 + i} for i in range(5)]  # dominated
    kept = nsga2_survival(records, 5)
    assert {id(r) for r in kept} == {id(r) for r in records[:5]}


def test_a_budget_no_path_meets_is_refused():
    with pytest.raises(BudgetError, match="budget 0.001 MFLOPs"):
        nsga2_search(
            nb201,
            _evaluate,
            _flops,
            budget=0.001,
            population=4,
            generations=1,
            parents=2,
            max_tries=200,
            progress=False,
        )


def test_recalibration_uses_exactly_n_images_and_resets_statistics():
    torch.manual_seed(0)
    net = NB201Supernet(2, C=4, N=1)
    arch, lam = nb201.sample(np.random.default_rng(0)), torch.tensor([0.3, 0.7])
    for bn in bn_layers(net):
        bn.running_mean.fill_(123.0)
    images = torch.randn(100, 3, 8, 8)
    seen = []
    net.stem.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    n = recalibrate_bn(net, lambda x: net(x, arch, lam), images, batch_size=32)
    assert n == 100 and sum(seen) == 100 and seen == [32, 32, 32, 4]
    # the stem BN's statistics are exactly those of its input over the 100 images
    stem_out = torch.nn.functional.conv2d(
        images, (lam.view(2, 1, 1, 1, 1) * net.stem.weight).sum(0), padding=1
    )
    assert torch.allclose(net.stem_bn.running_mean, stem_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(
        net.stem_bn.running_var, stem_out.var((0, 2, 3), unbiased=True), atol=1e-4
    )
    assert all(bn.running_mean.abs().max() < 100 for bn in bn_layers(net))  # old values gone


def test_recalibration_in_one_batch_equals_batch_norms_own_statistics():
    """One batch of N: the statistics nn.BatchNorm2d would store with momentum 1."""
    torch.manual_seed(0)
    net = nb201.build(nb201.sample(np.random.default_rng(2)), C=4, N=1)
    images = torch.randn(64, 3, 8, 8)
    recalibrate_bn(net, net, images, batch_size=64)
    ours = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bn_layers(net)]
    for bn in bn_layers(net):
        bn.reset_running_stats()
        bn.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(images)
    for (mean, var), bn in zip(ours, bn_layers(net), strict=True):
        assert torch.allclose(mean, bn.running_mean, atol=1e-5)
        assert torch.allclose(var, bn.running_var, atol=1e-4)


def test_micro_batched_recalibration_is_exact_for_the_first_layer_and_close_after():
    torch.manual_seed(0)
    net = nb201.build(nb201.sample(np.random.default_rng(5)), C=4, N=1)
    images = torch.randn(256, 3, 8, 8)
    recalibrate_bn(net, net, images, batch_size=256)
    whole = [bn.running_var.clone() for bn in bn_layers(net)]
    recalibrate_bn(net, net, images, batch_size=64)
    parts = [bn.running_var.clone() for bn in bn_layers(net)]
    assert torch.allclose(whole[0], parts[0], rtol=1e-6)  # same images, same sums
    for a, b in zip(whole[1:], parts[1:], strict=True):
        assert torch.allclose(a, b, rtol=0.1, atol=1e-3)
