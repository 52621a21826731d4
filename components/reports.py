"""What the components show in the Kubeflow Pipelines UI: Metrics, HTML plots, a Markdown summary.

Every plot comes from :mod:`kshot.report`; these functions read a stage's outputs and write the
UI artifacts (at their local ``path``, which KFP uploads).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from kshot import report, storage
from kshot.components.runtime import Artifact, artifact_uri, config_from_json
from kshot.eval.baselines import BASELINES, compare_with_baselines
from kshot.eval.ranking import metrics_from_json
from kshot.eval.standalone_rank import best_standalone_rank
from kshot.experiments.ranking_summary import describe_codes
from kshot.spaces import space_from_config

__all__ = [
    "training_report",
    "search_report",
    "recalibrate_report",
    "retrain_report",
    "rank_report",
    "run_summary",
    "tau_vs_k_report",
]

_CORRELATIONS = ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r")
_LABELS = ("Kendall τ-a", "Kendall τ-b", "Spearman ρ", "Pearson r")


def _baseline_figures(rank: Mapping[str, Any]) -> dict[str, Any]:
    """The zero-cost baselines' correlations of a rank result, flat for Metrics and summaries:
    ``params_kendall_tau_a``, ``flops_spearman_rho``, …"""
    return {
        f"{name}_{key}": rank["baselines"][name].get(key)
        for name in BASELINES
        if name in rank.get("baselines", {})
        for key in _CORRELATIONS
    }


class MetricsArtifact(Protocol):
    """The part of a KFP ``Metrics`` artifact used here."""

    def log_metric(self, metric: str, value: float) -> None: ...


def _write(artifact: Artifact, text: str) -> None:
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text, encoding="utf-8")


def _log_finite(metrics: MetricsArtifact, values: Mapping[str, Any]) -> None:
    """Log every finite number of ``values`` (NaN, e.g. τ of constant scores, is left out)."""
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(name, float(value))


def training_report(curves: Artifact, page: Artifact) -> None:
    """Loss, accuracy and learning-rate curves of the supernet training, one panel each."""
    data = storage.read_json(artifact_uri(curves))
    warmup = int(data.get("warmup_epochs", 0))
    panels = {
        name: values for name, values in data.items() if name not in ("epoch", "warmup_epochs")
    }
    png = report.curves_plot(
        panels, "Supernet training (warmup, then alternating K-shot)", warmup=warmup
    )
    _write(page, report.html_page("Supernet training", [("Curves per epoch", png)]))


def search_report(results: Artifact, metrics: MetricsArtifact, page: Artifact) -> None:
    """The search's best path as Metrics; its Pareto front and λ histograms (Figs. 6, 8) as HTML."""
    data = storage.read_json(artifact_uri(results))
    best = data["best"]
    _log_finite(
        metrics,
        {
            "best_supernet_accuracy": best["accuracy"],
            "best_flops": best["flops"],
            "evaluated_paths": len(data["evaluated"]),
            "front_size": len(data["front"]),
        },
    )
    sections: list[tuple[str, bytes | str]] = [
        (
            "Pareto front",
            report.pareto_plot(data["evaluated"], data["front"], data["flops_budget"]),
        ),
        (
            "Simplex codes λ of the evaluated paths",
            report.lambda_histogram([path["lam"] for path in data["evaluated"]]),
        ),
        ("Best path", json.dumps(best, indent=2)),
    ]
    _write(page, report.html_page("NSGA-II search", sections))


def recalibrate_report(results: Artifact, metrics: MetricsArtifact) -> None:
    """The best path's accuracy and FLOPs after BatchNorm recalibration."""
    best = storage.read_json(artifact_uri(results))["best"]
    _log_finite(metrics, {"best_supernet_accuracy": best["accuracy"], "best_flops": best["flops"]})


