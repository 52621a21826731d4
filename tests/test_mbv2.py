"""The MobileNetV2 space: encodings, exact FLOPs, the K-shot supernet with widths, r_c."""

from __future__ import annotations

import itertools
import math
from importlib.resources import files

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kshot.nn.mbv2_supernet import MBV2Supernet
from kshot.nn.simplex import channel_regularizer, width_positives
from kshot.spaces import MBV2Space, mbv2

pytestmark = pytest.mark.numerics

TINY_SHAPE = {"num_classes": 10, "width_mult": 0.125, "divisor": 1, "in_channels": 3}


def _counted_mflops(net: torch.nn.Module, resolution: int) -> float:
    with FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops() / 2 / 1e6  # the counter counts a multiply-add as 2


def test_space_counts():
    assert len(mbv2.OPS) == 13 and len(set(mbv2.OPS)) == 13
    assert mbv2.WIDTHS == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert (mbv2.NUM_BLOCKS, mbv2.NUM_LAYERS) == (21, 24)
    assert mbv2.size() == 5**24 * 13**21
    assert MBV2Space().size == 5**24 * 13**21
    assert MBV2Space(channel_search=False).size == 13**21
    # kernel × expansion × SE, plus identity
    specs = {(s.kernel, s.expansion, s.se) for s in map(mbv2.op_spec, range(12))}
    assert specs == set(itertools.product((3, 5, 7), (3, 6), (False, True)))
    assert mbv2.op_spec(12).is_identity


def test_path_strings_round_trip_and_encodings():
    rng = np.random.default_rng(0)
    for _ in range(50):
        path = mbv2.sample(rng)
        assert mbv2.parse(mbv2.format_arch(path)) == path
        code, width = mbv2.one_hot(path), mbv2.width_code(path)
        assert code.shape == (21 * 13,) and code.sum() == 21
        assert code.view(21, 13).argmax(1).tolist() == list(path[:21])
        assert width.shape == (24 * 5,) and width.view(24, 5).argmax(1).tolist() == list(path[21:])


@pytest.mark.parametrize(
    "bad, message",
    [
        ("k3e3:1.0", "expected 21 operations"),
        ("-".join(["k9e3"] * 21) + ":" + "-".join(["1.0"] * 24), "unknown operation"),
        ("-".join(["id"] * 21) + ":" + "-".join(["0.5"] * 24), "width factor '0.5'"),
        ([0] * 44, "got 44"),
        ([13] + [0] * 44, "operation of block 0 is 13"),
        ([0] * 21 + [5] + [0] * 23, "width of layer 0 is 5"),
    ],
)
def test_bad_paths_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        mbv2.parse(bad)


def test_operators_stay_in_the_space():
    rng = np.random.default_rng(1)
    a, b = mbv2.sample(rng), mbv2.sample(rng)
    for _ in range(100):
        child = mbv2.crossover(a, b, rng)
        assert all(x in (p, q) for x, p, q in zip(child, a, b, strict=True))
        assert mbv2.mutate(a, rng, 0.1) != a
    fixed = MBV2Space(channel_search=False)
    for _ in range(50):
        path = fixed.mutate(fixed.sample(rng), rng, 0.3)
        assert mbv2.width_factors(path) == (1.0,) * 24


def test_flops_and_params_equal_the_built_network_tiny():
    rng = np.random.default_rng(2)
    paths = [mbv2.sample(rng) for _ in range(6)]
    paths += [mbv2.full_width([12] * 21), mbv2.full_width([11] * 21)]  # all identity / all SE
    for path in paths:
        net = mbv2.build(path, **TINY_SHAPE)
        assert mbv2.flops(path, 32, **TINY_SHAPE) == pytest.approx(_counted_mflops(net, 32), 1e-12)
        n_params = sum(p.numel() for p in net.parameters()) / 1e6
        assert mbv2.params(path, 32, **TINY_SHAPE) == pytest.approx(n_params, 1e-12)


def test_flops_equal_the_counter_at_imagenet_size():
    path = mbv2.sample(np.random.default_rng(3))
    net = mbv2.build(path)
    assert mbv2.flops(path) == pytest.approx(_counted_mflops(net, 224), 1e-12)
    assert 50 < mbv2.flops(path) < 1500


def test_cheapest_flops_is_a_lower_bound_reached_by_no_sample_below_it():
    rng = np.random.default_rng(4)
    cheapest = mbv2.cheapest_flops(32, **TINY_SHAPE)
    samples = [mbv2.flops(mbv2.sample(rng), 32, **TINY_SHAPE) for _ in range(300)]
    assert cheapest <= min(samples)
    # the all-identity path at the narrowest widths is one candidate the optimum must not exceed
    narrow = tuple([12] * 21 + [0] * 24)
    assert cheapest <= mbv2.flops(narrow, 32, **TINY_SHAPE)
    full = mbv2.cheapest_flops(32, channel_search=False, **TINY_SHAPE)
    assert cheapest < full <= mbv2.flops(mbv2.full_width([12] * 21), 32, **TINY_SHAPE)


def _supernet(k: int) -> MBV2Supernet:
    torch.manual_seed(0)
    return MBV2Supernet(k, **TINY_SHAPE)


