"""The NAS-Bench-201 space: the benchmark's strings, indices, operators and exact FLOPs/params."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kshot.spaces import nb201

ARCH = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


def test_every_arch_string_round_trips_and_indices_are_a_bijection():
    archs = nb201.all_archs()
    assert len(archs) == len(set(archs)) == 15_625
    for i, choice in enumerate(archs):
        text = nb201.format_arch(choice)
        assert nb201.parse(text) == choice
        assert nb201.format_arch(nb201.parse(text)) == text
        assert nb201.to_index(text) == i
        assert nb201.from_index(i) == choice


def test_every_arch_of_the_benchmark_table_parses(nb201_table):
    assert {nb201.format_arch(nb201.parse(a)) for a in nb201_table} == set(nb201_table)


@pytest.fixture
def nb201_table() -> list[str]:
    import csv
    import gzip
    import importlib.resources

    table = importlib.resources.files("kshot.eval") / "nb201_accuracy.csv.gz"
    with gzip.open(table.open("rb"), "rt", newline="") as f:
        return [row["arch"] for row in csv.DictReader(f)]


def test_flops_and_params_match_the_benchmark():
    assert nb201.flops(ARCH, C=16, N=5, num_classes=10) == pytest.approx(15.64737, abs=1e-9)
    assert nb201.params(ARCH, C=16, N=5, num_classes=10) == pytest.approx(0.129306, abs=1e-9)


@pytest.mark.parametrize(
    "C,N,classes,res,chans", [(16, 5, 10, 32, 3), (8, 1, 10, 8, 1), (4, 2, 100, 16, 3)]
)
def test_flops_formula_equals_counting_the_built_network(C, N, classes, res, chans):
    rng = np.random.default_rng(0)
    for _ in range(3):
        arch = nb201.sample(rng)
        net = nb201.build(arch, C=C, N=N, num_classes=classes, in_channels=chans)
        counter = FlopCounterMode(display=False)
        with counter:
            net(torch.randn(1, chans, res, res))
        counts = counter.get_flop_counts()["Global"]
        # torch counts 2 FLOPs per multiply-add and no bias; NAS-Bench-201 counts MACs + bias
        macs = sum(v for op, v in counts.items() if "convolution" in str(op) or "mm" in str(op)) / 2
        expected = (macs + classes) / 1e6
        assert nb201.flops(
            arch, C=C, N=N, num_classes=classes, resolution=res, in_channels=chans
        ) == pytest.approx(expected, rel=1e-12)
        n_params = sum(p.numel() for p in net.parameters())
        assert nb201.params(
            arch, C=C, N=N, num_classes=classes, in_channels=chans
        ) == pytest.approx(n_params / 1e6, rel=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "|none~0|",
        "|none~0|+|none~0|none~1|",
        "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|none~0|+|none~0|+|none~0|none~1|none~2|",
    ],
)
def test_invalid_arch_strings_are_refused_with_the_string_in_the_message(bad):
    with pytest.raises(ValueError, match="invalid nb201") as err:
        nb201.parse(bad)
    assert repr(bad) in str(err.value)


def test_invalid_choice_vectors_and_indices_are_refused():
    with pytest.raises(ValueError, match="choice vector"):
        nb201.parse([0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="out of range"):
        nb201.from_index(15_625)


def test_sampling_mutation_and_crossover_stay_in_the_space():
    rng = np.random.default_rng(1)
    seen = {nb201.sample(rng) for _ in range(2000)}
    assert len(seen) > 1500  # uniform over 15,625
    for _ in range(200):
        a, b = nb201.sample(rng), nb201.sample(rng)
        m = nb201.mutate(a, rng, prob=0.1)
        assert m != a and nb201.parse(m) == m
        c = nb201.crossover(a, b, rng)
        assert all(x in (y, z) for x, y, z in zip(c, a, b, strict=True))


def test_one_hot_encoding_has_one_op_per_edge():
    code = nb201.one_hot(ARCH).view(nb201.NUM_EDGES, nb201.NUM_OPS)
    assert code.sum(1).tolist() == [1.0] * 6
    assert code.argmax(1).tolist() == list(nb201.parse(ARCH))
