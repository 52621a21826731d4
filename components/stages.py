"""The pipeline's KFP components: the config step, one component per stage, reports.

Each is a lightweight ``@dsl.component`` that runs in the project's step image (read when the
components are defined, see :func:`kshot.components.runtime.step_image`), where kfp and kshot are
installed, so no pod installs packages. KFP ships only a component's own source to its pod:
every import sits inside the function, and the work is done by :mod:`kshot.components.runtime`,
:mod:`kshot.components.reports` and the library. Heavy stages launch a job through
:func:`kshot.launch.launch` with the backend named by the ``launcher`` parameter.

A step receives what an earlier step wrote (the split, checkpoints, results, the ground truth) as
that step's returned URI, a string, not as an input artifact: KFP's launcher copies every input
artifact whole into the step's pod before it starts, gigabytes of checkpoints for a step that only
hands them on to a job. Each producer still declares the output artifact (the UI shows it) and
returns its URI (:func:`kshot.components.runtime.handoff_uri`).

The config step's signature names the config keys that are pipeline parameters of their own
(:data:`PIPELINE_CONFIG_KEYS`, read from it); KFP ships its source, so it is written out, and
``tests/test_pipeline.py`` holds its names and types to :class:`kshot.config.Config`'s fields.

This module does not use ``from __future__ import annotations``: KFP reads the annotations of a
component's signature at decoration time and cannot resolve them from strings.
"""

import dataclasses
import inspect
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from kshot.components.runtime import step_image
from kshot.config import Config

__all__ = [
    "PIPELINE_CONFIG_KEYS",
    "configure",
    "split",
    "warmup",
    "train",
    "search",
    "recalibrate",
    "retrain",
    "standalone",
    "benchmark_table",
    "ground_truth",
    "rank",
    "summarize",
    "plot_tau_vs_k",
    "sweep_items",
]

_OPTIONS = {"base_image": step_image(), "install_kfp_package": False}


@dsl.component(**_OPTIONS)
def configure(
    k: int,
    search_space: str,
    dataset: str,
    epochs: int,
    warmup_epochs: int,
    m: int,
    alpha: float,
    tau: float,
    population: int,
    generations: int,
    flops_budget: float,
    bn_images: int,
    seed: int,
    ground_truth: str,
    workers: int,
    gpus_per_worker: int,
    queue_name: str,
    priority_class: str,
    image: str,
    launcher: str,
    extra_config: str,
    step_cpu: str,
    step_memory: str,
) -> NamedTuple(
    "ConfigOutputs",
    [
        ("config", str),
        ("ground_truth", str),
        ("step_cpu", str),
        ("step_memory", str),
        ("step_gpus", int),
    ],
):
    """Validate the pipeline parameters as one kshot configuration.

    A bad value fails this step, before any training, with a message that names the parameter.

    Args:
        k: K, the number of supernets (weight slots).
        search_space: The search space: nb201 (NAS-Bench-201 cells) or mbv2 (ImageNet, Table 2).
        dataset: Dataset URI ('digits' is built in; local path or gs://).
        epochs: Total supernet epochs, warmup included.
        warmup_epochs: Epochs of uniform single-path warmup with λ = 1/K.
        m: Paths per simplex-net step; must divide the batch size.
        alpha: Weight of the channel regulariser r_c.
        tau: Temperature of r_c.
        population: NSGA-II population.
        generations: NSGA-II generations.
        flops_budget: Hard FLOPs budget of the search in MFLOPs (0: none).
        bn_images: Training images used to recalibrate BatchNorm before scoring a path.
        seed: Base seed of the split, the sampled paths and the batches.
        ground_truth: Ground-truth CSV URI for the ranking; empty: the standalone stage's sample.
        workers: Processes or pods of each distributed stage.
        gpus_per_worker: GPUs per worker pod (0: CPU).
        queue_name: Kueue LocalQueue of the jobs (empty: not queued).
        priority_class: Kueue WorkloadPriorityClass of the jobs (needs queue_name).
        image: Worker image of the distributed stages' jobs.
        launcher: How heavy stages run: local (torchrun in the step's pod), pytorchjob, trainjob.
        extra_config: JSON or YAML mapping of any other kshot config keys.
        step_cpu: CPU request of a step pod that runs its stage itself (launcher local).
        step_memory: Memory request and limit of such a step pod.

    Returns:
        config: The configuration as JSON, read by every stage.
        ground_truth: The ground-truth URI (empty when the standalone stage provides it).
        step_cpu: CPU request of the heavy steps' pods (a job's watcher needs little).
        step_memory: Memory request and limit of the heavy steps' pods.
        step_gpus: GPUs of the heavy steps' pods (the workers' with launcher local, else 0).
    """
    arguments = dict(locals())
    import json
    from collections import namedtuple

    from kshot.components.runtime import build_config, heavy_step_size

    cfg = build_config(arguments)
    size = heavy_step_size(cfg, launcher, step_cpu, step_memory)
    outputs = namedtuple(
        "ConfigOutputs", ["config", "ground_truth", "step_cpu", "step_memory", "step_gpus"]
    )
    return outputs(
        json.dumps(cfg.to_dict(), sort_keys=True),
        cfg.ground_truth,
        size.cpu,
        size.memory,
        size.gpus,
    )


