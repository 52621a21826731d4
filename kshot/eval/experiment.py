"""The ranking experiment: K-shot against one-shot on NAS-Bench-201, reported as the paper does.

For every K, seed and λ mode (learned by the simplex-net, and Table 6's fixed-1/K and random-λ
ablations, run for K > 1) it runs ``split → warmup → train → rank`` under the same configuration and
budget, then reports Kendall τ, Spearman ρ, Pearson r and the top-group τ per run and as mean ± std
over seeds. Runs are resumable: a finished run's metrics are read back, an interrupted one resumes
from its checkpoints. Runs of one seed share the split, and runs of one (K, seed) share the warmup
(λ = 1/K whatever the mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kshot import storage
from kshot.config import Config, ConfigError
from kshot.eval.ranking import metrics_from_json
from kshot.stages import run_stage

__all__ = ["run_ranking_experiment", "summarise_runs"]

_METRICS = ("kendall_tau", "spearman_rho", "pearson_r")


def _run_one(cfg: Config, workdir: str) -> dict[str, Any]:
    seed_dir = storage.join(workdir, f"seed{cfg.seed}")
    run_dir = storage.join(seed_dir, f"k{cfg.k}-{cfg.lambda_mode}")
    metrics_uri = storage.join(run_dir, "rank.json")
    if storage.exists(metrics_uri):
        return metrics_from_json(storage.read_json(metrics_uri))
    split = storage.join(seed_dir, "split.json")
    if not storage.exists(split):
        run_stage("split", cfg, {}, {"split": split})
    warm = storage.join(seed_dir, f"k{cfg.k}-warmup")
    run_stage("warmup", cfg, {"split": split}, {"checkpoint": warm})
    trained = storage.join(run_dir, "checkpoint")
    run_stage(
        "train",
        cfg,
        {"split": split, "checkpoint": warm},
        {"checkpoint": trained, "curves": storage.join(run_dir, "curves.json")},
    )
    return run_stage(
        "rank",
        cfg,
        {"split": split, "checkpoint": trained},
        {"scores": storage.join(run_dir, "scores.csv"), "metrics": metrics_uri},
    )


def summarise_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std (over seeds) of every metric, per (λ mode, K)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["lambda_mode"], run["k"]), []).append(run)
    summary = []
    for (mode, k), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        row: dict[str, Any] = {
            "lambda_mode": mode,
            "k": k,
            "seeds": [r["seed"] for r in group],
            "n_paths": group[0]["n_paths"],
        }
        for key in _METRICS:
            values = np.array([r[key] for r in group], dtype=float)
            row[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
        row["top_group_tau"] = {
            n: {
                "mean": float(np.mean([r["top_group_tau"][n] for r in group])),
                "std": float(np.std([r["top_group_tau"][n] for r in group])),
            }
            for n in group[0]["top_group_tau"]
        }
        summary.append(row)
    return summary


def run_ranking_experiment(
    base: Config, ks: Sequence[int], seeds: Sequence[int], ablations: bool, workdir: str, out: str
) -> dict[str, Any]:
    """Run every (K, seed[, mode]) and write the JSON report to ``out`` (plot beside it).

    Args:
        base: the configuration shared by every run (dataset, budget, ground truth).
        ks: the values of K.
        seeds: the seeds.
        ablations: also run the fixed-1/K and random-λ ablations for every K > 1.
        workdir: where the runs' artifacts go (resumable).
        out: the report's URI (JSON); a PNG of τ against K is written beside it.

    Returns:
        The report.
    """
    if not base.ranking:
        raise ValueError("the ranking experiment needs config key 'ranking' to be true")
    if not base.ground_truth:
        raise ValueError(
            "the ranking experiment needs config key 'ground_truth' (e.g. 'nb201', the "
            "NAS-Bench-201 table shipped with kshot)"
        )
    plan = []  # every run's config, checked before the first one trains
    for seed in seeds:
        for k in ks:
            for mode in ["learned", "fixed", "random"] if ablations and k > 1 else ["learned"]:
                try:
                    plan.append((k, seed, mode, base.replace(k=k, seed=seed, lambda_mode=mode)))
                except ConfigError as e:
                    raise ConfigError(f"--k {k}, --seeds {seed}: {e}") from e
    runs = []
    for k, seed, mode, cfg in plan:
        metrics = _run_one(cfg, workdir)
        runs.append(
            {
                "k": k,
                "seed": seed,
                "lambda_mode": mode,
                **{key: metrics[key] for key in ("n_paths", *_METRICS, "top_group_tau")},
            }
        )
    report = {"config": base.to_dict(), "runs": runs, "summary": summarise_runs(runs)}
    storage.write_json(out, report)
    from kshot.report import ranking_summary_plot

    storage.write_bytes(out.rsplit(".", 1)[0] + ".png", ranking_summary_plot(report["summary"]))
    return report