def test_k1_full_width_equals_the_plain_network_bitwise():
    """K = 1 at width 1.0 is the plain SPOS supernet: outputs and gradients equal the stand-alone
    network that holds the same weights, in train and eval mode."""
    supernet, lam = _supernet(1), torch.ones(1)
    rng = np.random.default_rng(5)
    x = torch.randn(6, 3, 32, 32)
    y = torch.randint(0, 10, (6,))
    for _ in range(3):
        path = mbv2.full_width(mbv2.sample(rng)[:21])
        net = supernet.build_standalone(path)
        net.load_state_dict(supernet.export(path, lam))
        supernet.zero_grad(set_to_none=True)
        supernet.train(), net.train()
        out_s, out_n = supernet(x, path, lam), net(x)
        assert torch.equal(out_s, out_n)
        torch.nn.functional.cross_entropy(out_s, y).backward()
        torch.nn.functional.cross_entropy(out_n, y).backward()
        grads = dict(net.named_parameters())
        for name, layer, _ in supernet.path_layers(path):
            for pname, slot in zip(layer.export_names(), layer.slots(), strict=True):
                assert torch.equal(slot.grad[0], grads[f"{name}.{pname}"].grad), name
        supernet.eval(), net.eval()
        assert torch.equal(supernet(x, path, lam), net(x))


def test_narrow_widths_merge_their_own_weights_and_export_exactly():
    supernet = _supernet(4)
    rng = np.random.default_rng(6)
    x = torch.randn(4, 3, 32, 32)
    path = (0, *mbv2.sample(rng)[1:])  # block 0 is k3e3: its 1x1 expansion is cut in two dims
    lam = torch.softmax(torch.randn(4), 0)
    net = supernet.build_standalone(path)
    net.load_state_dict(supernet.export(path, lam))
    supernet.train(), net.train()
    assert torch.equal(supernet(x, path, lam), net(x))
    # the merged weight of a cut layer is Σ_k λ_k Θ_k[:c_out, :c_in] (channel search)
    name, layer, (c_in, c_out) = next(
        p for p in supernet.path_layers(path) if p.name == "layers.2.expand.0"
    )
    expected = torch.einsum("k,k...->...", lam, layer.slots()[0][:, :c_out, :c_in])
    assert torch.allclose(supernet.export(path, lam)[f"{name}.weight"], expected, atol=1e-6)


def test_only_the_path_gets_gradients():
    supernet = _supernet(2)
    path = mbv2.sample(np.random.default_rng(7))
    lam = torch.tensor([0.3, 0.7])
    supernet(torch.randn(2, 3, 32, 32), path, lam).sum().backward()
    on_path = {id(p.layer) for p in supernet.path_layers(path)}
    for module in supernet.modules():
        for param in module.parameters(recurse=False):
            assert (param.grad is not None) == (id(module) in on_path)


def _brute_force_rc(lams, ops, widths, threshold, tau):
    m, terms = len(lams), []
    dot = [
        [sum(a * b for a, b in zip(lams[i], lams[j], strict=True)) for j in range(m)]
        for i in range(m)
    ]
    for i, k in itertools.permutations(range(m), 2):
        distance = sum(abs(a - b) for a, b in zip(widths[i], widths[k], strict=True)) / len(
            widths[i]
        )
        if ops[i] != ops[k] or distance >= threshold:
            continue
        num = math.exp(dot[i][k] / tau)
        den = num + sum(math.exp(dot[i][j] / tau) for j in range(m) if j != k)  # Eq. 15
        terms.append(-math.log(num / den))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_regularizer_matches_eq_15_16_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, k, threshold, tau = 8, 4, 0.31, 0.3  # 0.31 is no multiple of a width step: no ties
    lams = torch.softmax(torch.as_tensor(rng.normal(size=(m, k))), dim=1)
    ops = [tuple(rng.integers(0, 2, size=3)) if seed == 2 else (0,) for _ in range(m)]
    widths = torch.as_tensor(rng.choice(mbv2.WIDTHS, size=(m, 24)))
    widths[1] = widths[0]  # at least one positive pair
    positives = width_positives(ops, widths, threshold)
    got = channel_regularizer(lams, positives, tau)
    want = _brute_force_rc(lams.tolist(), ops, widths.tolist(), threshold, tau)
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert positives.diagonal().any().item() is False


def test_a_pair_at_the_threshold_is_not_positive_whatever_the_rounding():
    # a mean width difference of exactly 0.3 (12 of 24 layers differ by 0.6), reached two ways
    half = torch.cat([torch.ones(12), torch.zeros(12)])
    pairs = [(torch.full((24,), 0.2), 0.2 + 0.6 * half), (torch.full((24,), 0.4), 0.4 + 0.6 * half)]
    off_diagonal = ~torch.eye(2, dtype=torch.bool)
    for a, b in pairs:
        widths = torch.stack([a, b])
        assert not width_positives([(0,), (0,)], widths, threshold=0.3).any()
        assert torch.equal(width_positives([(0,), (0,)], widths, threshold=0.31), off_diagonal)


def test_channel_regularizer_without_positives_is_zero_and_differentiable():
    lams = torch.softmax(torch.randn(4, 3, requires_grad=True), 1)
    reg = channel_regularizer(lams, torch.zeros(4, 4, dtype=torch.bool), 0.3)
    assert reg.item() == 0.0 and reg.requires_grad


@pytest.mark.parametrize("budget", [145, 286, 343, 412])
def test_table_2_configs_load_and_their_budgets_are_reachable(budget):
    from kshot.config import load_config

    configs = files("kshot") / "configs"
    cfg = load_config(
        str(configs / "mbv2-imagenet.yaml"), str(configs / f"mbv2-imagenet-{budget}m.yaml")
    )
    assert (cfg.search_space, cfg.k, cfg.flops_budget, cfg.resolution) == ("mbv2", 8, budget, 224)
    space = MBV2Space(shape={"num_classes": 1000, "width_mult": 1.0, "divisor": 8}, resolution=224)
    rng = np.random.default_rng(budget)
    assert space.cheapest_flops() < budget
    assert any(space.flops(space.sample(rng)) <= budget for _ in range(200))
