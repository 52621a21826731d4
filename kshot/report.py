"""Plots and pages for the Kubeflow Pipelines UI: PNG figures, a self-contained HTML page, Markdown.

Every plot function returns PNG bytes, ready for :func:`kshot.storage.write_bytes` or for
embedding with :func:`html_page`. Figures are drawn on matplotlib's Agg canvas without ``pyplot``,
so no global state or display is touched; matplotlib is imported inside the functions, which keeps
importing this module cheap.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "scatter_plot",
    "top_group_plot",
    "pareto_plot",
    "lambda_histogram",
    "curves_plot",
    "tau_vs_k_plot",
    "ranking_summary_plot",
    "html_page",
    "index_page",
    "markdown_summary",
]


def _new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    """A figure bound to the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def scatter_plot(truth: ArrayLike, scores: ArrayLike, title: str) -> bytes:
    """Supernet score against ground-truth accuracy, one point per path.

    Args:
        truth: Stand-alone (ground-truth) accuracy of every path.
        scores: Supernet score of every path, in the same order.
        title: Figure title (e.g. the dataset and the correlations).

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    truth_values = np.asarray(truth, dtype=np.float64).ravel()
    score_values = np.asarray(scores, dtype=np.float64).ravel()
    if len(truth_values) != len(score_values) or len(truth_values) == 0:
        raise ValueError(
            f"scatter plot needs equally long, non-empty truth and scores, got "
            f"{len(truth_values)} and {len(score_values)}"
        )
    figure = _new_figure()
    axes = figure.subplots()
    # a few paths get big opaque markers; all 15,625 get small translucent ones
    size = float(np.clip(4000 / len(truth_values), 4, 40))
    alpha = float(np.clip(200 / len(truth_values), 0.3, 0.9))
    axes.scatter(truth_values, score_values, s=size, alpha=alpha, linewidths=0, rasterized=True)
    axes.set_xlabel("ground-truth accuracy (%)")
    axes.set_ylabel("supernet score")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _png(figure)


def top_group_plot(curve: Mapping[int, float]) -> bytes:
    """Top-group Kendall τ against the group size n (the paper's Fig. 5).

    Args:
        curve: ``{n: τ}``; keys may be ints or their strings (as stored in JSON).

    Raises:
        ValueError: the curve is empty.
    """
    if not curve:
        raise ValueError("top-group plot needs at least one (n, τ) point, got none")
    points = sorted((int(n), float(tau)) for n, tau in curve.items())
    sizes, taus = zip(*points, strict=True)
    figure = _new_figure()
    axes = figure.subplots()
    axes.plot(sizes, taus, marker="o")
    if len(sizes) > 1 and sizes[-1] / max(sizes[0], 1) >= 20:
        axes.set_xscale("log")
    axes.set_xlabel("top-group size n (by ground truth)")
    axes.set_ylabel("top-group Kendall τ")
    axes.set_title("Ranking of the top-n paths")
    axes.grid(alpha=0.3)
    return _png(figure)


def pareto_plot(
    evaluated: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    budget: float | None,
) -> bytes:
    """Accuracy against FLOPs of every evaluated path, the Pareto front highlighted.

    Args:
        evaluated: Every path the search scored, each a mapping with ``"flops"`` and
            ``"accuracy"``.
        front: The Pareto-optimal paths, the same kind of mapping.
        budget: The FLOPs constraint, drawn as a vertical line; None for no constraint.

    Raises:
        ValueError: no evaluated path, or a path without ``flops`` / ``accuracy`` (naming it).
    """
    if not evaluated:
        raise ValueError("Pareto plot needs at least one evaluated path, got none")

    def columns(paths: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
        for position, path in enumerate(paths):
            missing = [key for key in ("flops", "accuracy") if key not in path]
            if missing:
                raise ValueError(f"{name} path {position} lacks {missing}: {dict(path)!r}")
        return (
            np.array([float(path["flops"]) for path in paths]),
            np.array([float(path["accuracy"]) for path in paths]),
        )

    flops, accuracy = columns(evaluated, "evaluated")
    front_flops, front_accuracy = columns(front, "front")
    order = np.argsort(front_flops, kind="stable")
    figure = _new_figure()
    axes = figure.subplots()
    axes.scatter(flops, accuracy, s=10, alpha=0.4, color="tab:gray", label="evaluated paths")
    if len(front_flops):
        axes.plot(
            front_flops[order],
            front_accuracy[order],
            marker="o",
            color="tab:red",
            label="Pareto front",
        )
    if budget is not None:
        axes.axvline(float(budget), color="tab:blue", linestyle="--", label="FLOPs budget")
    axes.set_xlabel("MFLOPs")
    axes.set_ylabel("supernet accuracy (%)")
    axes.set_title("Search: accuracy against FLOPs")
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return _png(figure)


def _bins_around(values: np.ndarray, mark: float, count: int = 40) -> np.ndarray:
    """``count`` equal bins from the smallest to the largest of ``values`` and ``mark``, within
    [0, 1], never narrower than 0.01."""
    low, high = min(float(values.min()), mark), max(float(values.max()), mark)
    pad = max(0.005 - (high - low) / 2, 0.0)
    return np.linspace(max(low - pad, 0.0), min(high + pad, 1.0), count + 1)


def lambda_histogram(lams: ArrayLike) -> bytes:
    """Distributions of the simplex codes λ over paths (the paper's Figs. 6 and 8).

    One panel per coordinate λ_k (its histogram over paths) and a last panel of max_k λ_k, which
    shows how far the codes move from the uniform 1/K towards a single slot.

    Args:
        lams: ``(paths, K)`` array of simplex codes.

    Raises:
        ValueError: ``lams`` is not a non-empty 2-D array.
    """
    codes = np.asarray(lams, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"λ histogram needs a non-empty (paths, K) array, got shape {codes.shape}")
    num_slots = codes.shape[1]
    panels = num_slots + 1
    columns = min(panels, 4)
    rows = math.ceil(panels / columns)
    figure = _new_figure(3.0 * columns, 2.5 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    # bins over the codes' own range (with 1/K in it): codes near 1/K would be a sliver on 0..1
    bins = _bins_around(codes, 1.0 / num_slots)
    for slot in range(num_slots):
        axes[slot].hist(codes[:, slot], bins=bins, color="tab:blue")
        axes[slot].axvline(1.0 / num_slots, color="tab:gray", linestyle=":")
        axes[slot].set_title(rf"$\lambda_{{{slot + 1}}}$")
    axes[num_slots].hist(
        codes.max(axis=1), bins=_bins_around(codes.max(axis=1), 1.0 / num_slots), color="tab:orange"
    )
    axes[num_slots].set_title(r"$\max_k \lambda_k$")
    for unused in axes[panels:]:
        unused.set_visible(False)
    figure.suptitle(f"Simplex codes over {codes.shape[0]} paths (K = {num_slots})")
    return _png(figure)


def curves_plot(
    curves: Mapping[str, Sequence[float]],
    title: str,
    x_label: str = "epoch",
    warmup: int = 0,
) -> bytes:
    """Training curves (loss, accuracy, …), one panel per named curve, against a 1-based index.

    Args:
        curves: ``{name: values}``, e.g. ``{"train_loss": [...], "val_accuracy": [...]}``;
            accuracies in %.
        title: Figure title.
        x_label: What the index counts (epochs, steps).
        warmup: the first ``warmup`` indices are warmup (λ = 1/K): shaded and labelled.

    Raises:
        ValueError: no curve, or an empty one (naming it).
    """
    from matplotlib.ticker import MaxNLocator

    if not curves:
        raise ValueError("curves plot needs at least one curve, got none")
    for name, values in curves.items():
        if len(values) == 0:
            raise ValueError(f"curve {name!r} is empty")
    columns = min(len(curves), 2)
    rows = math.ceil(len(curves) / columns)
    figure = _new_figure(5.0 * columns, 3.5 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for panel, (name, values) in zip(axes, curves.items(), strict=False):
        if warmup > 0:
            panel.axvspan(0.5, warmup + 0.5, color="tab:gray", alpha=0.15, label="warmup")
            panel.legend(loc="best", fontsize="small")
        panel.plot(np.arange(1, len(values) + 1), np.asarray(values, dtype=np.float64))
        panel.set_title(f"{name} (%)" if "acc" in name else name)
        panel.set_xlabel(x_label)
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.grid(alpha=0.3)
    for unused in axes[len(curves) :]:
        unused.set_visible(False)
    figure.suptitle(title)
    return _png(figure)


def tau_vs_k_plot(
    points: Sequence[tuple[int, float]], baselines: Mapping[str, float] | None = None
) -> bytes:
    """Kendall τ-a of the supernet ranking against the number of slots K (the paper's Fig. 4).

    Args:
        points: ``(K, τ)`` pairs, any order; several runs with the same K are all drawn.
        baselines: zero-cost baselines' τ-a on the same paths (e.g. ``{"counting parameters":
            0.55}``), drawn as horizontal lines.

    Raises:
        ValueError: no point.
    """
    if not points:
        raise ValueError("τ-vs-K plot needs at least one (K, τ) point, got none")
    ordered = sorted((int(k), float(tau)) for k, tau in points)
    slots, taus = zip(*ordered, strict=True)
    figure = _new_figure()
    axes = figure.subplots()
    axes.plot(slots, taus, marker="o", label="supernet")
    _baseline_lines(axes, baselines or {})
    axes.set_xticks(sorted(set(slots)))
    axes.set_xlabel("K (weight slots)")
    axes.set_ylabel("Kendall τ-a")
    axes.set_title("Ranking correlation against K")
    axes.grid(alpha=0.3)
    return _png(figure)


def _baseline_lines(axes: Any, baselines: Mapping[str, float]) -> None:
    """Dashed horizontal lines at the zero-cost baselines' values, labelled, with a legend."""
    for (name, value), color in zip(baselines.items(), ("tab:orange", "tab:green"), strict=False):
        if value is not None and math.isfinite(value):
            axes.axhline(value, color=color, linestyle="--", linewidth=1, label=name)
    if baselines:
        axes.legend()


def baseline_bars(rows: Mapping[str, Mapping[str, float]]) -> bytes:
    """The supernet's correlations beside the zero-cost baselines' on the same paths.

    Args:
        rows: ranker name → ``{metric label: value}``, e.g. ``{"supernet": {"τ-a": 0.3, ...},
            "counting parameters": {"τ-a": 0.5, ...}}``; every row with the same labels.

    Raises:
        ValueError: no row.
    """
    if not rows:
        raise ValueError("baseline plot needs at least one ranker, got none")
    labels = list(next(iter(rows.values())))
    figure = _new_figure(7.0, 4.0)
    axes = figure.subplots()
    width = 0.8 / len(rows)
    for i, (name, values) in enumerate(rows.items()):
        heights = [values[label] for label in labels]
        x = np.arange(len(labels)) + (i - (len(rows) - 1) / 2) * width
        axes.bar(x, np.nan_to_num(heights), width, label=name)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel("correlation with ground truth")
    axes.set_title("The supernet against counting parameters and FLOPs (same paths)")
    axes.grid(alpha=0.3, axis="y")
    axes.legend()
    return _png(figure)


def ranking_summary_plot(report: Mapping[str, Any]) -> bytes:
    """The ranking experiment: each arm's Kendall τ-a per seed with its mean and 95 % t interval,
    and the zero-cost baselines' in orange (left), and the paired differences Δτ-a between arms
    (and against the baselines) with theirs, against the decision rule's +0.03 (right).

    Args:
        report: :func:`kshot.experiments.ranking.run_ranking_experiment`'s report: ``runs`` (``arm``,
            ``seed``, ``kendall_tau_a``) and ``summary`` (``arms``: label and τ-a interval;
            ``comparisons``: arms, deltas, mean and ``ci95``).

    Raises:
        ValueError: no run.
    """
    summary = report["summary"]
    if not report["runs"] or not summary["arms"]:
        raise ValueError("ranking summary plot needs at least one run, got none")
    figure = _new_figure(11.0, 4.5)
    left, right = figure.subplots(1, 2)
    columns = {**summary["arms"], **summary.get("baselines", {})}
    for x, (name, row) in enumerate(columns.items()):
        if name in summary["arms"]:
            values = [r["kendall_tau_a"] for r in report["runs"] if r["arm"] == name]
            left.scatter([x] * len(values), values, color="0.6", s=14, zorder=2)
        _interval_bar(
            left, x, row["kendall_tau_a"], "tab:blue" if name in summary["arms"] else "tab:orange"
        )
    left.set_xticks(range(len(columns)), [row["label"] for row in columns.values()], rotation=20)
    left.set_ylabel("Kendall τ-a (seeds; mean, 95 % t interval)")
    left.set_title("Ranking correlation per arm")
    left.grid(alpha=0.3)
    comparisons = summary["comparisons"]
    for x, row in enumerate(comparisons):
        right.scatter([x] * len(row["deltas"]), row["deltas"], color="0.6", s=14, zorder=2)
        _interval_bar(right, x, row)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.axhline(0.03, color="tab:red", linestyle="--", linewidth=0.8, label="+0.03 (rule)")
    right.set_xticks(
        range(len(comparisons)), [" − ".join(c["arms"]) for c in comparisons], rotation=20
    )
    right.set_ylabel("paired Δ Kendall τ-a")
    right.set_title("Paired differences over seeds")
    right.grid(alpha=0.3)
    right.legend()
    return _png(figure)


def _interval_bar(axes: Any, x: float, row: Mapping[str, Any], color: str = "tab:blue") -> None:
    """A mean marker with its 95 % interval (none with a single seed)."""
    if row["mean"] is None:
        return
    if row["ci95"] is None:
        axes.plot([x], [row["mean"]], "o", color=color, zorder=3)
        return
    low, high = row["ci95"]
    axes.errorbar(
        [x],
        [row["mean"]],
        yerr=[[row["mean"] - low], [high - row["mean"]]],
        fmt="o",
        color=color,
        capsize=5,
        zorder=3,
    )


def html_page(title: str, sections: Sequence[tuple[str, bytes | str]]) -> str:
    """A self-contained HTML page (no external files) for the KFP UI's HTML visualisation.

    Args:
        title: Page title.
        sections: ``(heading, content)`` pairs; bytes content is a PNG embedded as a base64 data
            URI, str content is shown as HTML-escaped preformatted text (e.g. a table).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:70em}"
        "img{max-width:100%;height:auto}pre{background:#f6f8fa;padding:1em;overflow-x:auto}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, bytes):
            encoded = base64.b64encode(content).decode("ascii")
            parts.append(
                f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{encoded}">'
            )
        else:
            parts.append(f"<pre>{html.escape(content)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def index_page(title: str, links: Sequence[tuple[str, str]], text: str) -> str:
    """An HTML page that links to others by relative path (so the folder can be moved or served as
    it is) above a preformatted ``text`` (e.g. the run's summary table).

    Args:
        title: Page title.
        links: ``(label, relative href)`` pairs.
        text: shown HTML-escaped below the links.
    """
    items = "".join(
        f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>' for label, href in links
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<ul>{items}</ul>\n"
        f"<pre>{html.escape(text)}</pre>\n</body></html>\n"
    )


def _markdown_cell(value: Any) -> str:
    """A value as Markdown table-cell text: floats to 6 significant digits, pipes escaped."""
    text = f"{value:.6g}" if isinstance(value, (float, np.floating)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(summary: Mapping[str, Any]) -> str:
    """A run summary as a two-column Markdown table for the KFP UI's Markdown visualisation.

    Nested mappings (e.g. ``top_group_tau``) become one row per entry, named ``key.subkey``; rows
    keep the order of ``summary``.

    Args:
        summary: e.g. ``{"k": 8, "best_arch": ..., "best_supernet_accuracy": ..., "best_flops": ...,
            "kendall_tau_a": ..., "spearman_rho": ..., "pearson_r": ...}``.
    """
    lines = ["| metric | value |", "|---|---|"]

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, nested in value.items():
                add(f"{name}.{key}", nested)
        else:
            lines.append(f"| {_markdown_cell(name)} | {_markdown_cell(value)} |")

    for name, value in summary.items():
        add(str(name), value)
    return "\n".join(lines) + "\n"