def retrain_report(retrained: Artifact, metrics: MetricsArtifact, page: Artifact) -> None:
    """Test accuracy, FLOPs and parameters of the retrained path; its training curves."""
    data = storage.read_json(artifact_uri(retrained))
    _log_finite(
        metrics,
        {
            "test_accuracy": data["test_accuracy"],
            "flops": data["flops"],
            "params": data["params"],
        },
    )
    panels = {name: values for name, values in data["curves"].items() if name != "epoch"}
    sections: list[tuple[str, bytes | str]] = [
        ("Curves per epoch", report.curves_plot(panels, f"Retraining {data['arch']}")),
    ]
    _write(page, report.html_page("Retraining the best path", sections))


def _read_scores(scores: Artifact) -> tuple[list[float], list[float], list[list[float]]]:
    """Ground truth, supernet accuracy and λ of every ranked path, from rank's scores CSV."""
    rows = list(csv.DictReader(io.StringIO(storage.read_text(artifact_uri(scores)))))
    lam_columns = sorted(
        (name for name in rows[0] if name.startswith("lam_") and name[4:].isdigit()),
        key=lambda n: int(n[4:]),
    )
    truth = [float(row["ground_truth"]) for row in rows]
    supernet = [float(row["supernet_accuracy"]) for row in rows]
    lams = [[float(row[name]) for name in lam_columns] for row in rows]
    return truth, supernet, lams


def rank_report(
    ranking: Artifact, scores: Artifact, metrics: MetricsArtifact, page: Artifact
) -> None:
    """τ, ρ, r and the top-group τ as Metrics; the scatter, Fig. 5's curve and λ as HTML."""
    data = metrics_from_json(storage.read_json(artifact_uri(ranking)))
    if data.get("skipped"):
        _write(page, report.html_page(f"Ranking, K = {data['k']}", [("Skipped", data["skipped"])]))
        return
    _log_finite(metrics, {name: data[name] for name in (*_CORRELATIONS, "n_paths")})
    _log_finite(metrics, _baseline_figures(data))
    top_group = data["top_group_tau"]
    _log_finite(metrics, {f"top_group_tau_{n}": tau for n, tau in top_group.items()})
    # how far the ranked paths' codes are from 1/K and from one another (mean max λ, ‖λ‖², entropy,
    # distance from uniform, cosine between paths' codes)
    _log_finite(metrics, {f"lambda_{name}": value for name, value in data["lam"].items()})
    truth, supernet, lams = _read_scores(scores)
    title = ", ".join(
        f"{label} = {data[name]:.3f}" for name, label in zip(_CORRELATIONS, _LABELS, strict=True)
    )
    sections: list[tuple[str, bytes | str]] = [
        ("Supernet score against ground truth", report.scatter_plot(truth, supernet, title)),
    ]
    if data.get("baselines"):
        rows = {"supernet": data, **{BASELINES[n]: m for n, m in data["baselines"].items()}}
        bars = {
            name: {label: row[key] for key, label in zip(_CORRELATIONS, _LABELS, strict=True)}
            for name, row in rows.items()
        }
        sections.append(("Against counting parameters and FLOPs", report.baseline_bars(bars)))
        sections.append(("Does the supernet beat them?", compare_with_baselines(data) + "."))
    if top_group:
        sections.append(("Top-group Kendall τ (Fig. 5)", report.top_group_plot(top_group)))
    sections.append(("Simplex codes λ of the ranked paths", report.lambda_histogram(lams)))
    sections.append(("Are the codes K-shot?", describe_codes([data])))
    _write(page, report.html_page(f"Ranking, K = {data['k']}", sections))


