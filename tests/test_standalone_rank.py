"""The retrained path's rank among the stand-alone sample, reported in the run summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from kshot.config import load_config
from kshot.eval.ground_truth import write_ground_truth_csv
from kshot.eval.standalone_rank import best_standalone_rank, rank_in_sample
from kshot.spaces import Space

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
    space = Space("nb201")
    same = load_config({"retrain_epochs": 10, "standalone_epochs": 10})
    assert best_standalone_rank(same, PICKED, 97.8, table, space) == {"rank": 2, "of": 5}
    longer = same.replace(retrain_epochs=20)
    assert best_standalone_rank(longer, PICKED, 97.8, table, space) is None
    benchmark = same.replace(ground_truth=table)
    assert best_standalone_rank(benchmark, PICKED, 97.8, table, space) is None
    assert best_standalone_rank(same.replace(ranking=False), PICKED, 97.8, table, space) is None
