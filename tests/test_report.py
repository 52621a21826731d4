"""Plots, the HTML page and the Markdown summary for the KFP UI."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kshot import report
from tests.conftest import fake_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARCH = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"


def assert_real_png(data: bytes) -> Image.Image:
    """PNG bytes that decode to a sizeable image with more than a blank canvas on it."""
    assert data.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.width >= 300 and image.height >= 200
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20  # axes, text and data, not one flat colour
    return image


def pixels(data: bytes) -> np.ndarray:
    """The PNG's RGB pixels, ``(height, width, 3)``."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_draws_its_data(first: bytes, again: bytes, other: bytes) -> None:
    """``first`` and ``again`` (the same data) are the same picture; ``other`` (the same call on
    other data) is another one: the plot draws its data, not only axes and a title."""
    for png in (first, again, other):
        assert_real_png(png)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_scatter_plot() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(60, 94, size=2000)
    scores = truth / 100 + rng.normal(0, 0.05, 2000)
    # the same points paired otherwise: same axes, another cloud
    assert_draws_its_data(
        report.scatter_plot(truth, scores, "τ = 0.6"),
        report.scatter_plot(truth.copy(), scores.copy(), "τ = 0.6"),
        report.scatter_plot(truth, rng.permutation(scores), "τ = 0.6"),
    )
    with pytest.raises(ValueError, match="3 and 2"):
        report.scatter_plot([1.0, 2.0, 3.0], [1.0, 2.0], "mismatch")


def test_top_group_plot_accepts_json_keys() -> None:
    curve = {"10": 0.4, "100": 0.55, "1000": 0.6, "15625": 0.62}
    assert_draws_its_data(
        report.top_group_plot(curve),
        report.top_group_plot({int(n): tau for n, tau in curve.items()}),  # as int keys
        report.top_group_plot({**curve, "100": 0.3}),
    )
    # ordered by n, not by the keys' text ("10" < "5")
    assert np.array_equal(
        pixels(report.top_group_plot({"5": 0.3, "10": 0.5, "50": 0.4})),
        pixels(report.top_group_plot({5: 0.3, 10: 0.5, 50: 0.4})),
    )
    assert_real_png(report.top_group_plot({5: 0.3}))
    with pytest.raises(ValueError, match="at least one"):
        report.top_group_plot({})


def test_pareto_plot() -> None:
    rng = np.random.default_rng(1)
    evaluated = [
        {"arch": ARCH, "flops": float(f), "accuracy": float(a)}
        for f, a in zip(rng.uniform(10, 200, 100), rng.uniform(50, 90, 100), strict=True)
    ]
    front = [{"flops": 20.0, "accuracy": 80.0}, {"flops": 120.0, "accuracy": 90.0}]
    plot = report.pareto_plot(evaluated, front, budget=150.0)
    moved = [{**path, "accuracy": 140.0 - path["accuracy"]} for path in evaluated]
    assert_draws_its_data(
        plot, report.pareto_plot(evaluated, front, 150.0), report.pareto_plot(moved, front, 150.0)
    )
    # the front and the budget line are drawn, and where they are
    others = [
        report.pareto_plot(evaluated, [], budget=150.0),
        report.pareto_plot(evaluated, [front[0], {"flops": 120.0, "accuracy": 60.0}], 150.0),
        report.pareto_plot(evaluated, front, budget=None),
        report.pareto_plot(evaluated, front, budget=100.0),
    ]
    for other in others:
        assert not np.array_equal(pixels(plot), pixels(other))
    assert_real_png(report.pareto_plot(evaluated, [], budget=None))
    with pytest.raises(ValueError, match=r"evaluated path 1 lacks \['accuracy'\]"):
        report.pareto_plot([{"flops": 1.0, "accuracy": 2.0}, {"flops": 3.0}], [], None)


@pytest.mark.parametrize("num_slots", [1, 4, 8])
def test_lambda_histogram(num_slots: int) -> None:
    rng = np.random.default_rng(2)
    lams = rng.dirichlet(np.ones(num_slots), size=500)
    plot = report.lambda_histogram(lams)
    assert_real_png(plot)
    if num_slots > 1:  # K = 1 has one code only, λ = [1]
        # the same codes, slots reversed: the max_k λ_k panel is the same, every λ_k panel not
        assert_draws_its_data(
            plot, report.lambda_histogram(lams.copy()), report.lambda_histogram(lams[:, ::-1])
        )
        nearer_uniform = rng.dirichlet(np.full(num_slots, 20.0), size=500)
        assert not np.array_equal(pixels(plot), pixels(report.lambda_histogram(nearer_uniform)))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        report.lambda_histogram(np.ones(5))


