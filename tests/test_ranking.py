"""Ranking metrics (τ-a, τ-b, ρ, r, top-group τ) and NAS-Bench-201 ground-truth tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from kshot.eval import (
    align_scores,
    kendall_tau,
    kendall_tau_a,
    kendall_tau_top_group,
    load_ground_truth,
    pearson_r,
    ranking_metrics,
    spearman_rho,
    write_ground_truth_csv,
)
from kshot.eval.baselines import (
    BASELINES,
    baseline_counts,
    baseline_metrics,
    compare_with_baselines,
)
from kshot.spaces import NB201Space, nb201

ARCH_A = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"
ARCH_B = "|skip_connect~0|+|nor_conv_1x1~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def brute_force_tau_a(truth: list[float], scores: list[float]) -> float:
    """Eq. 18 pair by pair: a pair tied on either side adds 0 and stays in the denominator."""
    total = 0
    pairs = len(truth) * (len(truth) - 1) // 2
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            total += _sign(truth[i] - truth[j]) * _sign(scores[i] - scores[j])
    return total / pairs


def brute_force_top_group_tau(truth: list[float], scores: list[float], n: int) -> float:
    """Appendix C.1 pair by pair: a_high from the truly best n (position breaks truth ties), a_low
    from the rest; +1 when the supernet ranks a_high above a_low, -1 below, 0 on a score tie."""
    order = sorted(range(len(truth)), key=lambda i: -truth[i])  # stable: earlier first on ties
    high, low = order[:n], order[n:]
    total = sum(_sign(scores[h] - scores[lo]) for h in high for lo in low)
    return total / (len(high) * len(low))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_correlations_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=200)
    scores = truth + rng.normal(scale=0.8, size=200)
    scores[:20] = np.round(scores[:20])  # some ties
    assert kendall_tau(truth, scores) == pytest.approx(stats.kendalltau(truth, scores).statistic)
    assert spearman_rho(truth, scores) == pytest.approx(stats.spearmanr(truth, scores).statistic)
    assert pearson_r(truth, scores) == pytest.approx(stats.pearsonr(truth, scores).statistic)
    assert 0.3 < kendall_tau(truth, scores) < 0.9


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tau_a_is_eq_18_pair_by_pair_with_ties(seed: int) -> None:
    """τ-a counts every pair in the denominator; with ties it is smaller in size than τ-b."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 12, size=60).astype(float).tolist()  # many ties on both sides
    scores = (np.asarray(truth) + rng.integers(-4, 5, size=60)).astype(float).tolist()
    expected = brute_force_tau_a(truth, scores)
    assert kendall_tau_a(truth, scores) == pytest.approx(expected, abs=1e-12)
    assert abs(kendall_tau_a(truth, scores)) < abs(kendall_tau(truth, scores))
    hand = [1.0, 2.0, 2.0, 3.0], [1.0, 1.0, 2.0, 3.0]  # 6 pairs: 4 concordant, 2 tied, 0 discordant
    assert kendall_tau_a(*hand) == pytest.approx(4 / 6)
    assert brute_force_tau_a(*hand) == pytest.approx(4 / 6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_top_group_tau_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 15, size=80).astype(float).tolist()  # many ties in truth
    scores = (np.asarray(truth) + rng.integers(-4, 5, size=80)).astype(float).tolist()
    for n in (1, 3, 10, 25, 79):
        expected = brute_force_top_group_tau(truth, scores, n)
        assert kendall_tau_top_group(truth, scores, n) == pytest.approx(expected, abs=1e-12)


