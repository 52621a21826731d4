"""The pipeline's stages, each a function ``run(ctx)`` of a :class:`~kshot.stages.context.StageContext`
(the configuration and artifact URIs, checked once by :func:`run_stage`)."""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kshot.config import Config

__all__ = [
    "STAGES",
    "HEAVY_STAGES",
    "ARTIFACTS",
    "FOLDER_ARTIFACTS",
    "TRAINING_STAGES",
    "check_stage",
    "check_world",
    "job_processes",
    "run_stage",
    "skipped",
    "headline",
]

# In the paper's order; the KFP pipeline and the CLI both read this list.
STAGES: tuple[str, ...] = (
    "split",
    "warmup",
    "train",
    "search",
    "recalibrate",
    "retrain",
    "standalone",
    "rank",
)
# Stages that train or score networks: they run as distributed jobs (torchrun / PyTorchJob).
HEAVY_STAGES: frozenset[str] = frozenset(
    {"warmup", "train", "search", "recalibrate", "rank", "retrain", "standalone"}
)
# Stages whose processes share each batch (:class:`kshot.train.trainer.KShotTrainer`).
TRAINING_STAGES: frozenset[str] = frozenset({"warmup", "train"})

# Artifacts of each stage: (inputs, outputs), name → what it holds. Optional inputs end with "?".
ARTIFACTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "split": ({}, {"split": "JSON of train / valid (/ test) indices"}),
    "warmup": ({"split": "split JSON"}, {"checkpoint": "checkpoint folder (λ = 1/K)"}),
    "train": (
        {"split": "split JSON", "checkpoint": "warmup checkpoint folder"},
        {"checkpoint": "checkpoint folder (supernet + simplex-net)", "curves?": "curves JSON"},
    ),
    "search": (
        {"split": "split JSON", "checkpoint": "trained checkpoint folder"},
        {"results": "JSON: every evaluated path, the Pareto front, the best path"},
    ),
    "recalibrate": (
        {
            "split": "split JSON",
            "checkpoint": "trained checkpoint folder",
            "results": "search results JSON",
        },
        {"results": "JSON: the front and best path re-scored after BN recalibration"},
    ),
    "retrain": (
        {"split": "split JSON", "results": "search or recalibrate results JSON"},
        {"model": "stand-alone model (torch file)", "metrics": "JSON: accuracy and curves"},
    ),
    "standalone": (
        {"split": "split JSON"},
        {"table": "CSV arch,accuracy,test_images of sampled paths"},
    ),
    "rank": (
        {
            "split": "split JSON",
            "checkpoint": "trained checkpoint folder",
            "ground_truth?": "CSV arch,accuracy (default: config key ground_truth)",
        },
        {"scores": "CSV of per-path scores", "metrics": "JSON: τ, ρ, r, top-group τ"},
    ),
}


# Artifacts that are folders of files; every other artifact is one file.
FOLDER_ARTIFACTS: frozenset[str] = frozenset({"checkpoint"})


def _check_names(stage: str, given: dict[str, str], table: dict[str, str], kind: str) -> None:
    known = [name.rstrip("?") for name in table]
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(known) if known else "none"
            raise ValueError(
                f"stage {stage!r} has no {kind} artifact {name!r}{hint}; its {kind}s: {listed}"
            )


def check_stage(
    name: str,
    config: Config,
    inputs: dict[str, str],
    outputs: dict[str, str],
    gpu: bool = True,
) -> None:
    """What can be checked of a stage call before any work and without any request: the stage
    and artifact names, each URI's form, and the memory the configuration needs (see
    :mod:`kshot.train.memory`; ``gpu=False`` does not ask a GPU).

    Raises:
        ValueError: naming the stage, artifact, URI or config key.
    """
    from kshot import storage
    from kshot.train.memory import check_memory

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    table_in, table_out = ARTIFACTS[name]
    _check_names(name, inputs, table_in, "input")
    _check_names(name, outputs, table_out, "output")
    for kind, given in (("input", inputs), ("output", outputs)):
        for artifact, uri in given.items():
            try:
                storage.Uri.parse(uri)
            except ValueError as e:
                raise ValueError(f"stage {name!r}, {kind} artifact {artifact}={uri!r}: {e}") from e
    if skipped(name, config) is None:
        check_memory(config, name, gpu=gpu)