_CONFIG_KEYS = frozenset(f.name for f in dataclasses.fields(Config))
PIPELINE_CONFIG_KEYS: tuple[str, ...] = tuple(
    name for name in inspect.signature(configure.python_func).parameters if name in _CONFIG_KEYS
)
"""The config keys that are pipeline parameters of their own: the config step's, in its order.
Every other key goes through the ``extra_config`` parameter."""


@dsl.component(**_OPTIONS)
def split(config: str, split: Output[Dataset]) -> str:
    """Split the training images into train and local-validation indices (seeded).

    Args:
        config: The run configuration (the config step's JSON).
        split: JSON of train / valid (/ test) indices.

    Returns:
        The split's URI, for the later steps.
    """
    from kshot.components.runtime import handoff_uri, run_pipeline_stage

    split_uri = handoff_uri(split, "split")
    run_pipeline_stage("split", config, {}, {"split": split})
    return split_uri


@dsl.component(**_OPTIONS)
def warmup(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    checkpoint: Output[Model],
) -> str:
    """Warm the K-shot supernet up: uniform single-path training with λ = 1/K (Algorithm 1).

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        checkpoint: Checkpoint folder of the warmed-up supernet.

    Returns:
        The checkpoint's URI, for the train step.
    """
    from kshot.components.runtime import handoff_uri, run_pipeline_stage

    checkpoint_uri = handoff_uri(checkpoint, "checkpoint")
    run_pipeline_stage(
        "warmup", config, {"split": split}, {"checkpoint": checkpoint}, launcher, image, run_id
    )
    return checkpoint_uri


@dsl.component(**_OPTIONS)
def train(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    warmup_checkpoint: str,
    checkpoint: Output[Model],
    curves: Output[Dataset],
    training_page: Output[HTML],
) -> str:
    """Train the supernet and the simplex-net alternately, step by step (Algorithm 2).

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        warmup_checkpoint: URI of the warmup's checkpoint folder.
        checkpoint: Checkpoint folder of the trained supernet and simplex-net.
        curves: Per-epoch loss, accuracy and learning rate (JSON).
        training_page: Plots of the training curves.

    Returns:
        The checkpoint's URI, for search, recalibration and ranking.
    """
    from kshot.components.reports import training_report
    from kshot.components.runtime import handoff_uri, run_pipeline_stage

    checkpoint_uri = handoff_uri(checkpoint, "checkpoint")
    run_pipeline_stage(
        "train",
        config,
        {"split": split, "checkpoint": warmup_checkpoint},
        {"checkpoint": checkpoint, "curves": curves},
        launcher,
        image,
        run_id,
    )
    training_report(curves, training_page)
    return checkpoint_uri


@dsl.component(**_OPTIONS)
def search(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    checkpoint: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    search_page: Output[HTML],
) -> str:
    """Search paths with NSGA-II under the FLOPs budget, scoring each on the supernet.

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        checkpoint: URI of the trained supernet's checkpoint folder.
        results: Every evaluated path, the Pareto front and the best path (JSON).
        metrics: Best accuracy and FLOPs, paths evaluated.
        search_page: Pareto front and λ histograms.

    Returns:
        The results' URI, for recalibration.
    """
    from kshot.components.reports import search_report
    from kshot.components.runtime import handoff_uri, run_pipeline_stage

    results_uri = handoff_uri(results, "results")
    run_pipeline_stage(
        "search",
        config,
        {"split": split, "checkpoint": checkpoint},
        {"results": results},
        launcher,
        image,
        run_id,
    )
    search_report(results, metrics, search_page)
    return results_uri


