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


def test_scatter_plot() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(60, 94, size=2000)
    assert_real_png(report.scatter_plot(truth, truth / 100 + rng.normal(0, 0.05, 2000), "τ = 0.6"))
    with pytest.raises(ValueError, match="3 and 2"):
        report.scatter_plot([1.0, 2.0, 3.0], [1.0, 2.0], "mismatch")


def test_top_group_plot_accepts_json_keys() -> None:
    assert_real_png(report.top_group_plot({"10": 0.4, "100": 0.55, "1000": 0.6, "15625": 0.62}))
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
    assert_real_png(report.pareto_plot(evaluated, front, budget=150.0))
    assert_real_png(report.pareto_plot(evaluated, [], budget=None))
    with pytest.raises(ValueError, match=r"evaluated path 1 lacks \['accuracy'\]"):
        report.pareto_plot([{"flops": 1.0, "accuracy": 2.0}, {"flops": 3.0}], [], None)


@pytest.mark.parametrize("num_slots", [1, 4, 8])
def test_lambda_histogram(num_slots: int) -> None:
    lams = np.random.default_rng(2).dirichlet(np.ones(num_slots), size=500)
    assert_real_png(report.lambda_histogram(lams))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        report.lambda_histogram(np.ones(5))


def test_curves_plot() -> None:
    curves = {
        "train_loss": [2.3, 1.8, 1.2, 0.9],
        "val_accuracy": [20.0, 45.0, 60.0, 71.0],
        "lr": [0.1, 0.08, 0.05, 0.01],
    }
    assert_real_png(report.curves_plot(curves, "supernet training"))
    with pytest.raises(ValueError, match="'val_loss' is empty"):
        report.curves_plot({"val_loss": []}, "empty")


def test_tau_vs_k_plot() -> None:
    assert_real_png(report.tau_vs_k_plot([(8, 0.626), (1, 0.55), (4, 0.61), (2, 0.58)]))


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
        "best_accuracy": 93.7612345,
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
    assert "| best_accuracy | 93.7612 |" in lines
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
