"""The K-shot layers, the supernet and the simplex-net, as the paper defines them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.nn.kshot import KShotBatchNorm2d, KShotConv2d, merge_kshot_weights, merge_path
from kshot.nn.nb201_supernet import NB201Supernet
from kshot.nn.simplex import SimplexNet
from kshot.spaces import nb201

pytestmark = pytest.mark.numerics

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


def test_merge_is_the_convex_combination_of_the_slots():
    torch.manual_seed(0)
    slots = [torch.randn(5, 3, 2), torch.randn(5, 7)]
    lam = torch.softmax(torch.randn(5), 0)
    merged = merge_kshot_weights(slots, lam)
    for s, m in zip(slots, merged, strict=True):
        assert torch.allclose(m, (lam.view(-1, *[1] * (s.dim() - 1)) * s).sum(0), atol=1e-6)


@pytest.mark.parametrize("train_mode", [True, False])
def test_k1_equals_the_one_shot_stand_alone_network(train_mode):
    """K = 1 is SPOS: the path's output is exactly that of a plain network with those weights."""
    torch.manual_seed(0)
    supernet = NB201Supernet(1, C=8, N=2, num_classes=10)
    x = torch.randn(6, 3, 16, 16)
    for arch in (ARCH, nb201.sample(np.random.default_rng(3))):
        net = supernet.build_standalone(arch)
        net.load_state_dict(supernet.export(arch, torch.ones(1)), strict=True)
        supernet.train(train_mode)
        net.train(train_mode)
        assert torch.equal(supernet(x, arch, torch.ones(1)), net(x))


def test_k1_gradients_equal_the_stand_alone_network():
    torch.manual_seed(0)
    supernet = NB201Supernet(1, C=4, N=1)
    net = supernet.build_standalone(ARCH)
    net.load_state_dict(supernet.export(ARCH, torch.ones(1)))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(supernet(x, ARCH, torch.ones(1)), y).backward()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    layers = dict(supernet.path_layers(nb201.parse(ARCH)))
    for name, param in net.named_parameters():
        prefix, leaf = name.rsplit(".", 1)
        assert torch.equal(getattr(layers[prefix], leaf).grad[0], param.grad), name


def test_export_of_a_k_shot_path_is_its_merged_network():
    torch.manual_seed(0)
    supernet = NB201Supernet(4, C=4, N=1).eval()
    lam = torch.softmax(torch.randn(4), 0)
    net = supernet.build_standalone(ARCH).eval()
    net.load_state_dict(supernet.export(ARCH, lam))
    x = torch.randn(3, 3, 8, 8)
    assert torch.allclose(supernet(x, ARCH, lam), net(x), atol=1e-5)


def test_only_the_sampled_paths_slots_get_gradients():
    torch.manual_seed(0)
    supernet = NB201Supernet(4, C=4, N=1)
    choice = nb201.parse(ARCH)
    lam = torch.full((4,), 0.25)
    supernet(torch.randn(2, 3, 8, 8), choice, lam).sum().backward()
    on_path = {id(p) for _, layer in supernet.path_layers(choice) for p in layer.slots()}
    for name, p in supernet.named_parameters():
        if id(p) in on_path:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} is off the path but got a gradient"
    # the path uses convs on edges 0, 1 and 5 only
    used_edges = {
        n.split(".")[3]
        for n, p in supernet.named_parameters()
        if p.grad is not None and ".edges." in n
    }
    assert used_edges == {"0", "1", "5"}


def test_k_slots_are_initialised_independently():
    conv = KShotConv2d(3, 4, 3, k=4)
    assert not torch.equal(conv.weight[0], conv.weight[1])


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="K = 0"):
        NB201Supernet(0, C=4, N=1)


def test_simplex_net_starts_at_uniform_lambda_and_stays_on_the_simplex():
    torch.manual_seed(0)
    net = SimplexNet(30, k=8, hidden=16)
    codes = torch.stack([nb201.one_hot(nb201.sample(np.random.default_rng(i))) for i in range(10)])
    assert torch.allclose(net(codes), torch.full((10, 8), 1 / 8))
    favourite = torch.arange(10) % 8  # a different slot for each path, far from uniform
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(20):
        loss = -net(codes)[torch.arange(10), favourite].log().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lam = net(codes)
    assert (lam >= 0).all()
    assert torch.allclose(lam.sum(1), torch.ones(10), atol=1e-6)
    assert torch.equal(lam.argmax(1), favourite)  # λ is learned per path: its input is the path


def test_channel_branch_is_merged_before_the_output_layer():
    torch.manual_seed(0)
    net = SimplexNet(30, k=4, hidden=8, width_dim=5)
    torch.nn.init.normal_(net.out.weight)
    code = nb201.one_hot(ARCH)
    widths = torch.eye(5)
    lams = net(code.expand(5, -1), widths)
    assert not torch.allclose(lams[0], lams[1])  # the width changes λ
    assert torch.allclose(lams.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="width encoding"):
        net(code)


@pytest.mark.parametrize("train_mode", [True, False])
def test_the_path_masked_forward_equals_the_paths_forward(train_mode):
    """Every operation runs and the one-hot code keeps the path's: the same logits, the same
    gradients on the path, zero gradients off it, and the same BN statistics afterwards."""
    torch.manual_seed(0)
    eager = NB201Supernet(4, C=4, N=1).train(train_mode)
    masked = copy.deepcopy(eager)
    rng = np.random.default_rng(0)
    for _ in range(4):
        arch, lam = nb201.sample(rng), torch.softmax(torch.randn(4), 0)
        x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
        eager.zero_grad(set_to_none=True)
        masked.zero_grad(set_to_none=True)
        logits = eager(x, arch, lam)
        masked_logits = masked.forward_masked(x, nb201.one_hot(arch), lam)
        assert torch.equal(masked_logits, logits)
        F.cross_entropy(logits, y).backward()
        F.cross_entropy(masked_logits, y).backward()
        for (name, p), q in zip(eager.named_parameters(), masked.parameters(), strict=True):
            expected = torch.zeros_like(q) if p.grad is None else p.grad
            assert torch.allclose(q.grad, expected, atol=1e-6), name
        for (name, b), c in zip(eager.named_buffers(), masked.buffers(), strict=True):
            assert torch.equal(b, c), name  # updated by batch_norm itself, as eager


def test_the_masked_batch_norm_needs_a_fixed_momentum():
    bn = KShotBatchNorm2d(4, 2, momentum=None)  # cumulative average: a per-step Python number
    merged = merge_path([bn], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="fixed momentum"):
        bn.forward_masked(torch.randn(2, 4, 3, 3), merged, torch.tensor(True))
