"""Where the simplex-net's signal comes from: each path's ∂L/∂λ split by layers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.eval.code_gradients import code_gradients, common_fraction, is_own_layer
from kshot.nn.simplex import SimplexNet
from kshot.nn.supernets import build_supernet
from kshot.spaces import MBV2Space, NB201Space

K = 3
CONVLESS = (0, 1, 4, 1, 0, 4)  # none, skip and pooling only: no weights of its own
CONVS = (2, 3, 2, 3, 3, 2)


def _setup() -> tuple:
    torch.manual_seed(0)
    space = NB201Space({"C": 4, "N": 1, "num_classes": 10}, resolution=8)
    supernet = build_supernet(space, K)
    # slots that differ, so that the code matters for every layer
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    simplex = SimplexNet(space.arch_dim, K, hidden=8)
    torch.nn.init.normal_(simplex.out.weight)  # codes off uniform and different per path
    images, labels = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    return space, supernet, simplex, images, labels


@pytest.mark.numerics
def test_parts_add_up_to_the_gradient_of_the_path_s_loss_on_the_simplex():
    space, supernet, simplex, images, labels = _setup()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    grads = code_gradients(supernet, simplex, space, [CONVS, CONVLESS], images, labels)
    after = supernet.state_dict()  # weights and BN statistics untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(grads[part].shape == (2, K) for part in ("shared", "own", "total"))
    np.testing.assert_allclose(grads["total"], grads["shared"] + grads["own"], atol=1e-6)
    # the total is the plain gradient of the path's loss through its merged weights, projected
    supernet.train()
    for row, path in enumerate([CONVS, CONVLESS]):
        lam = simplex(*space.codes([path], images.device))[0].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(supernet(images, path, lam), labels), lam)
        expected = (grad - grad.mean()).double().numpy()
        np.testing.assert_allclose(grads["total"][row], expected, rtol=1e-4, atol=1e-6)
    # a path with no convolutions on its edges has no own part; one with them has
    assert np.all(grads["own"][1] == 0) and np.any(grads["own"][0] != 0)
    np.testing.assert_allclose(grads["total"].sum(axis=1), 0, atol=1e-7)  # on the simplex


def test_own_layers_are_the_cell_edges_convolutions():
    space = NB201Space({"C": 4, "N": 1, "num_classes": 10}, resolution=8)
    names = [name for name, _ in build_supernet(space, K).path_layers(CONVS)]
    own = [name for name in names if is_own_layer(name)]
    # 3 cells at N = 1, each edge a convolution and its BN
    assert own == [
        f"cells.{i}.edges.{e}.{m}" for i in (0, 2, 4) for e in range(6) for m in ("conv", "bn")
    ]
    assert not any(is_own_layer(n) for n in ("stem", "last_bn", "classifier", "cells.1.conv_a"))


def test_common_fraction_reads_one_for_parallel_gradients_and_zero_for_ones_that_cancel():
    g = np.array([[1.0, -1.0, 0.0]])
    assert common_fraction(np.repeat(g, 4, axis=0)) == pytest.approx(1.0)
    balanced = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 1.0, -1.0], [0.0, -1.0, 1.0]])
    assert common_fraction(balanced) == pytest.approx(0.0)
    two = np.array([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]])  # mean (1, -1, 0): 2 / (8 / 2)
    assert common_fraction(two) == pytest.approx(0.5)
    assert np.isnan(common_fraction(np.zeros((3, K))))


def test_only_the_nb201_space_is_measured():
    space = MBV2Space({"num_classes": 10})
    with pytest.raises(ValueError, match="'mbv2'"):
        code_gradients(torch.nn.Identity(), None, space, [], torch.zeros(1), torch.zeros(1))