def test_lambda_histogram_bins_span_the_codes_not_zero_to_one() -> None:
    near_uniform = np.random.default_rng(3).dirichlet(np.full(8, 500.0), size=200)
    bins = report._bins_around(near_uniform, 1 / 8)
    assert bins[0] == pytest.approx(min(near_uniform.min(), 1 / 8))
    assert bins[-1] == pytest.approx(max(near_uniform.max(), 1 / 8))
    assert bins[-1] - bins[0] < 0.2  # on 0..1 these codes would fill a sliver of the axis
    assert report._bins_around(np.full((3, 2), 0.5), 0.5)[[0, -1]].tolist() == [0.495, 0.505]


def test_curves_plot_marks_the_warmup() -> None:
    curves = {"supernet_loss": [2.3, 1.8, 1.2, 0.9], "supernet_acc": [20.0, 45.0, 60.0, 71.0]}
    assert_draws_its_data(
        report.curves_plot(curves, "supernet", warmup=2),
        report.curves_plot(dict(curves), "supernet", warmup=2),
        report.curves_plot(curves, "supernet", warmup=0),
    )


def test_curves_plot() -> None:
    curves = {
        "train_loss": [2.3, 1.8, 1.2, 0.9],
        "val_accuracy": [20.0, 45.0, 60.0, 71.0],
        "lr": [0.1, 0.08, 0.05, 0.01],
    }
    assert_draws_its_data(
        report.curves_plot(curves, "supernet training"),
        report.curves_plot(dict(curves), "supernet training"),
        report.curves_plot(
            {**curves, "val_accuracy": [20.0, 30.0, 65.0, 71.0]}, "supernet training"
        ),
    )
    with pytest.raises(ValueError, match="'val_loss' is empty"):
        report.curves_plot({"val_loss": []}, "empty")


def test_tau_vs_k_plot() -> None:
    points = [(8, 0.626), (1, 0.55), (4, 0.61), (2, 0.58)]
    assert_draws_its_data(
        report.tau_vs_k_plot(points),
        report.tau_vs_k_plot(sorted(points)),  # one curve in K's order, whatever the given order
        report.tau_vs_k_plot([(8, 0.626), (1, 0.55), (4, 0.45), (2, 0.58)]),
    )


def test_ranking_summary_plot() -> None:
    from kshot.experiments.ranking_summary import summarise_runs

    def runs(taus: dict[str, list[float]], params_tau: float | None = None) -> dict:
        sizes = {"params": fake_run("params", 0, params_tau), "flops": fake_run("flops", 0, 0.1)}
        extra = {"baselines": sizes} if params_tau is not None else {}
        rows = [
            fake_run(arm, seed, tau, 1 if arm == "A" else 8, **extra)
            for arm, values in taus.items()
            for seed, tau in enumerate(values)
        ]
        return {"runs": rows, "summary": summarise_runs(rows)}

    base = {"A": [0.30, 0.34, 0.32], "B": [0.36, 0.33, 0.35], "C": [0.40, 0.37, 0.39]}
    plot = report.ranking_summary_plot(runs(base))
    assert_draws_its_data(
        plot,
        report.ranking_summary_plot(runs(dict(reversed(base.items())))),
        report.ranking_summary_plot(runs({**base, "C": [0.30, 0.25, 0.28]})),
    )
    # the seeds' spread (the intervals) is drawn too, and every arm
    wider = runs({**base, "C": [0.45, 0.31, 0.40]})  # same mean, wider interval
    assert not np.array_equal(pixels(plot), pixels(report.ranking_summary_plot(wider)))
    fewer = runs({"A": base["A"], "C": base["C"]})
    assert not np.array_equal(pixels(plot), pixels(report.ranking_summary_plot(fewer)))
    # the zero-cost baselines stand beside the arms, at their own value
    sized = report.ranking_summary_plot(runs(base, params_tau=0.55))
    assert not np.array_equal(pixels(plot), pixels(sized))
    other = report.ranking_summary_plot(runs(base, params_tau=0.45))
    assert not np.array_equal(pixels(sized), pixels(other))
    with pytest.raises(ValueError, match="at least one run"):
        report.ranking_summary_plot({"runs": [], "summary": {"arms": {}, "comparisons": []}})