def test_top_group_tau_counts_only_pairs_across_the_boundary() -> None:
    """Pairs inside the top group do not count: reversing the order within it changes nothing,
    and with n = 2 of 4 the denominator is 2 x 2 = 4 pairs."""
    truth = [4.0, 3.0, 2.0, 1.0]
    assert kendall_tau_top_group(truth, [10.0, 9.0, 1.0, 2.0], 2) == pytest.approx(1.0)
    assert kendall_tau_top_group(truth, [9.0, 10.0, 1.0, 2.0], 2) == pytest.approx(1.0)
    # a_high = path 1 ties with a_low = path 2 in score: 3 concordant, 1 neither, out of 4
    assert kendall_tau_top_group(truth, [9.0, 5.0, 5.0, 1.0], 2) == pytest.approx(3 / 4)
    # ground truth tied across the boundary: position puts path 1 high, and its pair counts
    assert kendall_tau_top_group([4.0, 2.0, 2.0, 1.0], [9.0, 1.0, 5.0, 0.0], 2) == pytest.approx(
        2 / 4
    )


def test_top_group_tau_blocks_agree_with_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    truth, scores = rng.normal(size=300), rng.normal(size=300)
    whole = kendall_tau_top_group(truth, scores, 150)
    monkeypatch.setattr("kshot.eval.ranking._MAX_BLOCK_ELEMENTS", 1000)  # 6 rows per block
    assert kendall_tau_top_group(truth, scores, 150) == pytest.approx(whole, abs=1e-12)


def test_perfect_and_reversed_rankings() -> None:
    truth = np.linspace(50.0, 95.0, 40)
    for scores, sign in ((truth * 0.01 + 3.0, 1.0), (-truth, -1.0)):
        metrics = ranking_metrics(truth, scores, top_n=[1, 5, 39])
        assert metrics["kendall_tau_a"] == pytest.approx(sign)
        assert metrics["kendall_tau_b"] == pytest.approx(sign)
        assert metrics["spearman_rho"] == pytest.approx(sign)
        assert metrics["pearson_r"] == pytest.approx(sign)
        assert metrics["top_group_tau"] == {
            "1": pytest.approx(sign),
            "5": pytest.approx(sign),
            "39": pytest.approx(sign),
        }


def test_a_group_of_all_paths_has_no_pairs() -> None:
    rng = np.random.default_rng(3)
    truth, scores = rng.normal(size=30), rng.normal(size=30)
    assert math.isnan(kendall_tau_top_group(truth, scores, 30))
    assert math.isnan(kendall_tau_top_group(truth, scores, 1000))


def test_ranking_metrics_is_json_ready() -> None:
    rng = np.random.default_rng(5)
    truth = rng.normal(size=50)
    metrics = ranking_metrics(truth, truth + rng.normal(size=50), top_n=[10, 40])
    assert set(metrics) == {
        "n_paths",
        "kendall_tau_a",
        "kendall_tau_b",
        "spearman_rho",
        "pearson_r",
        "top_group_tau",
    }
    assert metrics["n_paths"] == 50
    assert list(metrics["top_group_tau"]) == ["10", "40"]
    assert json.loads(json.dumps(metrics)) == metrics


