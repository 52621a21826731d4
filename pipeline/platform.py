"""What the pipelines' steps ask of the cluster: resources, retries, placement, security context.

Every step requests CPU and memory (memory is also its limit, so a step that outgrows it is killed
rather than the node's other pods). A light step (config, split, reports, the ground-truth table)
gets :data:`LIGHT_STEP`. A heavy step's pod runs its stage itself with ``launcher=local``
(torchrun in the pod: the pipeline parameters ``step_cpu`` / ``step_memory`` and every worker's
GPUs), or only creates and watches a PyTorchJob / TrainJob; the config step works out which
(:func:`kshot.components.runtime.heavy_step_size`) and the heavy steps take its outputs. Recalibration
always scores paths in its own pod and takes ``step_cpu`` / ``step_memory`` directly.

Heavy steps are retried with exponential backoff (:data:`HEAVY_RETRY`): a retried step renders
the same job name and hash, so it adopts its job when that is still running or has succeeded
instead of training again (:mod:`kshot.launch.kube`).

Placement and identity go through ``kfp-kubernetes`` on every step: the pipeline parameters
``step_tolerations`` (a list of Kubernetes tolerations) and ``step_node_selector`` (label →
value), the keys of KFP's artifact store from its Secret ``mlpipeline-minio-artifact`` when the
namespace has it (so a step reaches a ``minio://`` pipeline root itself; see
:mod:`kshot.storage`), and a security context that runs the step as the images' non-root user
(:data:`IMAGE_UID`). The service account of the step pods is the run's (``kshot pipeline run
--service-account``): KFP sets it per run, not per step. The compiled pipeline cannot state the
rest of the "restricted" Pod Security profile (``allowPrivilegeEscalation: false``, dropped
capabilities, ``seccompProfile: RuntimeDefault``) nor a read-only root filesystem: the KFP backend
sets the executor container's (kfp-kubernetes 2.17 documents that its backend adds the first three),
and a namespace that enforces the profile refuses step pods of a backend that does not.

This module does not use ``from __future__ import annotations``: it works on KFP tasks whose
arguments KFP inspects.
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_channel

from kshot.components.runtime import StepSize
from kshot.storage import s3

__all__ = [
    "ACCELERATOR",
    "HEAVY_RETRY",
    "IMAGE_UID",
    "LIGHT_STEP",
    "Placement",
    "light",
    "heavy",
    "in_pod",
]

# The user (and group) the images run as: images/Dockerfile*'s `USER 1000:1000`.
IMAGE_UID = 1000
# The extended resource a GPU step requests (NVIDIA's device plugin).
ACCELERATOR = "nvidia.com/gpu"
LIGHT_STEP = StepSize(cpu="500m", memory="2Gi")
# set_retry's arguments: 3 retries, 1 then 2 then 4 minutes apart, all within 2 hours.
HEAVY_RETRY: dict[str, Any] = {
    "num_retries": 3,
    "backoff_duration": "60s",
    "backoff_factor": 2.0,
    "backoff_max_duration": "7200s",
}


@dataclass(frozen=True)
class Placement:
    """Where the steps' pods may run: the pipeline parameters (channels) or constants.

    Attributes:
        tolerations: a list of Kubernetes tolerations (``key``, ``operator``, ``value``,
            ``effect``, ``tolerationSeconds``).
        node_selector: node label → value.
    """

    tolerations: Any
    node_selector: Any


def _common(task: dsl.PipelineTask, placement: Placement) -> dsl.PipelineTask:
    # The keys of KFP's own store (a minio:// pipeline root), where the namespace has its Secret.
    kubernetes.use_secret_as_env(task, s3.MINIO_SECRET, dict(s3.MINIO_SECRET_KEYS), optional=True)
    kubernetes.add_toleration_json(task, placement.tolerations)
    kubernetes.add_node_selector_json(task, placement.node_selector)
    kubernetes.set_security_context(
        task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True
    )
    return task


def light(task: dsl.PipelineTask, placement: Placement) -> dsl.PipelineTask:
    """A step that reads and writes small files: :data:`LIGHT_STEP`, no retry."""
    task.set_cpu_request(LIGHT_STEP.cpu)
    task.set_memory_request(LIGHT_STEP.memory).set_memory_limit(LIGHT_STEP.memory)
    return _common(task, placement)


def in_pod(task: dsl.PipelineTask, placement: Placement, cpu: Any, memory: Any) -> dsl.PipelineTask:
    """A step that computes in its own pod, whatever the launcher: ``cpu`` and ``memory``."""
    task.set_cpu_request(cpu)
    task.set_memory_request(memory).set_memory_limit(memory)
    _register([cpu, memory], task)
    return _common(task, placement)


def _register(values: list, task: dsl.PipelineTask) -> None:
    """Make the channels among ``values`` inputs of ``task``: KFP 2.17 brings a channel that sizes a
    task into a ``dsl.If`` or loop around it only when the task registers it."""
    task.register_pipeline_channels(
        [v for v in values if isinstance(v, pipeline_channel.PipelineChannel)]
    )


def heavy(
    task: dsl.PipelineTask, placement: Placement, config_step: dsl.PipelineTask
) -> dsl.PipelineTask:
    """A heavy stage's step: sized by the config step's outputs, GPUs included; retried."""
    outputs = config_step.outputs
    in_pod(task, placement, outputs["step_cpu"], outputs["step_memory"])
    task.set_accelerator_type(ACCELERATOR).set_accelerator_limit(outputs["step_gpus"])
    _register([outputs["step_gpus"]], task)
    task.set_retry(**HEAVY_RETRY)
    return task
