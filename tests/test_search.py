"""NSGA-II under a FLOPs budget, and BN recalibration on exactly N images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from kshot.nn.nb201_supernet import NB201Supernet
from kshot.nn.simplex import SimplexNet
from kshot.search.nsga2 import BudgetError, nsga2_search, nsga2_survival, pareto_front
from kshot.search.recalibrate import bn_layers, recalibrate_bn
from kshot.search.score import PathScorer
from kshot.spaces import NB201Space, nb201


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
    """Mutation and crossover of the best parents, not random sampling, make the search: in 200
    evaluations of the 15,625 paths it finds one in the objective's top 0.1% (random search of
    this seed does not) and its generations get better."""
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
    everywhere = [_synthetic_accuracy(a) for a in nb201.all_archs()]
    assert result.best["accuracy"] >= np.percentile(everywhere, 99.9)


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
    """The first front survives whole wherever its records sit in the population."""
    front = [{"accuracy": 10.0 + i, "flops": float(i)} for i in range(5)]
    dominated = [{"accuracy": 1.0, "flops": 100.0 + i} for i in range(5)]
    order = np.random.default_rng(0).permutation(10)
    records = [(dominated + front)[i] for i in order]
    assert {id(r) for r in nsga2_survival(dominated + front, 5)} == {id(r) for r in front}
    assert {id(r) for r in nsga2_survival(records, 5)} == {id(r) for r in front}


def test_survival_cuts_the_last_front_by_crowding_distance():
    """A front larger than the room left keeps its two extremes (infinite crowding distance),
    then its least crowded records; the fronts before it survive whole."""
    first = [{"accuracy": 20.0 + i, "flops": float(i)} for i in range(3)]
    second = [{"accuracy": 8.0 + f, "flops": f} for f in (1.0, 1.2, 3.0, 4.8, 5.0)]
    dominated = [{"accuracy": 0.5, "flops": 100.0 + i} for i in range(4)]
    records = dominated + second[::-1] + first
    kept = nsga2_survival(records, 6)
    assert {id(r) for r in kept} == {id(r) for r in first + [second[0], second[2], second[4]]}


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


@pytest.mark.numerics
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


@pytest.mark.numerics
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


@pytest.mark.numerics
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


def _scorer_case(k: int = 3):
    """A tiny supernet whose classifier is spread enough for its predictions to vary from image
    to image, a simplex-net whose codes differ from 1/K, recalibration images and validation
    images (uint8, as stored, with their ``prepare``)."""
    torch.manual_seed(0)
    space = NB201Space({"C": 4, "N": 1})
    net = NB201Supernet(k, C=4, N=1)
    simplex = SimplexNet(space.arch_dim, k, hidden=8)
    with torch.no_grad():
        net.classifier.weight.normal_(0.0, 1.0)
        net.classifier.bias.zero_()
        simplex.out.weight.normal_(0.0, 2.0)
    bn_images = torch.randn(40, 3, 8, 8)
    valid_images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    arch = space.parse(
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    )
    return space, net, simplex, bn_images, valid_images, arch


def _prepare(x):
    return x.float() / 127.5 - 1.0


def _hand_predictions(net, arch, lam, bn_images, valid_images):
    """Recalibrate a copy of the supernet for the path, then classify in eval mode."""
    net = copy.deepcopy(net)
    recalibrate_bn(net, lambda x: net(x, arch, lam), bn_images, batch_size=16)
    net.eval()
    with torch.no_grad():
        return net(_prepare(valid_images), arch, lam).argmax(1)


@pytest.mark.numerics
def test_path_scorer_uses_the_simplex_code_and_recalibrated_statistics():
    """``score`` returns λ = π(a) and the accuracy of the path merged with it after BN
    recalibration on the N images: every prediction matches the hand computation, whatever
    statistics the supernet held before."""
    space, net, simplex, bn_images, valid_images, arch = _scorer_case()
    with torch.no_grad():
        lam = simplex(*space.codes([arch]))[0]
    assert not torch.allclose(lam, torch.full((3,), 1 / 3), atol=0.05)
    predictions = _hand_predictions(net, arch, lam, bn_images, valid_images)
    assert len(set(predictions.tolist())) > 1

    def score(labels):
        scorer = PathScorer(
            space,
            net,
            simplex,
            bn_images,
            valid_images,
            labels,
            bn_batch_size=16,
            eval_batch_size=8,
            prepare=_prepare,
        )
        return scorer.score(space.format(arch))

    accuracy, code = score(predictions)
    assert torch.allclose(torch.tensor(code), lam)
    assert accuracy == 100.0
    assert score((predictions + 1) % 10)[0] == 0.0
    for bn in bn_layers(net):
        bn.running_mean.fill_(123.0)
    assert score(predictions) == (accuracy, code)


def test_path_scorer_without_a_simplex_net_uses_uniform_codes():
    """``simplex=None`` scores every path with λ = 1/K."""
    space, net, _, bn_images, valid_images, arch = _scorer_case(k=2)
    predictions = _hand_predictions(net, arch, torch.full((2,), 0.5), bn_images, valid_images)
    scorer = PathScorer(
        space, net, None, bn_images, valid_images, predictions, 16, 8, prepare=_prepare
    )
    assert scorer.score(arch) == (100.0, [0.5, 0.5])