def test_constant_scores_give_nan() -> None:
    assert math.isnan(kendall_tau([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    assert math.isnan(pearson_r([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="3 truth values, 2 scores"):
        ranking_metrics([1.0, 2.0, 3.0], [1.0, 2.0], top_n=[1])
    with pytest.raises(ValueError, match="at least 2 paths"):
        kendall_tau([1.0], [1.0])
    with pytest.raises(ValueError, match="non-finite.*nan.*position 1"):
        spearman_rho([1.0, 2.0, 3.0], [1.0, float("nan"), 3.0])
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        kendall_tau_top_group([1.0, 2.0], [1.0, 2.0], 0)
    with pytest.raises(ValueError, match="top_n holds -5"):
        ranking_metrics([1.0, 2.0], [1.0, 2.0], top_n=[3, -5])


def test_the_shipped_nb201_table_is_the_whole_benchmark() -> None:
    truth = load_ground_truth("nb201", "cifar10_test")
    assert len(truth) == nb201.SIZE == 15_625
    assert {nb201.parse(arch) for arch in truth} == set(nb201.all_archs())
    # the published maxima and their architectures (indices 6111, 9930, 857)
    assert max(truth.values()) == pytest.approx(94.37333, abs=1e-5)
    assert max(truth, key=truth.get) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    )
    assert max(load_ground_truth("nb201", "cifar100_test").values()) == pytest.approx(
        73.51333, abs=1e-5
    )
    assert max(load_ground_truth("nb201", "imagenet16_test").values()) == pytest.approx(
        47.31111, abs=1e-5
    )
    with pytest.raises(ValueError, match="no column 'cifar10_valid'.*'imagenet16_test'"):
        load_ground_truth("nb201", "cifar10_valid")


def test_the_shipped_nb201_table_equals_the_test_data_copy() -> None:
    from tests.conftest import shared_data

    copy = str(shared_data("nb201", "nb201_accuracy.csv"))
    for column in ("cifar10_test", "cifar100_test", "imagenet16_test"):
        assert load_ground_truth("nb201", column) == load_ground_truth(copy, column)


def test_round_trip_and_normalised_archs(tmp_path: Path) -> None:
    uri = str(tmp_path / "standalone" / "ground_truth.csv")
    write_ground_truth_csv(uri, {ARCH_A: 91.5, ARCH_B: 80.25})
    assert load_ground_truth(uri, "accuracy") == {ARCH_A: 91.5, ARCH_B: 80.25}
    padded = tmp_path / "padded.csv"
    padded.write_text(f"arch,acc\n  {ARCH_A}  ,70\n")
    assert load_ground_truth(str(padded), "acc") == {ARCH_A: 70.0}


def test_bad_arch_names_row_and_uri(tmp_path: Path) -> None:
    table = tmp_path / "truth.csv"
    table.write_text(f"arch,accuracy\n{ARCH_A},90\n{ARCH_B},80\n|conv_9x9~0|+|x|,70\n")
    with pytest.raises(ValueError, match=r"truth\.csv.*row 3.*conv_9x9"):
        load_ground_truth(str(table), "accuracy")


def test_missing_column_names_column_uri_and_columns(tmp_path: Path) -> None:
    table = tmp_path / "truth.csv"
    table.write_text(f"index,arch,cifar10_test\n0,{ARCH_A},90\n")
    with pytest.raises(ValueError, match=r"truth\.csv.*'cifar100_test'.*'index', 'arch'") as error:
        load_ground_truth(str(table), "cifar100_test")
    assert str(table) in str(error.value)


def test_duplicate_arch_and_bad_accuracy_raise(tmp_path: Path) -> None:
    duplicate = tmp_path / "duplicate.csv"
    duplicate.write_text(f"arch,accuracy\n{ARCH_A},90\n{ARCH_B},80\n{ARCH_A},85\n")
    with pytest.raises(ValueError, match=r"duplicate\.csv.*row 3.*already appeared in row 1"):
        load_ground_truth(str(duplicate), "accuracy")
    not_number = tmp_path / "not_number.csv"
    not_number.write_text(f"arch,accuracy\n{ARCH_A},ninety\n")
    with pytest.raises(ValueError, match=r"not_number\.csv.*row 1.*'ninety'"):
        load_ground_truth(str(not_number), "accuracy")


def test_benchmark_file_without_api_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for package in ("nats_bench", "nas_201_api"):
        monkeypatch.setitem(sys.modules, package, None)  # makes the package unimportable
    benchmark = str(tmp_path / "NAS-Bench-201-v1_1-096897.pth")
    with pytest.raises(ValueError, match=r"096897\.pth.*pip install nats_bench"):
        load_ground_truth(benchmark, "cifar10_test")
    with pytest.raises(ValueError, match=r"'accuracy'.*cifar10_test"):
        load_ground_truth(benchmark, "accuracy")


def test_align_scores(tmp_path: Path) -> None:
    truth = {ARCH_A: 90.0, ARCH_B: 80.0}
    archs, truth_values, score_values = align_scores(
        truth, {nb201.format_arch(nb201.parse(ARCH_B)): 0.3, ARCH_A: 0.7}, "truth.csv"
    )
    assert archs == [ARCH_B, ARCH_A]
    assert truth_values.tolist() == [80.0, 90.0]
    assert score_values.tolist() == [0.3, 0.7]
    missing = nb201.format_arch((0, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"none~0.*not in the ground truth 'truth\.csv'"):
        align_scores(truth, {missing: 0.1}, "truth.csv")


def test_a_benchmark_file_is_checked_before_training_without_loading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preflight of the training stages: found, with its column and API package, but not
    read (the benchmark's API takes minutes to load it)."""
    from kshot.eval import ground_truth

    monkeypatch.setattr(ground_truth.importlib.util, "find_spec", lambda name: name == "nats_bench")
    monkeypatch.setattr(ground_truth, "_load_benchmark", lambda *a: pytest.fail("loaded"))
    benchmark = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    with pytest.raises(FileNotFoundError, match=r"096897\.pth' does not exist"):
        ground_truth.check_ground_truth(str(benchmark), "cifar10_test")
    benchmark.write_bytes(b"the benchmark")
    ground_truth.check_ground_truth(str(benchmark), "cifar10_test")
    with pytest.raises(ValueError, match=r"'accuracy'.*cifar10_test"):
        ground_truth.check_ground_truth(str(benchmark), "accuracy")


def test_the_zero_cost_baselines_rank_the_same_paths_by_parameters_and_flops():
    """Each baseline scores the ranked paths by the exact size of their stand-alone network (the
    parameters counted tensor by tensor; FLOPs by the formula pinned in test_nb201), and its
    metrics are those pairs counted by brute force: Eq. 18's τ-a with ties counting 0, and
    appendix C.1's top-group τ."""
    space = NB201Space({"C": 4, "N": 1, "num_classes": 10}, resolution=8)
    rng = np.random.default_rng(5)
    archs = [space.format(space.sample(rng)) for _ in range(14)]
    truth = [float(v) for v in np.round(rng.uniform(80, 95, size=len(archs)))]  # with ties
    counts = baseline_counts(space, archs)
    for arch, size in zip(archs, counts["params"], strict=True):
        net = space.build(arch)
        assert size == pytest.approx(sum(p.numel() for p in net.parameters()) / 1e6, abs=1e-12)
    assert counts["flops"] == [space.flops(a) for a in archs]
    metrics = baseline_metrics(truth, counts, [3, 5])
    assert set(metrics) == set(BASELINES) == {"params", "flops"}
    for name, sizes in counts.items():
        assert len(set(sizes)) < len(sizes)  # ties on the count side too
        row = metrics[name]
        assert row["n_paths"] == len(archs)
        assert row["kendall_tau_a"] == pytest.approx(brute_force_tau_a(truth, sizes), abs=1e-12)
        assert row["kendall_tau_b"] == pytest.approx(stats.kendalltau(truth, sizes).statistic)
        assert row["spearman_rho"] == pytest.approx(stats.spearmanr(truth, sizes).statistic)
        assert row["pearson_r"] == pytest.approx(stats.pearsonr(truth, sizes).statistic)
        for n in (3, 5):
            expected = brute_force_top_group_tau(truth, sizes, n)
            assert row["top_group_tau"][str(n)] == pytest.approx(expected, abs=1e-12)


def test_the_comparison_with_the_baselines_is_said_in_words():
    rank = {
        "kendall_tau_a": 0.30,
        "baselines": {"params": {"kendall_tau_a": 0.55}, "flops": {"kendall_tau_a": 0.25}},
    }
    assert compare_with_baselines(rank) == (
        "the supernet ranks worse than counting parameters (τ-a 0.300 against 0.550) and "
        "better than counting FLOPs (0.300 against 0.250)"
    )
    assert compare_with_baselines({**rank, "kendall_tau_a": 0.55}).startswith(
        "the supernet ranks as well as counting parameters"
    )
    assert compare_with_baselines({"kendall_tau_a": 0.3}) == ""  # no baselines: nothing to say
    assert compare_with_baselines({**rank, "kendall_tau_a": None}) == ""
