"""Running the ranking experiment: every (seed, arm) of :data:`kshot.experiments.arms.ARMS`
through the pipeline's stages, and the report.

Every run goes ``split → warmup → train → rank``; runs are resumed run by run (a finished run's
record is read back, an interrupted one resumes from its checkpoints) and each finished run's record
(JSON) and per-path scores (CSV) are copied to the results folder at once. The report holds every
run and their summary (:func:`kshot.experiments.ranking_summary.summarise_runs`), rewritten after
each run with a plot beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kshot import storage
from kshot.config import Config, ConfigError
from kshot.eval.ranking import metrics_from_json
from kshot.experiments.arms import ARMS, arm_config
from kshot.experiments.ranking_summary import METRICS, summarise_runs
from kshot.stages import run_stage
from kshot.train.checkpoint import load_latest
from kshot.train.trainer import curves

__all__ = ["run_ranking_experiment"]


def _run_one(cfg: Config, arm: str, k: int, workdir: str, results: str) -> dict[str, Any]:
    """One arm on one seed, resumed where it stopped; its record and scores copied to
    ``results`` as ``seed<s>-<arm>.json`` / ``.csv``."""
    seed_dir = storage.join(workdir, f"seed{cfg.seed}")
    run_dir = storage.join(seed_dir, arm)
    record_uri = storage.join(results, f"seed{cfg.seed}-{arm}.json")
    if storage.exists(record_uri):
        return metrics_from_json(storage.read_json(record_uri))
    started = time.monotonic()
    split = storage.join(seed_dir, "split.json")
    if not storage.exists(split):
        run_stage("split", cfg, {}, {"split": split})
    warm = storage.join(seed_dir, ARMS[arm].warmup(k))
    run_stage("warmup", cfg, {"split": split}, {"checkpoint": warm})
    trained = storage.join(run_dir, "checkpoint")
    run_stage("train", cfg, {"split": split, "checkpoint": warm}, {"checkpoint": trained})
    scores = storage.join(run_dir, "scores.csv")
    metrics = run_stage(
        "rank",
        cfg,
        {"split": split, "checkpoint": trained},
        {"scores": scores, "metrics": storage.join(run_dir, "rank.json")},
    )
    history = curves(load_latest(trained)["history"])
    record = {
        "arm": arm,
        "label": ARMS[arm].label,
        **{key: metrics[key] for key in ("k", "lambda_mode", "budget", "seed")},
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        **{key: metrics[key] for key in ("n_paths", "path_set_sha256", *METRICS)},
        "top_group_tau": metrics["top_group_tau"],
        "lam": metrics["lam"],
        "lam_near_uniform": metrics["lam_near_uniform"],
        "baselines": metrics["baselines"],
        "curves": history,
        "wall_s": round(time.monotonic() - started, 1),
    }
    storage.write_text(
        storage.join(results, f"seed{cfg.seed}-{arm}.csv"), storage.read_text(scores)
    )
    storage.write_json(record_uri, record)
    return record


def run_ranking_experiment(
    base: Config,
    arms: Sequence[str],
    seeds: Sequence[int],
    k: int,
    workdir: str,
    out: str,
    results: str | None = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run every (seed, arm), seed by seed, and write the report to ``out`` (plot beside it)
    after each run.

    Args:
        base: the configuration shared by every run (dataset, budget, ground truth).
        arms: keys of :data:`ARMS`, run in this order within a seed.
        seeds: the seeds.
        k: K of the arms with K slots.
        workdir: where the runs' artifacts go (resumable).
        out: the report's URI (JSON); a PNG of the arms' τ-a and the paired differences beside it.
        results: where each finished run's record and scores go (default: beside ``out``, in a
            folder named as ``out`` without its extension).
        report_only: run nothing: report the planned runs whose records are in ``results``.

    Returns:
        The report.
    """
    if not base.ranking:
        raise ValueError("the ranking experiment needs config key 'ranking' to be true")
    if not base.ground_truth:
        raise ValueError(
            "the ranking experiment needs config key 'ground_truth' (e.g. 'nb201', the "
            "NAS-Bench-201 table shipped with kshot, or a CSV with arch and accuracy columns)"
        )
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(
            f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}"
        )
    if k < 2:
        raise ValueError(f"--k {k}: the K-shot arms need K >= 2")
    results = results or out.rsplit(".", 1)[0]
    plan = []  # every run's config, checked before the first one trains
    for seed in seeds:
        for arm in arms:
            try:
                plan.append((arm, arm_config(base.replace(seed=seed), arm, k)))
            except ConfigError as e:
                raise ConfigError(f"arm {arm}, seed {seed}: {e}") from e
    if not plan:
        raise ValueError("the ranking experiment needs at least one seed and one arm")
    from kshot.report import ranking_summary_plot

    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for arm, cfg in plan:
        if report_only and not storage.exists(storage.join(results, f"seed{cfg.seed}-{arm}.json")):
            continue
        record = _run_one(cfg, arm, k, workdir, results)
        same_seed = [r for r in runs if r["seed"] == cfg.seed]
        if same_seed and same_seed[0]["path_set_sha256"] != record["path_set_sha256"]:
            raise RuntimeError(
                f"seed {cfg.seed}: arm {arm} ranked another path set than arm "
                f"{same_seed[0]['arm']} ({record['path_set_sha256']} against "
                f"{same_seed[0]['path_set_sha256']})"
            )
        runs.append(record)
        report = {
            "config": base.to_dict(),
            "k": k,
            "runs": [{k_: v for k_, v in r.items() if k_ != "curves"} for r in runs],
            "summary": summarise_runs(runs),
        }
        storage.write_json(out, report)
        storage.write_bytes(out.rsplit(".", 1)[0] + ".png", ranking_summary_plot(report))
    if not runs:
        raise ValueError(f"--report-only: no finished run of the plan in {results!r}")
    return report
