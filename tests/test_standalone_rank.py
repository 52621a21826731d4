"""The retrained path's rank among the stand-alone sample, and what it means against the sample's
binomial noise, reported in the run summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kshot.config import load_config
from kshot.eval.ground_truth import write_ground_truth_csv
from kshot.eval.standalone_rank import (
    CONFIDENCE,
    RANKING_EXPERIMENT,
    TEST_IMAGES_COLUMN,
    best_standalone_rank,
    binomial_sd,
    describe_rank,
    noise_range,
    rank_in_sample,
    sample_noise,
)
from kshot.spaces import NB201Space

SAMPLE = {
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|": 98.0,
    "|nor_conv_1x1~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|": 97.5,
    "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|nor_conv_3x3~0|none~1|none~2|": 97.5,
    "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|": 96.0,
}
PICKED = "|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


def test_the_rank_counts_the_more_accurate_paths_and_ties_share_the_better_rank() -> None:
    assert rank_in_sample(99.0, SAMPLE, PICKED) == {"rank": 1, "of": 5}
    assert rank_in_sample(97.5, SAMPLE, PICKED) == {"rank": 2, "of": 5}  # tied with two paths
    assert rank_in_sample(97.0, SAMPLE, PICKED) == {"rank": 4, "of": 5}
    assert rank_in_sample(90.0, SAMPLE, PICKED) == {"rank": 5, "of": 5}


def test_a_sampled_copy_of_the_picked_path_is_not_ranked_against_it() -> None:
    worst = "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"
    assert rank_in_sample(96.5, SAMPLE, worst) == {"rank": 4, "of": 4}
    with pytest.raises(ValueError, match="no path other than"):
        rank_in_sample(96.5, {worst: 96.0}, worst)


def test_the_summary_ranks_only_against_a_sample_trained_as_long(tmp_path: Path) -> None:
    table = str(tmp_path / "table.csv")
    write_ground_truth_csv(table, SAMPLE)
    space = NB201Space()
    same = load_config({"retrain_epochs": 10, "standalone_epochs": 10})
    rank = best_standalone_rank(same, PICKED, 97.8, table, space)
    assert rank is not None and (rank["rank"], rank["of"]) == (2, 5)
    longer = same.replace(retrain_epochs=20)
    assert best_standalone_rank(longer, PICKED, 97.8, table, space) is None
    benchmark = same.replace(ground_truth=table)
    assert best_standalone_rank(benchmark, PICKED, 97.8, table, space) is None
    assert best_standalone_rank(same.replace(ranking=False), PICKED, 97.8, table, space) is None


# The noise of the sample. 400 test images at 50 %: σ = 100 · √(0.25 / 400) = 2.5 pp.
HALF_SD = 2.5


def test_an_accuracy_measured_on_n_images_has_the_binomial_standard_deviation() -> None:
    assert binomial_sd(50.0, 400) == pytest.approx(HALF_SD)
    assert binomial_sd(98.0, 449) == pytest.approx(0.6607, abs=1e-4)  # the digits default's
    assert binomial_sd(100.0, 449) == 0.0
    with pytest.raises(ValueError, match="0 test images"):
        binomial_sd(50.0, 0)


def test_the_noise_range_of_two_paths_is_the_two_sided_95_percent_test_of_their_difference() -> (
    None
):
    # the difference of two accuracies with s.d. σ has s.d. √2 σ: |d| > 1.96 √2 σ in 5 % of draws
    assert noise_range(2, HALF_SD) == pytest.approx(1.959964 * math.sqrt(2) * HALF_SD, rel=1e-4)


def test_the_noise_range_of_13_paths_holds_95_percent_of_the_spreads_of_equal_paths() -> None:
    draws = np.random.default_rng(0).normal(0.0, 1.0, size=(200_000, 13))
    spreads = draws.max(axis=1) - draws.min(axis=1)
    assert noise_range(13, 1.0) == pytest.approx(np.quantile(spreads, CONFIDENCE), abs=0.03)
    with pytest.raises(ValueError, match="at least 2 paths"):
        noise_range(1, 1.0)


def test_a_sample_is_within_noise_up_to_the_noise_range_and_beyond_it_after() -> None:
    widest = noise_range(2, HALF_SD)  # 6.93 pp; both samples below have mean 50 %, so σ = 2.5 pp
    inside = sample_noise(50.0 - (widest - 1e-6) / 2, [50.0 + (widest - 1e-6) / 2], 400)
    assert inside["within_noise"] and inside["rank_bounds"] == [1, 2]
    assert inside["binomial_sd_pp"] == pytest.approx(HALF_SD)
    assert inside["noise_range_pp"] == pytest.approx(widest)
    outside = sample_noise(50.0 - (widest + 1e-6) / 2, [50.0 + (widest + 1e-6) / 2], 400)
    assert not outside["within_noise"] and outside["rank_bounds"] == [2, 2]
    assert outside["spread_pp"] == pytest.approx(widest + 1e-6)
    tied = sample_noise(100.0, [100.0, 100.0], 449)  # no noise, no spread: nothing to separate
    assert tied["within_noise"] and tied["spread_pp"] == 0.0


def test_a_digits_like_sample_cannot_separate_its_paths_a_far_worse_pick_is_last_beyond_noise() -> (
    None
):
    # 12 paths spanning 97.33-98.22 % on 449 test images (4 images apart), as the digits default
    sample = [97.33, 97.55, 97.55, 97.77, 97.77, 97.77, 98.0, 98.0, 98.0, 98.0, 98.22, 98.22]
    worst_of_13 = sample_noise(97.10, sample, 449)
    assert worst_of_13["spread_pp"] == pytest.approx(1.12)
    assert worst_of_13["within_noise"] and worst_of_13["rank_bounds"] == [1, 13]
    far_worse = sample_noise(90.0, sample, 449)
    assert not far_worse["within_noise"] and far_worse["rank_bounds"] == [13, 13]
    assert describe_rank({"rank": 13, "of": 13, **far_worse}).endswith("rank stands beyond noise")
    # a pick in the middle of a wide sample: beyond noise from the far paths, not from the near
    wide = sample_noise(50.0, [30.0, 48.0, 52.0, 70.0], 400)
    assert not wide["within_noise"] and wide["rank_bounds"] == [2, 4]


def test_the_summary_says_when_the_sample_cannot_separate_its_paths(tmp_path: Path) -> None:
    space = NB201Space()
    cfg = load_config({"retrain_epochs": 10, "standalone_epochs": 10})
    close = {arch: 98.0 - 0.22 * i for i, arch in enumerate(SAMPLE)}  # 1 test image apart of 449
    table = str(tmp_path / "close.csv")
    write_ground_truth_csv(table, close, space=space, constants={TEST_IMAGES_COLUMN: 449})
    rank = best_standalone_rank(cfg, PICKED, 97.0, table, space)
    assert rank is not None
    assert (rank["rank"], rank["of"], rank["test_images"]) == (5, 5, 449)
    assert rank["within_noise"] and rank["rank_bounds"] == [1, 5]
    assert rank["spread_pp"] == pytest.approx(1.0)
    assert "cannot separate its paths" in rank["reading"]
    assert RANKING_EXPERIMENT in rank["reading"]

    apart = {arch: 98.0 - 10.0 * i for i, arch in enumerate(SAMPLE)}
    write_ground_truth_csv(table, apart, space=space, constants={TEST_IMAGES_COLUMN: 449})
    rank = best_standalone_rank(cfg, PICKED, 99.0, table, space)
    assert rank is not None and rank["rank"] == 1 and not rank["within_noise"]
    assert "cannot separate" not in rank["reading"] and "1 to 2" in rank["reading"]


def test_a_table_without_its_test_image_count_gives_the_rank_without_a_noise_reading(
    tmp_path: Path,
) -> None:
    table = str(tmp_path / "table.csv")
    write_ground_truth_csv(table, SAMPLE)
    cfg = load_config({"retrain_epochs": 10, "standalone_epochs": 10})
    rank = best_standalone_rank(cfg, PICKED, 97.8, table, NB201Space())
    assert rank is not None and (rank["rank"], rank["of"]) == (2, 5)
    assert rank["within_noise"] is None and "unknown" in rank["reading"]
