"""The simplex-net pilot of the ranking experiment: train arm C on one seed under several
settings (one config key changed at a time) and choose one by a rule fixed beforehand, which reads
the simplex-net's own loss and codes, never the ground truth.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from kshot import storage
from kshot.config import Config, ConfigError, result_keys
from kshot.experiments.arms import ARMS, arm_config
from kshot.stages import run_stage
from kshot.train.checkpoint import load_latest
from kshot.train.trainer import curves

__all__ = ["choose_simplex_setting", "pilot_variants", "run_simplex_pilot"]


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