def run_summary(
    config_json: str,
    results: Artifact,
    retrained: Artifact,
    ranking: Artifact,
    truth: Artifact,
    pages: Mapping[str, Artifact],
    summary: Artifact,
    markdown: Artifact,
    metrics: MetricsArtifact,
) -> dict[str, Any]:
    """The run's headline numbers as JSON, Markdown and Metrics.

    Args:
        config_json: the config step's output.
        results: recalibrate's results (the best path).
        retrained: retrain's metrics JSON.
        ranking: rank's metrics JSON.
        truth: the ground-truth table (CSV arch,accuracy) that rank read.
        pages: report name → HTML artifact, listed in the summary with their URIs.
        summary: where the JSON goes.
        markdown: where the Markdown goes.
        metrics: where the Metrics go.

    Returns:
        The summary.
    """
    config = json.loads(config_json)
    best = storage.read_json(artifact_uri(results))["best"]
    retrain = storage.read_json(artifact_uri(retrained))
    rank = storage.read_json(artifact_uri(ranking))
    cfg = config_from_json(config_json)
    headline: dict[str, Any] = {
        "k": config["k"],
        "search_space": config["search_space"],
        "dataset": config["dataset"],
        "best_arch": best["arch"],
        "best_supernet_accuracy": best["accuracy"],
        "best_flops": best["flops"],
        "flops_budget": config["flops_budget"],
        "retrained_test_accuracy": retrain["test_accuracy"],
        "retrained_params": retrain["params"],
        "best_standalone_rank": best_standalone_rank(
            cfg,
            retrain["arch"],
            retrain["test_accuracy"],
            artifact_uri(truth),
            space_from_config(cfg),
        ),
        **{name: rank.get(name) for name in _CORRELATIONS},
        **_baseline_figures(rank),
        "n_paths": rank["n_paths"],
        "top_group_tau": rank.get("top_group_tau", {}),
        "against_baselines": compare_with_baselines(metrics_from_json(rank)),
        "ground_truth": rank.get("skipped")
        or config["ground_truth"]
        or "standalone stage (paths trained from scratch)",
    }
    _log_finite(metrics, headline)
    reports = {name: page.uri for name, page in pages.items()}
    reports["summary_markdown"] = markdown.uri
    text = "# K-shot NAS run\n\n" + report.markdown_summary(headline)
    text += "\n## Reports\n\n" + "".join(f"- {name}: `{uri}`\n" for name, uri in reports.items())
    _write(markdown, text)
    result = {**headline, "reports": reports}
    _write(summary, json.dumps(result, indent=2) + "\n")
    return result


def tau_vs_k_report(
    rankings: Sequence[Artifact], metrics: MetricsArtifact, page: Artifact, summary: Artifact
) -> dict[str, Any]:
    """Kendall τ against K over a sweep's rank outputs (the paper's Fig. 4).

    Returns:
        What ``summary`` holds: ``k_values``, ``per_k`` (k, n_paths, τ, ρ, r, top-group τ of each
        K, in increasing K) and ``reports`` (``tau_vs_k``: the page's URI).
    """
    rows = sorted(
        (metrics_from_json(storage.read_json(artifact_uri(ranking))) for ranking in rankings),
        key=lambda r: r["k"],
    )
    result = {
        "k_values": [row["k"] for row in rows],
        "per_k": [
            {
                "k": row["k"],
                "n_paths": row.get("n_paths"),
                **{name: row.get(name) for name in _CORRELATIONS},
                **_baseline_figures(row),
                "top_group_tau": row.get("top_group_tau", {}),
            }
            for row in rows
        ],
        "reports": {"tau_vs_k": page.uri},
    }
    _write(summary, json.dumps(result, indent=2) + "\n")
    skipped = [row for row in rows if row.get("skipped")]
    if skipped:
        _write(page, report.html_page("K sweep", [("Skipped", skipped[0]["skipped"])]))
        return result
    points = [(row["k"], row["kendall_tau_a"]) for row in rows]
    for row in rows:
        figures = {**{name: row[name] for name in _CORRELATIONS}, **_baseline_figures(row)}
        _log_finite(metrics, {f"{name}_k{row['k']}": value for name, value in figures.items()})
    table = "\n".join(
        f"K = {row['k']:>3}: " + ", ".join(f"{name} = {row[name]:.4f}" for name in _CORRELATIONS)
        for row in rows
    )
    # every K ranks the same seeded paths, so the baselines are those of the first
    baselines = {
        BASELINES[name]: m["kendall_tau_a"] for name, m in rows[0].get("baselines", {}).items()
    }
    table += "".join(
        f"\n{name}: Kendall τ-a = {tau:.4f} (same paths)" for name, tau in baselines.items()
    )
    sections: list[tuple[str, bytes | str]] = [
        ("Kendall τ-a against K (Fig. 4)", report.tau_vs_k_plot(points, baselines)),
        ("Correlations per K", table),
    ]
    _write(page, report.html_page("K sweep", sections))
    return result
