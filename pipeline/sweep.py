"""The K sweep: how faithfully supernets rank paths as K grows (the paper's Fig. 4).

One split and one ground truth (the standalone sample or the configured table, as in
:mod:`kshot.pipeline.pipeline`) serve every K; a ``dsl.ParallelFor`` over ``k_values`` validates the
config with that K and runs warmup → train → rank; ``dsl.Collected`` gathers the rank correlations
of all K for the last step, which plots Kendall τ against K and returns a JSON summary of them.

At most :data:`K_PARALLELISM` values of K train at once. Without gang scheduling, several
multi-GPU jobs started together can each get some of their pods placed and wait forever for GPUs
that the others hold; one K at a time (beside the standalone ground truth) cannot deadlock that way.
KFP takes the limit as a constant only: raise it and recompile where the cluster fits several K's
jobs at once or schedules each job's pods as a gang (e.g. Kueue, Volcano).

This module does not use ``from __future__ import annotations``: KFP reads the pipeline's
parameter annotations at decoration time.
"""

from kfp import dsl

from kshot.components import stages
from kshot.components.runtime import component_image
from kshot.config import Config
from kshot.launch import BACKENDS
from kshot.pipeline.pipeline import ground_truth_table

__all__ = ["kshot_k_sweep", "SWEEP_PIPELINE_NAME", "DEFAULT_K_VALUES", "K_PARALLELISM"]

SWEEP_PIPELINE_NAME = "kshot-nas-k-sweep"
# Powers of two up to the paper's K = 8, the K of its Tables 7 and 9.
DEFAULT_K_VALUES: list[int] = [1, 2, 4, 8]
# How many K train at once (dsl.ParallelFor's parallelism, a compile-time constant).
K_PARALLELISM = 1
_DEFAULTS = Config()
_LAUNCHER = BACKENDS[0]
_IMAGE = component_image()


@dsl.pipeline(name=SWEEP_PIPELINE_NAME)
def kshot_k_sweep(
    k_values: list = DEFAULT_K_VALUES,
    search_space: str = _DEFAULTS.search_space,
    dataset: str = _DEFAULTS.dataset,
    epochs: int = _DEFAULTS.epochs,
    warmup_epochs: int = _DEFAULTS.warmup_epochs,
    m: int = _DEFAULTS.m,
    alpha: float = _DEFAULTS.alpha,
    tau: float = _DEFAULTS.tau,
    population: int = _DEFAULTS.population,
    generations: int = _DEFAULTS.generations,
    flops_budget: float = _DEFAULTS.flops_budget,
    bn_images: int = _DEFAULTS.bn_images,
    seed: int = _DEFAULTS.seed,
    ground_truth: str = _DEFAULTS.ground_truth,
    workers: int = _DEFAULTS.workers,
    gpus_per_worker: int = _DEFAULTS.gpus_per_worker,
    image: str = _IMAGE,
    launcher: str = _LAUNCHER,
    extra_config: str = "",
) -> dsl.Dataset:
    """K sweep of K-shot NAS: supernet ranking correlation against K (Fig. 4).

    At most kshot.pipeline.sweep.K_PARALLELISM values of K train at a time, so that their
    multi-GPU jobs cannot deadlock the cluster.

    Args:
        k_values: The K values to train and rank, e.g. [1, 2, 4, 8].
        search_space: The search space: nb201 (NAS-Bench-201 cells) or mbv2 (ImageNet, Table 2).
        dataset: Dataset URI ('digits' is built in; local path or gs://).
        epochs: Total supernet epochs, warmup included.
        warmup_epochs: Epochs of uniform single-path warmup with λ = 1/K.
        m: Paths per simplex-net step; must divide the batch size.
        alpha: Weight of the channel regulariser r_c.
        tau: Temperature of r_c.
        population: NSGA-II population (validated; the sweep does not search).
        generations: NSGA-II generations (validated; the sweep does not search).
        flops_budget: FLOPs budget in MFLOPs (validated; the sweep does not search).
        bn_images: Training images used to recalibrate BatchNorm before scoring a path.
        seed: Base seed of the split, the sampled paths and the batches.
        ground_truth: Ground-truth CSV URI for the ranking; empty: train a sample from scratch.
        workers: Processes or pods of each distributed stage.
        gpus_per_worker: GPUs per worker pod (0: CPU).
        image: Worker image of the distributed stages' jobs.
        launcher: How heavy stages run: local (torchrun in the step's pod), pytorchjob, trainjob.
        extra_config: JSON or YAML mapping of any other kshot config keys (see `kshot config`).
    """
    shared = {
        "search_space": search_space,
        "dataset": dataset,
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "m": m,
        "alpha": alpha,
        "tau": tau,
        "population": population,
        "generations": generations,
        "flops_budget": flops_budget,
        "bn_images": bn_images,
        "seed": seed,
        "ground_truth": ground_truth,
        "workers": workers,
        "gpus_per_worker": gpus_per_worker,
        "image": image,
        "launcher": launcher,
        "extra_config": extra_config,
    }
    job = {"launcher": launcher, "image": image, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
    # The split and the ground truth do not depend on K: one config with the default K serves them.
    base_config = stages.configure(k=_DEFAULTS.k, **shared)
    split_task = stages.split(config=base_config.outputs["config"])
    truth = ground_truth_table(base_config, split_task, launcher, image)

    with dsl.ParallelFor(k_values, name="for-each-k", parallelism=K_PARALLELISM) as k:
        config_k = stages.configure(k=k, **shared)
        config = config_k.outputs["config"]
        warmup_task = stages.warmup(config=config, split=split_task.outputs["split"], **job)
        train_task = stages.train(
            config=config,
            split=split_task.outputs["split"],
            warmup_checkpoint=warmup_task.outputs["checkpoint"],
            **job,
        )
        rank_task = stages.rank(
            config=config,
            split=split_task.outputs["split"],
            checkpoint=train_task.outputs["checkpoint"],
            truth=truth.outputs["table"],
            **job,
        )
    plot_task = stages.plot_tau_vs_k(rankings=dsl.Collected(rank_task.outputs["ranking"]))
    return plot_task.outputs["summary"]
