"""The K sweep: how faithfully supernets rank paths as K grows (the paper's Fig. 4).

One split and one ground truth (the standalone sample or the configured table, as in
:mod:`kshot.pipeline.pipeline`) serve every K; a ``dsl.ParallelFor`` over the ``sweep-items`` step's
list (each K with the split's and the ground truth's URIs) validates the config with that K and
runs warmup → train → rank; ``dsl.Collected`` gathers the rank correlations of all K for the last
step, which plots Kendall τ against K and returns a JSON summary of them. Steps are sized, retried and placed as in the pipeline
(:mod:`kshot.pipeline.platform`).

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
from kshot.components.runtime import job_image
from kshot.components.stages import PIPELINE_CONFIG_KEYS
from kshot.config import Config
from kshot.launch import BACKENDS
from kshot.pipeline import SWEEP_PIPELINE_NAME
from kshot.pipeline.parameters import config_parameters
from kshot.pipeline.pipeline import (
    DEFAULT_STEP_CPU,
    DEFAULT_STEP_MEMORY,
    configure,
    ground_truth_table,
)
from kshot.pipeline.platform import Placement, heavy, light

__all__ = ["kshot_k_sweep", "SWEEP_PIPELINE_NAME", "DEFAULT_K_VALUES", "K_PARALLELISM"]

# Powers of two up to the paper's K = 8, the K of its Tables 7 and 9.
DEFAULT_K_VALUES: list[int] = [1, 2, 4, 8]
# How many K train at once (dsl.ParallelFor's parallelism, a compile-time constant).
K_PARALLELISM = 1
_DEFAULTS = Config()
_LAUNCHER = BACKENDS[0]
_IMAGE = job_image()


@dsl.pipeline(name=SWEEP_PIPELINE_NAME)
@config_parameters(key for key in PIPELINE_CONFIG_KEYS if key != "k")
def kshot_k_sweep(
    config_values: dict,  # the PIPELINE_CONFIG_KEYS parameters but k, by key
    k_values: list = DEFAULT_K_VALUES,
    image: str = _IMAGE,
    launcher: str = _LAUNCHER,
    extra_config: str = "",
    step_cpu: str = DEFAULT_STEP_CPU,
    step_memory: str = DEFAULT_STEP_MEMORY,
    step_tolerations: list = [],  # noqa: B006 (a KFP parameter default, never mutated)
    step_node_selector: dict = {},  # noqa: B006
) -> dsl.Dataset:
    """K sweep of K-shot NAS: supernet ranking correlation against K (Fig. 4).

    At most kshot.pipeline.sweep.K_PARALLELISM values of K train at a time, so that their
    multi-GPU jobs cannot deadlock the cluster.

    Args:
        k_values: The K values to train and rank, e.g. [1, 2, 4, 8].
        population: NSGA-II population (validated; the sweep does not search).
        generations: NSGA-II generations (validated; the sweep does not search).
        flops_budget: FLOPs budget in MFLOPs (validated; the sweep does not search).
        image: Worker image of the distributed stages' jobs.
        launcher: How heavy stages run: local (torchrun in the step's pod), pytorchjob, trainjob.
        extra_config: JSON or YAML mapping of any other kshot config keys (see `kshot config`).
        step_cpu: CPU request of a step pod that runs its stage itself (launcher local).
        step_memory: Memory request and limit of such a step pod (e.g. 16Gi).
        step_tolerations: Kubernetes tolerations of every step pod (a list of mappings).
        step_node_selector: Node labels every step pod must match (label → value).
    """
    shared = {
        **config_values,
        "image": image,
        "launcher": launcher,
        "extra_config": extra_config,
        "step_cpu": step_cpu,
        "step_memory": step_memory,
    }
    job = {"launcher": launcher, "image": image, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
    placement = Placement(step_tolerations, step_node_selector)
    # The split and the ground truth do not depend on K: one config with the default K serves them.
    base_config = configure({"k": _DEFAULTS.k, **shared}, placement)
    split_task = light(stages.split(config=base_config.outputs["config"]), placement)
    truth = ground_truth_table(base_config, split_task, job, placement)
    items = stages.sweep_items(
        k_values=k_values, split=split_task.outputs["Output"], truth=truth.outputs["Output"]
    )
    light(items, placement)

    with dsl.ParallelFor(items.output, name="for-each-k", parallelism=K_PARALLELISM) as item:
        config_k = configure({"k": item.k, **shared}, placement)
        config = config_k.outputs["config"]
        warmup_task = stages.warmup(config=config, split=item.split, **job)
        heavy(warmup_task, placement, config_k)
        train_task = stages.train(
            config=config, split=item.split, warmup_checkpoint=warmup_task.outputs["Output"], **job
        )
        heavy(train_task, placement, config_k)
        rank_task = stages.rank(
            config=config,
            split=item.split,
            checkpoint=train_task.outputs["Output"],
            truth=item.truth,
            **job,
        )
        heavy(rank_task, placement, config_k)
    plot_task = stages.plot_tau_vs_k(rankings=dsl.Collected(rank_task.outputs["ranking"]))
    light(plot_task, placement)
    return plot_task.outputs["summary"]
