"""The K-shot NAS pipeline: split → warmup → train → search → recalibrate → retrain, and rank.

The DAG follows the paper's order. Rank runs beside search once training ends. Its ground truth is
the configured table (config key ``ground_truth``) or, when that is empty, the ``standalone``
stage's sample of paths trained from scratch; standalone depends only on the split, so it runs
beside the supernet stages. ``dsl.If``/``dsl.Else`` choose between the two, and ``dsl.OneOf`` hands
the chosen table's URI to one unconditional ``ground-truth`` step whose artifact rank reads.
(kfp 2.17's local runner resolves ``dsl.OneOf`` of parameters but not of artifacts, and replaces
task-output parameters that enter a ``dsl.ParallelFor`` by the loop item; an artifact works in both
places, which the K sweep needs. On a cluster this takes a gs:// pipeline root, as the distributed
stages do.)

Every heavy step takes the run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) as an input, to label its
PyTorchJob / TrainJob with :data:`kshot.components.runtime.RUN_ID_LABEL` (``kubectl get pytorchjobs
-l pipelines.kubeflow.org/run_id=RUN_ID`` finds a run's jobs). That input differs in every run, so
KFP's cache never hits for them, nor for the steps after them: deliberately, each run trains its
own supernets; only ``configure`` and ``split`` (and ``benchmark-table``) can come from the cache.

Every default of a parameter that is a config key is :class:`kshot.config.Config`'s. Any other
config key goes in ``extra_config`` (JSON/YAML). The config step validates them all before any
stage runs.

This module does not use ``from __future__ import annotations``: KFP reads the pipeline's
parameter annotations at decoration time.
"""

from kfp import dsl

from kshot.components import stages
from kshot.components.runtime import component_image
from kshot.config import Config
from kshot.launch import BACKENDS

__all__ = ["kshot_nas", "ground_truth_table", "PIPELINE_NAME"]

PIPELINE_NAME = "kshot-nas"
_DEFAULTS = Config()
_LAUNCHER = BACKENDS[0]  # local: torchrun in the step's own pod
_IMAGE = component_image()


def ground_truth_table(
    config_step: dsl.PipelineTask,
    split_task: dsl.PipelineTask,
    launcher: str,
    image: str,
) -> dsl.PipelineTask:
    """The ground truth of the ranking: the standalone sample, or the configured table.

    Args:
        config_step: the config step (its ``config`` and ``ground_truth`` outputs).
        split_task: the split, whose train indices the standalone paths train on.
        launcher: the launch backend of the standalone job.
        image: its worker image.

    Returns:
        The ``ground-truth`` task, whose ``table`` artifact is CSV arch,accuracy.
    """
    config = config_step.outputs["config"]
    with dsl.If(config_step.outputs["ground_truth"] == "", name="no-ground-truth-table"):
        sample = stages.standalone(
            config=config,
            launcher=launcher,
            image=image,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            split=split_task.outputs["split"],
        )
    with dsl.Else(name="ground-truth-table"):
        benchmark = stages.benchmark_table(config=config)
    return stages.ground_truth(
        table_uri=dsl.OneOf(sample.outputs["Output"], benchmark.outputs["Output"])
    )


@dsl.pipeline(name=PIPELINE_NAME)
def kshot_nas(
    k: int = _DEFAULTS.k,
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
    """K-shot NAS (Su et al., ICML 2021): train K supernets with a simplex-net, search, retrain.

    The heavy steps take the run id, which labels their jobs, so every run trains anew: KFP's
    cache serves only the config and split steps.

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
        ground_truth: Ground-truth CSV URI for the ranking; empty: train a sample from scratch.
        workers: Processes or pods of each distributed stage.
        gpus_per_worker: GPUs per worker pod (0: CPU).
        image: Worker image of the distributed stages' jobs.
        launcher: How heavy stages run: local (torchrun in the step's pod), pytorchjob, trainjob.
        extra_config: JSON or YAML mapping of any other kshot config keys (see `kshot config`).

    Returns:
        The run summary (JSON): best path, accuracy, FLOPs, τ, ρ, r and the reports' URIs.
    """
    config_step = stages.configure(
        k=k,
        search_space=search_space,
        dataset=dataset,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        m=m,
        alpha=alpha,
        tau=tau,
        population=population,
        generations=generations,
        flops_budget=flops_budget,
        bn_images=bn_images,
        seed=seed,
        ground_truth=ground_truth,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        image=image,
        launcher=launcher,
        extra_config=extra_config,
    )
    config = config_step.outputs["config"]
    job = {"launcher": launcher, "image": image, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}

    split_task = stages.split(config=config)
    split_indices = split_task.outputs["split"]
    warmup_task = stages.warmup(config=config, split=split_indices, **job)
    train_task = stages.train(
        config=config,
        split=split_indices,
        warmup_checkpoint=warmup_task.outputs["checkpoint"],
        **job,
    )
    checkpoint = train_task.outputs["checkpoint"]
    search_task = stages.search(config=config, split=split_indices, checkpoint=checkpoint, **job)
    recalibrate_task = stages.recalibrate(
        config=config,
        split=split_indices,
        checkpoint=checkpoint,
        search_results=search_task.outputs["results"],
    )
    retrain_task = stages.retrain(
        config=config,
        split=split_indices,
        results=recalibrate_task.outputs["results"],
        **job,
    )
    truth = ground_truth_table(config_step, split_task, launcher, image)
    rank_task = stages.rank(
        config=config,
        split=split_indices,
        checkpoint=checkpoint,
        truth=truth.outputs["table"],
        **job,
    )
    summary_task = stages.summarize(
        config=config,
        results=recalibrate_task.outputs["results"],
        retrained=retrain_task.outputs["retrained"],
        ranking=rank_task.outputs["ranking"],
        truth=truth.outputs["table"],
        training_page=train_task.outputs["training_page"],
        search_page=search_task.outputs["search_page"],
        retrain_page=retrain_task.outputs["retrain_page"],
        rank_page=rank_task.outputs["rank_page"],
    )
    return summary_task.outputs["summary"]
