"""The K-shot NAS pipeline: split → warmup → train → search → recalibrate → retrain, and rank.

The DAG follows the paper's order. Rank runs beside search once training ends. Its ground truth is
the configured table (config key ``ground_truth``) or, when that is empty, the ``standalone``
stage's sample of paths trained from scratch; standalone depends only on the split, so it runs
beside the supernet stages. ``dsl.If``/``dsl.Else`` choose between the two, and ``dsl.OneOf`` hands
the chosen table's URI to one unconditional ``ground-truth`` step, which copies it into the run's
ground-truth artifact and hands rank its URI.
(kfp 2.17's local runner resolves ``dsl.OneOf`` of parameters but not of artifacts, which is why
the branches return URIs.) A step receives the split, checkpoints and results as the producing
step's returned URI, never as an input artifact, so no step pod downloads a checkpoint
(:mod:`kshot.components.stages`); on a cluster this takes a gs:// pipeline root, as the
distributed stages do. Sizes, retries, placement and the security context of the steps:
:mod:`kshot.pipeline.platform`.

Every heavy step takes the run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) as an input, to label its
PyTorchJob / TrainJob with :data:`kshot.components.runtime.RUN_ID_LABEL` (``kubectl get pytorchjobs
-l pipelines.kubeflow.org/run_id=RUN_ID`` finds a run's jobs). That input differs in every run, so
KFP's cache never hits for them, nor for the steps after them: deliberately, each run trains its
own supernets; only ``configure`` and ``split`` (and ``benchmark-table``) can come from the cache.

The parameters that are config keys (the config step's,
:data:`kshot.components.stages.PIPELINE_CONFIG_KEYS`) take their types, defaults and descriptions
from :class:`kshot.config.Config` (:func:`kshot.pipeline.parameters.config_parameters`). Any other
config key goes in ``extra_config`` (JSON/YAML). The config step validates them all before any
stage runs.

This module does not use ``from __future__ import annotations``: KFP reads the pipeline's
parameter annotations at decoration time.
"""

from kfp import dsl

from kshot.components import stages
from kshot.components.runtime import job_image
from kshot.components.stages import PIPELINE_CONFIG_KEYS
from kshot.launch import BACKENDS
from kshot.pipeline import PIPELINE_NAME
from kshot.pipeline.parameters import config_parameters
from kshot.pipeline.platform import Placement, heavy, light

__all__ = [
    "kshot_nas",
    "configure",
    "ground_truth_table",
    "PIPELINE_NAME",
    "DEFAULT_STEP_CPU",
    "DEFAULT_STEP_MEMORY",
]

_LAUNCHER = BACKENDS[0]  # local: torchrun in the step's own pod
_IMAGE = job_image()
# What a step pod that runs its stage itself requests (pipeline parameters step_cpu, step_memory).
DEFAULT_STEP_CPU = "4"
DEFAULT_STEP_MEMORY = "16Gi"


def configure(arguments: dict, placement: Placement) -> dsl.PipelineTask:
    """The config step on the pipeline's parameters (``arguments``), on the cluster's terms."""
    return light(stages.configure(**arguments), placement)


def ground_truth_table(
    config_step: dsl.PipelineTask,
    split_task: dsl.PipelineTask,
    job: dict,
    placement: Placement,
) -> dsl.PipelineTask:
    """The ground truth of the ranking: the standalone sample, or the configured table.

    Args:
        config_step: the config step (its ``config``, ``ground_truth`` and step size outputs).
        split_task: the split, whose train indices the standalone paths train on.
        job: the heavy steps' ``launcher``, ``image`` and ``run_id``.
        placement: where the steps' pods may run.

    Returns:
        The ``ground-truth`` task: its ``table`` artifact and its output, the table's URI (CSV
        arch,accuracy).
    """
    config = config_step.outputs["config"]
    with dsl.If(config_step.outputs["ground_truth"] == "", name="no-ground-truth-table"):
        sample = stages.standalone(config=config, split=split_task.outputs["Output"], **job)
        heavy(sample, placement, config_step)
    with dsl.Else(name="ground-truth-table"):
        benchmark = light(stages.benchmark_table(config=config), placement)
    chosen = dsl.OneOf(sample.outputs["Output"], benchmark.outputs["Output"])
    return light(stages.ground_truth(table_uri=chosen), placement)


@dsl.pipeline(name=PIPELINE_NAME)
@config_parameters(PIPELINE_CONFIG_KEYS)
def kshot_nas(
    config_values: dict,  # the PIPELINE_CONFIG_KEYS parameters, by key
    image: str = _IMAGE,
    launcher: str = _LAUNCHER,
    extra_config: str = "",
    step_cpu: str = DEFAULT_STEP_CPU,
    step_memory: str = DEFAULT_STEP_MEMORY,
    step_tolerations: list = [],  # noqa: B006 (a KFP parameter default, never mutated)
    step_node_selector: dict = {},  # noqa: B006
) -> dsl.Dataset:
    """K-shot NAS (Su et al., ICML 2021): train K supernets with a simplex-net, search, retrain.

    The heavy steps take the run id, which labels their jobs, so every run trains anew: KFP's
    cache serves only the config and split steps.

    Args:
        image: Worker image of the distributed stages' jobs.
        launcher: How heavy stages run: local (torchrun in the step's pod), pytorchjob, trainjob.
        extra_config: JSON or YAML mapping of any other kshot config keys (see `kshot config`).
        step_cpu: CPU request of a step pod that runs its stage itself (launcher local).
        step_memory: Memory request and limit of such a step pod (e.g. 16Gi).
        step_tolerations: Kubernetes tolerations of every step pod (a list of mappings).
        step_node_selector: Node labels every step pod must match (label → value).

    Returns:
        The run summary (JSON): best path, accuracy, FLOPs, τ, ρ, r and the reports' URIs.
    """
    placement = Placement(step_tolerations, step_node_selector)
    config_step = configure(
        {
            **config_values,
            "image": image,
            "launcher": launcher,
            "extra_config": extra_config,
            "step_cpu": step_cpu,
            "step_memory": step_memory,
        },
        placement,
    )
    config = config_step.outputs["config"]
    job = {"launcher": launcher, "image": image, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}

    split_task = light(stages.split(config=config), placement)
    split_uri = split_task.outputs["Output"]
    warmup_task = heavy(
        stages.warmup(config=config, split=split_uri, **job), placement, config_step
    )
    train_task = stages.train(
        config=config, split=split_uri, warmup_checkpoint=warmup_task.outputs["Output"], **job
    )
    heavy(train_task, placement, config_step)
    checkpoint_uri = train_task.outputs["Output"]
    search_task = stages.search(config=config, split=split_uri, checkpoint=checkpoint_uri, **job)
    heavy(search_task, placement, config_step)
    recalibrate_task = stages.recalibrate(
        config=config,
        split=split_uri,
        checkpoint=checkpoint_uri,
        search_results=search_task.outputs["Output"],
        **job,
    )
    heavy(recalibrate_task, placement, config_step)
    retrain_task = stages.retrain(
        config=config, split=split_uri, results=recalibrate_task.outputs["Output"], **job
    )
    heavy(retrain_task, placement, config_step)
    truth = ground_truth_table(config_step, split_task, job, placement)
    rank_task = stages.rank(
        config=config,
        split=split_uri,
        checkpoint=checkpoint_uri,
        truth=truth.outputs["Output"],
        **job,
    )
    heavy(rank_task, placement, config_step)
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
    return light(summary_task, placement).outputs["summary"]
