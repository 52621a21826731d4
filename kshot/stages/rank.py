"""Stage ``rank``: how faithfully the supernet ranks paths against stand-alone ground truth.

Scores paths on the trained supernet (λ by config key ``lambda_mode``, BN recalibrated on
``bn_images`` images), joins them with a ground-truth table by arch string and reports Kendall's τ-a
(the paper's Eq. 18) and τ-b, Spearman ρ, Pearson r, the paper's top-group τ (appendix C.1) and how
far the paths' codes λ are from uniform (:func:`kshot.nn.simplex.code_statistics`). The paths scored
are all those of the table when it is a sample (the ``standalone`` stage's), else ``rank_paths``
drawn from it with the run's seed (0: all 15,625): the same set for every run of a seed, whose
SHA-256 the metrics record. Beside the supernet's metrics stand those of the zero-cost baselines
on the same paths (:mod:`kshot.eval.baselines`: ranking by parameter count and by FLOPs).
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import numpy as np

from kshot import distributed as dist
from kshot import seeds, storage
from kshot.eval.baselines import BASELINES, baseline_counts, baseline_metrics
from kshot.eval.ground_truth import align_scores, check_rankable, load_ground_truth
from kshot.eval.ranking import ranking_metrics
from kshot.nn.simplex import code_statistics
from kshot.stages import skipped
from kshot.stages.context import StageContext
from kshot.stages.trained import load_trained, make_scorer, score_paths

__all__ = ["run", "paths_to_rank", "path_set_hash", "SCORE_COLUMNS"]

# The scores CSV's leading columns (params_m: millions of parameters, flops_m: MFLOPs, the
# baselines' scores); then one lam_<k> column per slot.
SCORE_COLUMNS = (
    "path_index",
    "arch",
    "supernet_accuracy",
    "ground_truth",
    *(f"{name}_m" for name in BASELINES),
    "lam_max",
    "lam_sq_norm",
    "lam_entropy",
    "lam_tv",
)


def paths_to_rank(truth: dict[str, float], count: int, seed: int) -> list[str]:
    """The archs of ``truth`` to score: ``count`` of them seeded (0 or more than there are: all)."""
    archs = sorted(truth)
    if 0 < count < len(archs):
        rng = seeds.rng(seed, seeds.RANK_PATHS)
        archs = [archs[i] for i in sorted(rng.choice(len(archs), size=count, replace=False))]
    return archs


def path_set_hash(archs: list[str]) -> str:
    """SHA-256 of the ranked paths' arch strings, one a line in ranking order."""
    return hashlib.sha256("\n".join(archs).encode()).hexdigest()


def run(ctx: StageContext) -> dict[str, Any]:
    """Write ``outputs["scores"]`` (CSV: :data:`SCORE_COLUMNS`, then the code λ) and
    ``outputs["metrics"]`` (JSON); ground truth from ``inputs["ground_truth"]`` or ``cfg.ground_truth``.
    """
    cfg, inputs, outputs = ctx.config, ctx.inputs, ctx.outputs
    reason = skipped("rank", cfg)
    if reason:
        metrics = {"k": cfg.k, "n_paths": 0, "skipped": reason}
        if dist.is_main():
            storage.write_text(outputs["scores"], ",".join(SCORE_COLUMNS) + "\n")
            storage.write_json(outputs["metrics"], metrics)
        return metrics
    truth_uri = inputs.get("ground_truth") or cfg.ground_truth
    if not truth_uri:
        raise ValueError(
            "stage 'rank' needs ground truth: --input ground_truth=URI or config key "
            "'ground_truth' (a CSV with arch and accuracy columns)"
        )
    column = "accuracy" if inputs.get("ground_truth") else cfg.ground_truth_column
    space = ctx.config_space  # at the data's shape below, once the data is read
    truth = load_ground_truth(truth_uri, column, space)
    archs = paths_to_rank(truth, cfg.rank_paths, cfg.seed)
    check_rankable({arch: truth[arch] for arch in archs}, truth_uri, column)
    data = ctx.data
    device = ctx.device
    shaped = ctx.space
    supernet, simplex, _ = load_trained(cfg, data, inputs["checkpoint"], device, shaped)
    scorer = make_scorer(cfg, data, supernet, simplex, device, space=shaped)
    records = score_paths(scorer, [space.parse(a) for a in archs], desc="ranking")
    scores = {r["arch"]: r["accuracy"] for r in records}
    names, truth_values, score_values = align_scores(truth, scores, truth_uri, space)
    metrics = ranking_metrics(truth_values, score_values, cfg.top_n)
    counts = baseline_counts(shaped, names)
    codes = code_statistics(np.array([r["lam"] for r in records]))
    metrics.update(
        k=cfg.k,
        lambda_mode=cfg.lambda_mode,
        budget=cfg.budget,
        seed=cfg.seed,
        path_set_sha256=path_set_hash(names),
        lam=codes["mean"],
        lam_near_uniform=codes["near_uniform"],
        ground_truth=truth_uri,
        ground_truth_column=column,
        baselines=baseline_metrics(truth_values, counts, cfg.top_n),
    )
    if dist.is_main():
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow([*SCORE_COLUMNS, *[f"lam_{i}" for i in range(cfg.k)]])
        per_path = codes["per_path"]
        for i, (rec, t) in enumerate(zip(records, truth_values, strict=True)):
            stats = [float(per_path[name][i]) for name in ("max", "sq_norm", "entropy", "tv")]
            sizes = [counts[name][i] for name in BASELINES]
            writer.writerow([i, rec["arch"], rec["accuracy"], t, *sizes, *stats, *rec["lam"]])
        storage.write_text(outputs["scores"], text.getvalue())
        storage.write_json(outputs["metrics"], metrics)
    return metrics
