"""``kshot bench``: the report's keys whatever sections ran, and a partial report after each one."""

from __future__ import annotations

import json

import pytest
import torch

from kshot.cli import main
from kshot.experiments.bench import HEADLINE, run_benchmarks

# The keys the performance issue asks the JSON for (null where not measured).
ISSUE_KEYS = {
    "device",
    "train_step_ratio_k8_vs_k1",
    "supernet_vs_standalone_k8",
    "peak_memory_ratio_k8_vs_k1",
    "search_evals_per_s",
    "ddp2_efficiency",
}


@pytest.fixture(autouse=True)
def _threads():
    """The bench sets one intra-op thread on the CPU; the tests after it get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_one_section_reports_its_figures_and_none_for_the_others(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(["bench", "--quick", "--device", "cpu", "--sections", "search", "--out", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert ISSUE_KEYS <= set(HEADLINE) <= report.keys()
    assert report["search_evals_per_s"] > 0 and report["search"]["paths_timed"] == 10
    assert report["train_step_ratio_k8_vs_k1"] is None and report["ddp2_efficiency"] is None
    assert "training" not in report and "ddp" not in report


def test_unknown_sections_are_refused_before_any_timing():
    seen = []
    with pytest.raises(ValueError, match=r"unknown bench sections \['trianing'\]"):
        run_benchmarks(sections=["trianing"], on_section=seen.append)
    assert not seen
