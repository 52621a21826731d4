"""The ranking experiment: does a K-shot supernet rank NAS-Bench-201 paths better than one-shot?

Arms (:data:`ARMS`), each run on every seed with the same split, the same seeded set of ranked paths
(its SHA-256 recorded and checked) and the same BN-recalibration images:

* ``A``: one-shot, K = 1 (SPOS).
* ``A-lr``: one-shot at the fixed-1/K arm's effective hyper-parameters (lr / K, lr_min / K, weight
  decay × K): λ = 1/K moves the merged weight exactly so (``B``'s lead over ``A``, if any, is then a
  hyper-parameter effect).
* ``B``: K slots, λ fixed at 1/K (Table 6).
* ``C``: K-shot, λ learned by the simplex-net, as many supernet (Θ) updates as ``A``.
* ``C-iter`` (C′): K-shot, the paper's Algorithm 2 at equal iterations (half the Θ updates).
* ``D``: K slots, one random code per path drawn once (Table 6).

Every run goes ``split → warmup → train → rank``; runs are resumed run by run (a finished run's
record is read back, an interrupted one resumes from its checkpoints) and each finished run's record
(JSON) and per-path scores (CSV) are copied to the results folder at once. The report holds every
run, each arm's mean, standard deviation (ddof 1) and 95 % t interval over seeds, and the paired
differences of τ-a between arms with one-sided paired t and Wilcoxon signed-rank tests, and the
verdict of :func:`verdict`. Beside the arms stand the zero-cost baselines of each seed's paths
(:mod:`kshot.eval.baselines`: ranking by parameter count and by FLOPs), scored alike and compared
paired with the arms.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from kshot import storage
from kshot.config import Config, ConfigError
from kshot.eval.baselines import BASELINES
from kshot.eval.ranking import metrics_from_json
from kshot.stages import run_stage
from kshot.train.checkpoint import load_latest
from kshot.train.trainer import curves

__all__ = [
    "ARMS",
    "PRIMARY",
    "MIN_SEEDS",
    "MIN_GAIN",
    "Arm",
    "arm_config",
    "interval",
    "paired_comparison",
    "verdict",
    "baseline_runs",
    "summarise_runs",
    "run_ranking_experiment",
    "choose_simplex_setting",
    "pilot_variants",
    "describe_codes",
    "run_simplex_pilot",
    "run_code_gradients",
]

# The decision rule, fixed before any reported run (docs/results/ranking_cpu_proxy.md).
MIN_GAIN = 0.03  # Δτ-a that counts as reproducing (the paper's K = 8 − K = 1 gap: +0.076)
MIN_SEEDS = 6  # fewer paired seeds: inconclusive whatever the figures
PRIMARY = (("C", "A"), ("C", "B"))  # the primary endpoint: paired Δτ-a of C against A and B
_SECONDARY = (
    ("B", "A"),
    ("A-lr", "A"),
    ("B", "A-lr"),
    ("C", "C-iter"),
    ("C", "D"),
    ("C", "params"),
    ("A", "params"),
)
_METRICS = ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r")


@dataclass(frozen=True)
class Arm:
    """One arm: its label, what it is, and its config changes for ``k`` slots."""

    label: str
    what: str
    changes: Callable[[Config, int], dict[str, Any]]
    warmup: Callable[[int], str]  # the warmup it shares with the seed's other arms


ARMS: dict[str, Arm] = {
    "A": Arm(
        "A (K = 1)",
        "one-shot (SPOS)",
        lambda base, k: {"k": 1, "lambda_mode": "learned", "budget": "supernet_steps"},
        lambda k: "warmup-k1",
    ),
    "A-lr": Arm(
        "A-lr (K = 1, lr / K)",
        "one-shot at the fixed-1/K arm's effective lr / K, lr_min / K and weight decay × K",
        lambda base, k: {
            "k": 1,
            "lambda_mode": "learned",
            "budget": "supernet_steps",
            "lr": base.lr / k,
            "lr_min": base.lr_min / k,
            "weight_decay": base.weight_decay * k,
        },
        lambda k: f"warmup-k1-lr-over-{k}",
    ),
    "B": Arm(
        "B (fixed 1/K)",
        "K slots, λ = 1/K (Table 6)",
        lambda base, k: {"k": k, "lambda_mode": "fixed", "budget": "supernet_steps"},
        lambda k: f"warmup-k{k}",
    ),
    "C": Arm(
        "C (learned, equal Θ)",
        "K-shot, λ = π(a) learned, as many Θ updates as K = 1",
        lambda base, k: {"k": k, "lambda_mode": "learned", "budget": "supernet_steps"},
        lambda k: f"warmup-k{k}",
    ),
    "C-iter": Arm(
        "C′ (learned, equal iterations)",
        "K-shot, λ = π(a) learned, the paper's Algorithm 2 at equal iterations",
        lambda base, k: {"k": k, "lambda_mode": "learned", "budget": "iterations"},
        lambda k: f"warmup-k{k}",
    ),
    "D": Arm(
        "D (random)",
        "K slots, one random code per path drawn once (Table 6)",
        lambda base, k: {"k": k, "lambda_mode": "random", "budget": "supernet_steps"},
        lambda k: f"warmup-k{k}",
    ),
}


def arm_config(base: Config, arm: str, k: int = 8) -> Config:
    """The configuration of ``arm`` (a key of :data:`ARMS`) with ``k`` slots where it has K."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: choose from {', '.join(ARMS)}")
    return base.replace(**ARMS[arm].changes(base, k))


def interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1) and the two-sided ``level`` t interval of the mean.

    With one value the spread and the interval are None.
    """
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    out: dict[str, Any] = {"n": len(data), "mean": float(data.mean()) if len(data) else None}
    if len(data) < 2:
        return {**out, "std": None, "ci95": None}
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(data) - 1)) * std / math.sqrt(len(data))
    return {**out, "std": std, "ci95": [out["mean"] - half, out["mean"] + half]}


def paired_comparison(
    runs: Sequence[dict[str, Any]], better: str, than: str, metric: str = "kendall_tau_a"
) -> dict[str, Any]:
    """Δ = ``metric`` of arm ``better`` − arm ``than`` on every seed both have, with its interval
    (:func:`interval`), a one-sided paired t-test and a one-sided Wilcoxon signed-rank test (H1:
    Δ > 0; p None when fewer than 2 seeds)."""
    by_arm: dict[str, dict[int, float]] = {}
    for run in runs:
        by_arm.setdefault(run["arm"], {})[run["seed"]] = run[metric]
    seeds = sorted(set(by_arm.get(better, {})) & set(by_arm.get(than, {})))
    deltas = [by_arm[better][s] - by_arm[than][s] for s in seeds]
    out = {"arms": [better, than], "metric": metric, "seeds": seeds, "deltas": deltas}
    out.update(interval(deltas))
    t_p = wilcoxon_p = None
    if len(deltas) >= 2 and np.ptp(deltas) > 0:
        a = [by_arm[better][s] for s in seeds]
        b = [by_arm[than][s] for s in seeds]
        t_p = float(stats.ttest_rel(a, b, alternative="greater").pvalue)
    if len(deltas) >= 2 and any(deltas):
        wilcoxon_p = float(stats.wilcoxon(deltas, alternative="greater").pvalue)
    return {**out, "t_test_p": t_p, "wilcoxon_p": wilcoxon_p}


def verdict(comparison: dict[str, Any], codes_non_uniform: bool) -> str:
    """The pre-registered rule for one primary comparison.

    "reproduces": at least :data:`MIN_SEEDS` paired seeds, mean Δ ≥ :data:`MIN_GAIN` and the 95 %
    interval above 0. "refuted on this proxy": at least :data:`MIN_SEEDS` seeds, the interval's
    upper bound below :data:`MIN_GAIN` while the learned codes are non-uniform on every seed.
    Otherwise "inconclusive, add seeds".
    """
    if comparison["n"] >= MIN_SEEDS and comparison["ci95"] is not None:
        low, high = comparison["ci95"]
        if comparison["mean"] >= MIN_GAIN and low > 0:
            return "reproduces"
        if high < MIN_GAIN and codes_non_uniform:
            return "refuted on this proxy"
    return "inconclusive, add seeds"


def describe_codes(runs: Sequence[dict[str, Any]]) -> str:
    """In words: whether an arm's codes λ stayed near uniform on its seeds and how alike the codes
    of different paths are (the ranked paths' mean statistics, :func:`code_statistics`)."""
    if runs[0]["k"] == 1:
        return "K = 1: λ = [1], no code to learn"
    near = sum(r["lam_near_uniform"] for r in runs)
    tv = float(np.mean([r["lam"]["tv"] for r in runs]))
    top = float(np.mean([r["lam"]["max"] for r in runs]))
    cosine = float(np.mean([r["lam"]["cosine"] for r in runs]))
    k = runs[0]["k"]
    if near == len(runs):
        words = (
            f"the codes stayed near uniform on every seed (mean distance from 1/K {tv:.3f} < "
            f"0.1, mean max λ {top:.3f} against 1/K = {1 / k:.3f}): no K-shot effect can show"
        )
    elif near:
        words = (
            f"the codes stayed near uniform on {near} of {len(runs)} seeds (mean distance {tv:.3f})"
        )
    else:
        words = (
            f"the codes moved off uniform on every seed (mean distance from 1/K {tv:.3f}, mean "
            f"max λ {top:.3f} against 1/K = {1 / k:.3f})"
        )
    apart = [r["lam"]["pairwise_tv"] for r in runs if "pairwise_tv" in r["lam"]]
    distance = (
        f", mean distance between two paths' codes {float(np.mean(apart)):.3f}" if apart else ""
    )
    if cosine > 0.95:
        words += (
            f"; the codes of different paths are nearly parallel (mean cosine {cosine:.3f}"
            f"{distance}): λ reweights the slots alike for all paths more than it tells paths apart"
        )
    else:
        words += f"; mean cosine between the codes of different paths {cosine:.3f}{distance}"
    return words


def baseline_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pseudo-run per seed and baseline (``arm`` the baseline's key, e.g. ``params``) from the
    runs' recorded baselines: each seed's arms rank the same paths, so its first run's serve."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for run in runs:
        if run["seed"] in seen or not run.get("baselines"):
            continue
        seen.add(run["seed"])
        for name in BASELINES:
            out.append({"arm": name, "seed": run["seed"], **run["baselines"][name]})
    return out


def _intervals(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every metric's :func:`interval` over the seeds of one arm (or baseline)."""
    row: dict[str, Any] = {key: interval([r[key] for r in group]) for key in _METRICS}
    row["top_group_tau"] = {
        n: interval([r["top_group_tau"][n] for r in group]) for n in group[0]["top_group_tau"]
    }
    return row


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: every metric's :func:`interval` over seeds and the codes' mean statistics; the same
    for the zero-cost baselines (:func:`baseline_runs`); the paired comparisons; the verdict per
    primary comparison and overall ("reproduces" when both reproduce, "refuted on this proxy" when
    either is refuted, else "inconclusive, add seeds")."""
    arms: dict[str, Any] = {}
    for name in ARMS:
        group = [r for r in runs if r["arm"] == name]
        if not group:
            continue
        row: dict[str, Any] = {
            "label": ARMS[name].label,
            "seeds": [r["seed"] for r in group],
            "k": group[0]["k"],
            **_intervals(group),
        }
        row["lam"] = {s: interval([r["lam"][s] for r in group]) for s in group[0]["lam"]}
        row["lam_near_uniform"] = [r["lam_near_uniform"] for r in group]
        row["lam_in_words"] = describe_codes(group)
        arms[name] = row
    sizes = baseline_runs(runs)
    baselines = {
        name: {
            "label": f"{title} (zero-cost)",
            "seeds": [r["seed"] for r in group],
            **_intervals(group),
        }
        for name, title in BASELINES.items()
        if (group := [r for r in sizes if r["arm"] == name])
    }
    compared = [*runs, *sizes]
    comparisons = [
        paired_comparison(compared, a, b)
        for a, b in (*PRIMARY, *_SECONDARY)
        if a in arms and (b in arms or b in baselines)
    ]
    learned = [r for r in runs if r["arm"] == "C"]
    non_uniform = bool(learned) and not any(r["lam_near_uniform"] for r in learned)
    verdicts = {
        f"{c['arms'][0]} vs {c['arms'][1]}": verdict(c, non_uniform)
        for c in comparisons
        if tuple(c["arms"]) in PRIMARY
    }
    if len(verdicts) == len(PRIMARY) and all(v == "reproduces" for v in verdicts.values()):
        overall = "reproduces"
    elif any(v == "refuted on this proxy" for v in verdicts.values()):
        overall = "refuted on this proxy"
    else:
        overall = "inconclusive, add seeds"
    summary: dict[str, Any] = {"arms": arms}
    if baselines:
        summary["baselines"] = baselines
    return {
        **summary,
        "comparisons": comparisons,
        "learned_codes_non_uniform": non_uniform,
        "verdicts": verdicts,
        "verdict": overall,
    }


def choose_simplex_setting(pilot: dict[str, dict[str, Any]]) -> str:
    """The pilot's rule, which reads only the simplex-net's own loss and the codes of its probe
    paths (never the ground truth): among the settings whose codes ended both off uniform (mean
    total-variation distance from 1/K at least ``NEAR_UNIFORM_TV``) and path-specific (mean
    distance between two paths' codes at least ``PATH_SPECIFIC_TV``), the one with the lowest
    simplex-net loss over the last two epochs; when none is path-specific, the same among those
    off uniform; when none is off uniform, the one with the largest spread.

    Args:
        pilot: ``{label: {"simplex_loss": float, "lam_tv": float, "lam_pairwise_tv": float,
            ...}}`` (``lam_pairwise_tv`` may be absent: not path-specific).
    """
    from kshot.nn.simplex import NEAR_UNIFORM_TV, PATH_SPECIFIC_TV

    moved = {label: row for label, row in pilot.items() if row["lam_tv"] >= NEAR_UNIFORM_TV}
    specific = {
        label: row
        for label, row in moved.items()
        if row.get("lam_pairwise_tv", 0.0) >= PATH_SPECIFIC_TV
    }
    for pool in (specific, moved):
        if pool:
            return min(pool, key=lambda label: pool[label]["simplex_loss"])
    return max(pilot, key=lambda label: pilot[label]["lam_tv"])


def pilot_variants(base: Config, vary: Sequence[tuple[str, Sequence[Any]]]) -> dict[str, Config]:
    """The pilot's settings: the base config, then one key changed at a time, labelled
    ``key=value`` (a value equal to the base's is the base, tried once).

    Args:
        base: the config the settings change.
        vary: ``(key, values)`` pairs; a value may be a string as on the command line.

    Raises:
        ConfigError: a key is not a config key or a value not valid for it (naming both).
    """
    variants = {"base": base}
    for key, values in vary:
        for value in values:
            try:
                cfg = base.replace(**{key: value})
            except ConfigError as e:
                raise ConfigError(f"--vary {key}={value}: {e}") from e
            if cfg != base:
                variants[f"{key}={getattr(cfg, key)}"] = cfg
    return variants


def run_simplex_pilot(
    base: Config,
    seed: int,
    vary: Sequence[tuple[str, Sequence[Any]]],
    k: int,
    workdir: str,
    out: str,
) -> dict[str, Any]:
    """Train arm C on ``seed`` once per setting of :func:`pilot_variants` (no ranking: the
    ground truth is not read) and choose one by :func:`choose_simplex_setting`; the report
    (every setting's simplex-net loss, its probe paths' code statistics and curves) goes to
    ``out`` after each setting. Settings that share a warmup's result keys share its checkpoint.
    """
    from kshot.config import result_keys

    variants = {
        label: arm_config(cfg.replace(seed=seed), "C", k)
        for label, cfg in pilot_variants(base, vary).items()
    }
    seed_dir = storage.join(workdir, f"pilot-seed{seed}")
    split = storage.join(seed_dir, "split.json")
    rows: dict[str, dict[str, Any]] = {}
    for label, cfg in variants.items():
        if not storage.exists(split):
            run_stage("split", cfg, {}, {"split": split})
        warm_keys = {key: getattr(cfg, key) for key in result_keys("warmup")}
        tag = hashlib.sha256(json.dumps(warm_keys, sort_keys=True).encode()).hexdigest()[:12]
        warm = storage.join(seed_dir, f"{ARMS['C'].warmup(k)}-{tag}")
        run_stage("warmup", cfg, {"split": split}, {"checkpoint": warm})
        trained = storage.join(seed_dir, f"C-{label}")
        run_stage("train", cfg, {"split": split, "checkpoint": warm}, {"checkpoint": trained})
        history = curves(load_latest(trained)["history"])
        losses = [v for v in history["simplex_loss"] if v is not None]
        base_values = variants["base"].to_dict()
        rows[label] = {
            "changes": {k: v for k, v in cfg.to_dict().items() if v != base_values[k]},
            "simplex_loss": float(np.mean(losses[-2:])),
            **{key: history[key][-1] for key in history if key.startswith("lam_")},
            "curves": history,
        }
        storage.write_json(out, {"seed": seed, "k": k, "pilot": rows})
    report = {"seed": seed, "k": k, "pilot": rows, "chosen": choose_simplex_setting(rows)}
    storage.write_json(out, report)
    return report


def run_code_gradients(
    cfg: Config, split: str, checkpoints: Sequence[str], out: str, images: int = 256
) -> dict[str, Any]:
    """Where each trained supernet's simplex-net signal comes from
    (:mod:`kshot.eval.code_gradients`): on its run's 64 probe paths and the first ``images``
    validation images of ``split``, each path's ∂L/∂λ through the shared layers, through its own
    operations and in total, with the fraction common to all paths and the mean norm of each.

    Args:
        cfg: the data's configuration (dataset, seed, device); each checkpoint is loaded with
            the configuration it records (a pilot's settings differ in the simplex-net's).
        split: the runs' split.
        checkpoints: trained checkpoint folders (e.g. a pilot's ``C-<setting>`` folders).
        out: the JSON report, rewritten after each checkpoint.
        images: validation images in the batch.
    """
    from kshot import seeds
    from kshot.config import load_config
    from kshot.eval.code_gradients import PARTS, code_gradients, common_fraction
    from kshot.stages.common import device_of, load_train_data, load_trained, space_of

    device = device_of(cfg)
    data = load_train_data(cfg, split)
    space = space_of(cfg, data)
    paths = [space.sample(seeds.rng(cfg.seed, seeds.CODE_PROBE, i)) for i in range(64)]
    x = data.prepare(data.valid_images[:images], device)
    y = data.valid_labels[:images].to(device)
    report: dict[str, Any] = {"seed": cfg.seed, "paths": len(paths), "images": len(y), "runs": {}}
    for folder in checkpoints:
        run_cfg = load_config(load_latest(folder)["config"], sources=[folder])
        supernet, simplex, _ = load_trained(run_cfg, data, folder, device)
        grads = code_gradients(supernet, simplex, space, paths, x, y)
        report["runs"][folder] = {
            part: {
                "common_fraction": common_fraction(grads[part]),
                "mean_norm": float(np.sqrt(np.mean(np.sum(grads[part] ** 2, axis=1)))),
            }
            for part in PARTS
        }
        storage.write_json(out, report)
    return report


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
        **{key: metrics[key] for key in ("n_paths", "path_set_sha256", *_METRICS)},
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