def test_html_page_embeds_images_and_escapes_text() -> None:
    png = report.tau_vs_k_plot([(1, 0.5), (8, 0.6)])
    page = report.html_page(
        "Ranking <K=8>", [("τ against K", png), ("Top paths", f"{ARCH}  <b>93.7</b>")]
    )
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Ranking &lt;K=8&gt;</title>" in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [png]
    assert "&lt;b&gt;93.7&lt;/b&gt;" in page and "<b>93.7</b>" not in page
    assert ARCH in page
    assert "http" not in page  # self-contained


def test_markdown_summary_has_values() -> None:
    summary = {
        "k": 8,
        "best_arch": ARCH,
        "best_supernet_accuracy": 93.7612345,
        "best_flops": np.float32(82.49),
        "kendall_tau": 0.626,
        "spearman_rho": 0.81,
        "pearson_r": 0.92,
        "top_group_tau": {"10": 0.5, "100": 0.6},
    }
    text = report.markdown_summary(summary)
    lines = text.splitlines()
    assert lines[:2] == ["| metric | value |", "|---|---|"]
    assert "| k | 8 |" in lines
    assert "| best_supernet_accuracy | 93.7612 |" in lines
    assert "| best_flops | 82.49 |" in lines
    assert "| kendall_tau | 0.626 |" in lines
    assert "| top_group_tau.100 | 0.6 |" in lines
    assert f"| best_arch | {ARCH.replace('|', chr(92) + '|')} |" in lines
    assert all(line.count("|") - line.count("\\|") == 3 for line in lines)  # two cells a row


def test_import_does_not_load_matplotlib() -> None:
    probe = "import sys, kshot.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("codes", "words"),
    [
        ([[0.26, 0.24, 0.25, 0.25], [0.24, 0.26, 0.25, 0.25]], "stayed near uniform"),
        ([[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]], "moved off uniform"),
    ],
)
def test_the_rank_report_shows_how_far_the_codes_are_from_uniform(tmp_path, codes, words):
    """The ranking's UI: its Metrics carry the ranked paths' mean λ statistics and the zero-cost
    baselines' correlations, and its page says in words whether the codes stayed near 1/K and
    whether the supernet beats counting parameters."""
    import json
    from types import SimpleNamespace

    from kshot.components.reports import rank_report
    from kshot.nn.simplex import code_statistics
    from kshot.stages.rank import SCORE_COLUMNS

    stats = code_statistics(np.array(codes))
    ranking = tmp_path / "ranking.json"
    ranking.write_text(
        json.dumps(
            {
                "k": 4,
                "n_paths": 2,
                "kendall_tau_a": 1.0,
                "kendall_tau_b": 1.0,
                "spearman_rho": 1.0,
                "pearson_r": 1.0,
                "top_group_tau": {},
                "lam": stats["mean"],
                "lam_near_uniform": stats["near_uniform"],
                "baselines": {
                    name: {
                        "kendall_tau_a": tau,
                        "kendall_tau_b": tau,
                        "spearman_rho": tau,
                        "pearson_r": tau,
                        "top_group_tau": {},
                    }
                    for name, tau in (("params", 1.0), ("flops", -1.0))
                },
            }
        )
    )
    header = [*SCORE_COLUMNS, *(f"lam_{i}" for i in range(4))]
    middle = [0.0] * (len(SCORE_COLUMNS) - 4)
    rows = [[i, f"arch{i}", 50.0 + i, 60.0 + i, *middle, *lam] for i, lam in enumerate(codes)]
    scores = tmp_path / "scores.csv"
    scores.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    logged: dict[str, float] = {}
    metrics = SimpleNamespace(log_metric=logged.__setitem__)
    page = tmp_path / "page.html"

    def artifact(path):
        return SimpleNamespace(uri=str(path), path=str(path))

    rank_report(artifact(ranking), artifact(scores), metrics, artifact(page))
    for name in ("max", "sq_norm", "entropy", "tv", "cosine"):
        assert logged[f"lambda_{name}"] == pytest.approx(stats["mean"][name]), name
    for key in ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
        assert (logged[f"params_{key}"], logged[f"flops_{key}"]) == (1.0, -1.0), key
    text = page.read_text()
    assert words in text
    assert "as well as counting parameters (τ-a 1.000 against 1.000)" in text
    assert "better than counting FLOPs (1.000 against -1.000)" in text