def check_world(name: str, config: Config, world: int, source: str) -> None:
    """Refuse stage ``name`` run as ``world`` processes that could not share its batch (see
    :func:`kshot.train.groups.check_processes`), before any process starts.

    Args:
        name: the stage.
        config: the run configuration.
        world: the number of processes (workers × processes per worker).
        source: where that number came from (``--workers 3``, a config key), for the message.

    Raises:
        ValueError: naming the config keys, the number of processes and ``source``.
    """
    if name in TRAINING_STAGES and world > 1:
        from kshot.train.groups import check_processes

        check_processes(config, world, f"processes ({source})")


def job_processes(config: Config) -> tuple[int, str]:
    """The processes of a stage's job under ``config`` (config keys ``workers`` × one per GPU,
    or one per CPU worker) and where that number comes from, as :func:`check_world` takes them."""
    per_worker = max(1, config.gpus_per_worker)
    source = f"config key 'workers' = {config.workers}"
    if per_worker > 1:
        source += f" × 'gpus_per_worker' = {per_worker}"
    return config.workers * per_worker, source


def skipped(name: str, config: Config) -> str | None:
    """Why stage ``name`` does no work under ``config`` (it then runs in-process in a moment and
    records the reason), or None."""
    if name in ("standalone", "rank") and not config.ranking:
        return "ranking is off (config key 'ranking' is false)"
    return None


def run_stage(
    name: str,
    config: Config,
    inputs: dict[str, str],
    outputs: dict[str, str],
    overwrite: bool = False,
) -> dict:
    """Run stage ``name`` in this process (one rank of a job, or alone), under the output rules of
    :mod:`kshot.stages.guard`: inputs read-only, one writer per output, one run's work per output
    (``overwrite``: remove the outputs first and start over)."""
    check_stage(name, config, inputs, outputs)
    module = importlib.import_module(f"kshot.stages.{name}")
    from kshot.stages.context import StageContext
    from kshot.stages.guard import run_guarded

    ctx = StageContext.checked(name, config, inputs, outputs)
    known = {n.rstrip("?") for n in ARTIFACTS[name][1]}
    return run_guarded(
        name,
        config,
        inputs,
        {n: uri for n, uri in outputs.items() if n in known},
        lambda: module.run(ctx),
        overwrite=overwrite,
    )


def _percent(value: object) -> str:
    return f"{value:.2f} %" if isinstance(value, (int, float)) else "n/a"


CORRELATION_LABELS = (
    ("kendall_tau_a", "τ-a"),
    ("kendall_tau_b", "τ-b"),
    ("spearman_rho", "ρ"),
    ("pearson_r", "r"),
)
"""The rank stage's correlations as the console names them: result key → label."""


def headline(name: str, result: dict) -> str:
    """The figure a person watches in stage ``name``'s ``result`` (what :func:`run_stage` returned),
    as one short phrase: images per part, epochs done, the best path's score, τ / ρ / r."""
    if result.get("skipped"):
        return f"skipped: {result['skipped']}"
    if name == "split":
        test = f", {result['test']} test" if result.get("test") is not None else ""
        return f"{result['train']} train, {result['valid']} valid{test} images"
    if name in ("warmup", "train"):
        return f"epoch {result['epoch']} (step {result['step']})"
    if name in ("search", "recalibrate"):
        best = result.get("best", result)
        where = "after BN recalibration" if name == "recalibrate" else "on the supernet"
        found = f"{len(result['evaluated'])} paths, " if "evaluated" in result else ""
        return (
            f"{found}best {best['arch']}: {_percent(best['accuracy'])} {where}, "
            f"{best['flops']:.3g} MFLOPs"
        )
    if name == "retrain":
        return f"{result['arch']}: test accuracy {_percent(result['test_accuracy'])}"
    if name == "standalone":
        return f"{result['paths']} paths trained, mean accuracy {_percent(result['accuracy_mean'])}"
    if name == "rank":
        figures = ", ".join(
            f"{label} {result[key]:.3f}"
            for key, label in CORRELATION_LABELS
            if isinstance(result.get(key), (int, float))
        )
        sizes = result.get("baselines", {}).get("params", {}).get("kendall_tau_a")
        anchor = f"; counting parameters τ-a {sizes:.3f}" if isinstance(sizes, float) else ""
        return f"{result.get('n_paths', '?')} paths: {figures}{anchor}"
    return ""