@dsl.component(**_OPTIONS)
def recalibrate(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    checkpoint: str,
    search_results: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Re-score the Pareto front and the best path with BatchNorm recalibrated on bn_images images.

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        checkpoint: URI of the trained supernet's checkpoint folder.
        search_results: URI of the search's results.
        results: The front and best path re-scored (JSON).
        metrics: Best accuracy and FLOPs after recalibration.

    Returns:
        The results' URI, for retraining.
    """
    from kshot.components.reports import recalibrate_report
    from kshot.components.runtime import handoff_uri, run_pipeline_stage

    results_uri = handoff_uri(results, "results")
    run_pipeline_stage(
        "recalibrate",
        config,
        {"split": split, "checkpoint": checkpoint, "results": search_results},
        {"results": results},
        launcher,
        image,
        run_id,
    )
    recalibrate_report(results, metrics)
    return results_uri


@dsl.component(**_OPTIONS)
def retrain(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    results: str,
    model: Output[Model],
    retrained: Output[Dataset],
    metrics: Output[Metrics],
    retrain_page: Output[HTML],
):
    """Retrain the best path from scratch and test it.

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        results: URI of the recalibrated results holding the best path.
        model: The stand-alone network (torch file with the arch and weights).
        retrained: Test accuracy, FLOPs, parameters and curves (JSON).
        metrics: Test accuracy, FLOPs and parameters.
        retrain_page: Retraining curves.
    """
    from kshot.components.reports import retrain_report
    from kshot.components.runtime import run_pipeline_stage

    run_pipeline_stage(
        "retrain",
        config,
        {"split": split, "results": results},
        {"model": model, "metrics": retrained},
        launcher,
        image,
        run_id,
    )
    retrain_report(retrained, metrics, retrain_page)


@dsl.component(**_OPTIONS)
def standalone(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    table: Output[Dataset],
) -> str:
    """Train a seeded sample of paths from scratch: the ground truth where no benchmark exists.

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        table: CSV arch,accuracy,test_images of the sampled paths.

    Returns:
        The table's URI for the ground-truth step (on a cluster, in an object store).
    """
    from kshot.components.runtime import handoff_uri, run_pipeline_stage

    table_uri = handoff_uri(table, "table")  # before training: it must reach the next step
    run_pipeline_stage(
        "standalone", config, {"split": split}, {"table": table}, launcher, image, run_id
    )
    return table_uri


@dsl.component(**_OPTIONS)
def benchmark_table(config: str, table: Output[Dataset]) -> str:
    """Read the configured ground-truth table (config keys ground_truth, ground_truth_column).

    Args:
        config: The run configuration (the config step's JSON).
        table: CSV arch,accuracy of every path of the benchmark table.

    Returns:
        The table's URI for the ground-truth step (on a cluster, in an object store).
    """
    from kshot.components.runtime import config_from_json, handoff_uri
    from kshot.eval.ground_truth import load_ground_truth, write_ground_truth_csv
    from kshot.spaces import space_from_config

    table_uri = handoff_uri(table, "table")
    cfg = config_from_json(config)
    space = space_from_config(cfg)
    rows = (
        load_ground_truth(cfg.ground_truth, cfg.ground_truth_column, space) if cfg.ranking else {}
    )
    write_ground_truth_csv(table_uri, rows, column="accuracy", space=space)
    return table_uri


@dsl.component(**_OPTIONS)
def ground_truth(table_uri: str, table: Output[Dataset]) -> str:
    """Hand on the ground truth chosen by the branch that ran (standalone sample or benchmark).

    Args:
        table_uri: URI of the chosen CSV arch,accuracy.
        table: The same table, as this run's ground-truth artifact.

    Returns:
        The table's URI, for the rank steps.
    """
    from kshot import storage
    from kshot.components.runtime import handoff_uri

    uri = handoff_uri(table, "table")
    storage.write_bytes(uri, storage.read_bytes(table_uri))
    return uri


@dsl.component(**_OPTIONS)
def rank(
    config: str,
    launcher: str,
    image: str,
    run_id: str,
    split: str,
    checkpoint: str,
    truth: str,
    scores: Output[Dataset],
    ranking: Output[Dataset],
    metrics: Output[Metrics],
    rank_page: Output[HTML],
):
    """Score the ground-truth paths on the supernet; Kendall τ, Spearman ρ, Pearson r, top-group τ.

    Args:
        config: The run configuration (the config step's JSON).
        launcher: Launch backend of the job: local, pytorchjob or trainjob.
        image: Worker image of the job.
        run_id: KFP run id, put on the job as a label.
        split: URI of the split's indices.
        checkpoint: URI of the trained supernet's checkpoint folder.
        truth: URI of the ground truth, CSV arch,accuracy.
        scores: Per-path supernet accuracy, ground truth and λ (CSV).
        ranking: τ, ρ, r and the top-group τ (JSON).
        metrics: τ, ρ, r, the top-group τ and the number of paths.
        rank_page: Supernet against ground truth, the top-group τ curve and λ histograms.
    """
    from kshot.components.reports import rank_report
    from kshot.components.runtime import run_pipeline_stage

    run_pipeline_stage(
        "rank",
        config,
        {"split": split, "checkpoint": checkpoint, "ground_truth": truth},
        {"scores": scores, "metrics": ranking},
        launcher,
        image,
        run_id,
    )
    rank_report(ranking, scores, metrics, rank_page)


@dsl.component(**_OPTIONS)
def summarize(
    config: str,
    results: Input[Dataset],
    retrained: Input[Dataset],
    ranking: Input[Dataset],
    truth: Input[Dataset],
    training_page: Input[HTML],
    search_page: Input[HTML],
    retrain_page: Input[HTML],
    rank_page: Input[HTML],
    summary: Output[Dataset],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
):
    """Summarise the run: best path, its accuracy and FLOPs, the ranking correlations.

    Args:
        config: The run configuration (the config step's JSON).
        results: Recalibrated search results.
        retrained: Retraining results.
        ranking: Ranking correlations.
        truth: CSV arch,accuracy of the ground truth (the retrained path is ranked among a
            stand-alone sample's).
        training_page: Training report.
        search_page: Search report.
        retrain_page: Retraining report.
        rank_page: Ranking report.
        summary: The summary as JSON, with the reports' URIs.
        markdown: The summary as a Markdown table.
        metrics: Best accuracy and FLOPs, retrained accuracy, τ, ρ, r.
    """
    from kshot.components.reports import run_summary

    pages = {
        "training": training_page,
        "search": search_page,
        "retrain": retrain_page,
        "rank": rank_page,
    }
    run_summary(config, results, retrained, ranking, truth, pages, summary, markdown, metrics)


@dsl.component(**_OPTIONS)
def plot_tau_vs_k(
    rankings: Input[list[Dataset]],
    metrics: Output[Metrics],
    page: Output[HTML],
    summary: Output[Dataset],
):
    """Plot Kendall τ against K over the sweep (the paper's Fig. 4).

    Args:
        rankings: Rank correlations of every K.
        metrics: τ, ρ and r of every K.
        page: τ against K and a table of the correlations.
        summary: JSON: the correlations of every K and the page's URI.
    """
    from kshot.components.reports import tau_vs_k_report

    tau_vs_k_report(rankings, metrics, page, summary)


@dsl.component(**_OPTIONS)
def sweep_items(k_values: list, split: str, truth: str) -> list:
    """The K sweep's loop items: each K with the URIs of the split and the ground truth they share.

    (kfp 2.17's local runner replaces a step's output that enters a ``dsl.ParallelFor`` by the
    loop item; fields of the items themselves reach the loop's steps intact.)

    Args:
        k_values: The K values to train and rank.
        split: URI of the split's indices.
        truth: URI of the ground truth, CSV arch,accuracy.

    Returns:
        One mapping k, split, truth per K.
    """
    return [{"k": k, "split": split, "truth": truth} for k in k_values]
