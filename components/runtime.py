"""What the pipeline's components share when they run: the config, artifact URIs, the launch.

The component functions in :mod:`kshot.components.stages` stay thin: KFP ships only a component's own
source to its pod, so everything they share lives here, in the installed package.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from kshot.config import Config, ConfigError, load_config
from kshot.launch import BACKENDS, LaunchError, LaunchSpec, launch
from kshot.launch.spec import is_image_reference
from kshot.stages import (
    HEAVY_STAGES,
    TRAINING_STAGES,
    check_world,
    headline,
    job_processes,
    run_stage,
    skipped,
)
from kshot.storage.uri import remote_scheme

__all__ = [
    "Artifact",
    "IMAGE_ENV",
    "STEP_IMAGE_ENV",
    "JOB_IMAGE_ENV",
    "NAMESPACE_ENV",
    "RUN_ID_LABEL",
    "step_image",
    "job_image",
    "StepSize",
    "LAUNCHER_STEP_SIZE",
    "heavy_step_size",
    "build_config",
    "pipeline_arguments",
    "config_from_json",
    "artifact_uri",
    "handoff_uri",
    "pod_namespace",
    "run_pipeline_stage",
    "RESULT_PREFIX",
]

# Read when the pipeline is compiled: the image of the KFP steps, the default image of the jobs,
# and the one image for both where either is unset.
STEP_IMAGE_ENV = "KSHOT_STEP_IMAGE"
JOB_IMAGE_ENV = "KSHOT_JOB_IMAGE"
IMAGE_ENV = "KSHOT_IMAGE"
NAMESPACE_ENV = "KSHOT_NAMESPACE"
RUN_ID_LABEL = "pipelines.kubeflow.org/run_id"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RESULT_PREFIX = "kshot result:"
"""Starts the one line a stage's step prints with its key figure (what ``kshot run --local`` shows)."""
_CONFIG_KEYS = frozenset(f.name for f in dataclasses.fields(Config))
_DEFAULT_IMAGE: str = next(f.default for f in dataclasses.fields(LaunchSpec) if f.name == "image")


class Artifact(Protocol):
    """The part of a KFP artifact the components use."""

    uri: str
    path: str


def step_image() -> str:
    """The image the KFP steps run in: ``$KSHOT_STEP_IMAGE``, else ``$KSHOT_IMAGE``, else the
    launcher's default worker image. Read when the components are defined (import, compile)."""
    return os.environ.get(STEP_IMAGE_ENV) or os.environ.get(IMAGE_ENV) or _DEFAULT_IMAGE


def job_image() -> str:
    """The default worker image of the jobs (the pipeline's ``image`` parameter):
    ``$KSHOT_JOB_IMAGE``, else ``$KSHOT_IMAGE``, else the launcher's default worker image."""
    return os.environ.get(JOB_IMAGE_ENV) or os.environ.get(IMAGE_ENV) or _DEFAULT_IMAGE


@dataclasses.dataclass(frozen=True)
class StepSize:
    """What one step pod requests (Kubernetes quantities; memory is also its limit).

    Attributes:
        cpu: CPU request, e.g. ``"4"`` or ``"500m"``.
        memory: memory request and limit, e.g. ``"16Gi"``.
        gpus: GPUs (``nvidia.com/gpu``) of the pod.
    """

    cpu: str
    memory: str
    gpus: int = 0


# A heavy step whose stage runs as a PyTorchJob / TrainJob only creates and watches the job.
LAUNCHER_STEP_SIZE = StepSize(cpu="250m", memory="1Gi")


def _quantity(value: str, parameter: str) -> str:
    """``value`` when Kubernetes reads it as a quantity, else a ConfigError naming ``parameter``."""
    from kubernetes.utils import parse_quantity

    try:
        if parse_quantity(value) <= 0:
            raise ValueError("not positive")
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"pipeline parameter {parameter!r}: {value!r} is not a positive Kubernetes quantity "
            "(e.g. '4', '500m', '16Gi')"
        ) from error
    return value


def heavy_step_size(cfg: Config, launcher: str, cpu: str, memory: str) -> StepSize:
    """What the pod of a heavy step needs: the whole stage with ``launcher=local`` (torchrun in the
    pod: ``cpu``, ``memory`` and every worker's GPUs), only the job's watcher otherwise.

    Raises:
        ConfigError: ``cpu`` or ``memory`` is not a Kubernetes quantity.
    """
    size = StepSize(
        _quantity(cpu, "step_cpu"),
        _quantity(memory, "step_memory"),
        cfg.workers * cfg.gpus_per_worker,
    )
    return size if launcher == "local" else LAUNCHER_STEP_SIZE


def build_config(arguments: Mapping[str, Any]) -> Config:
    """Validate the config step's arguments (the pipeline parameters) as one :class:`Config`.

    Args:
        arguments: the config step's: every key of
            :data:`kshot.components.stages.PIPELINE_CONFIG_KEYS`, plus ``extra_config`` (a JSON or
            YAML mapping of any other config keys, '' for none), ``launcher`` (the heavy stages'
            launch backend) and ``image`` (their jobs' worker image); optionally ``step_cpu``
            and ``step_memory`` (what a step pod that runs a stage itself requests).

    Returns:
        The configuration every stage receives.

    Raises:
        ConfigError: a bad value, naming the pipeline parameter or config key and its source.
    """
    parameters = {key: value for key, value in arguments.items() if key in _CONFIG_KEYS}
    extra_config, launcher, image = (
        arguments["extra_config"],
        arguments["launcher"],
        arguments["image"],
    )
    try:
        extra = yaml.safe_load(extra_config) if extra_config.strip() else {}
    except yaml.YAMLError as error:
        raise ConfigError(f"pipeline parameter 'extra_config' is not JSON/YAML: {error}") from error
    if not isinstance(extra, dict):
        raise ConfigError(
            f"pipeline parameter 'extra_config' must be a mapping of config keys, got {extra!r}"
        )
    shadowed = sorted(set(extra) & set(parameters))
    if shadowed:
        raise ConfigError(
            f"pipeline parameter 'extra_config' sets {', '.join(shadowed)}: set the pipeline "
            "parameter of that name instead"
        )
    if launcher not in BACKENDS:
        raise ConfigError(
            f"pipeline parameter 'launcher': {launcher!r} is not one of {', '.join(BACKENDS)}"
        )
    if not is_image_reference(image):
        raise ConfigError(f"pipeline parameter 'image': {image!r} is not a valid image reference")
    for parameter in ("step_cpu", "step_memory"):
        if parameter in arguments:
            _quantity(arguments[parameter], parameter)
    cfg = load_config(
        extra, parameters, sources=["pipeline parameter 'extra_config'", "pipeline parameters"]
    )
    try:
        for stage in sorted(TRAINING_STAGES):
            check_world(stage, cfg, *job_processes(cfg))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return cfg


def pipeline_arguments(cfg: Config, launcher: str = "local", image: str = "") -> dict[str, Any]:
    """The pipeline's arguments for ``cfg``: its own parameters, other changed keys in extra_config.

    Args:
        cfg: the run configuration.
        launcher: the launch backend of the heavy stages.
        image: their worker image (default: :func:`job_image`).

    Returns:
        Keyword arguments of :func:`kshot.pipeline.pipeline.kshot_nas`.
    """
    from kshot.components.stages import PIPELINE_CONFIG_KEYS  # stages imports this module

    values = cfg.to_dict()
    defaults = Config().to_dict()
    extra = {
        key: value
        for key, value in values.items()
        if key not in PIPELINE_CONFIG_KEYS and value != defaults[key]
    }
    return {
        **{key: values[key] for key in PIPELINE_CONFIG_KEYS},
        "image": image or job_image(),
        "launcher": launcher,
        "extra_config": json.dumps(extra, sort_keys=True) if extra else "",
    }


def config_from_json(config_json: str) -> Config:
    """The :class:`Config` that the config step emitted as JSON."""
    return load_config(json.loads(config_json), sources=["the config step's output"])


def artifact_uri(artifact: Artifact) -> str:
    """Where a worker reads or writes ``artifact``.

    Its ``gs://``, ``s3://`` or ``minio://`` URI when the pipeline root is in an object store
    (workers in other pods reach the bucket directly), else its local path (kfp.local, or a pod
    that runs the stage itself).
    """
    return artifact.uri if remote_scheme(artifact.uri) else artifact.path


def _unreachable(where: str, uri: str) -> str:
    """Why ``uri`` (named by ``where``) is of no use in another pod, and the fix."""
    why = (
        f"kshot reaches gs://, s3:// and minio:// stores, not {uri.partition('://')[0]}://"
        if "://" in uri
        else "a path on this machine"
    )
    return (
        f"{where} is {uri}, which other pods cannot reach ({why}). Give the run a gs://, s3:// or "
        "minio:// pipeline root (kshot pipeline run --pipeline-root gs://BUCKET/PREFIX, "
        "s3://BUCKET/PREFIX or minio://BUCKET/PREFIX, or pipeline_root= of kfp.Client's run "
        "methods; KFP's default minio://mlpipeline/v2/artifacts will do)"
    )


def handoff_uri(artifact: Artifact, name: str) -> str:
    """The URI of ``artifact`` for a later step that receives it as a string, not as an artifact.

    A string input is not downloaded into the later step's pod (an input artifact is, whole);
    the stage or its job reads from the URI only what it needs, so the URI must name a store that
    kshot reaches from any pod; called before the stage's work, this fails at once otherwise.

    Args:
        artifact: the output artifact.
        name: its name, for the error.

    Raises:
        ValueError: the pipeline root is neither in an object store (``gs://``, ``s3://``,
            ``minio://``) nor a local folder (kfp.local).
    """
    if "://" in artifact.uri and not remote_scheme(artifact.uri):
        raise ValueError(_unreachable(f"output {name!r}", artifact.uri))
    return artifact_uri(artifact)


def _check_reachable_by_jobs(
    stage: str, launcher: str, uris: Mapping[str, Mapping[str, str]]
) -> None:
    """Refuse, before any job starts, to hand a job's pods URIs that they cannot reach.

    Args:
        stage: the stage name.
        launcher: the job backend (not ``local``).
        uris: ``"input"`` or ``"output"`` → artifact name → its URI.

    Raises:
        LaunchError: an artifact is not in an object store, naming it, its URI and the fix.
    """
    for role, named in uris.items():
        for name, uri in named.items():
            if not remote_scheme(uri):
                where = f"{stage}: {role} {name!r} of the {launcher} job"
                raise LaunchError(f"{_unreachable(where, uri)}, or set launcher=local")


def pod_namespace() -> str:
    """The Kubernetes namespace of this pod: ``$KSHOT_NAMESPACE``, else the service account's.

    Raises:
        LaunchError: neither is there (not in a pod, and no namespace given).
    """
    namespace = os.environ.get(NAMESPACE_ENV, "").strip()
    if namespace:
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except FileNotFoundError as error:
        raise LaunchError(
            f"cannot tell the namespace for the job: set {NAMESPACE_ENV} or run in a pod with a "
            f"service account token ({SERVICE_ACCOUNT_NAMESPACE} is absent)"
        ) from error


def run_pipeline_stage(
    stage: str,
    config_json: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, Artifact],
    launcher: str = "local",
    image: str = "",
    run_id: str = "",
) -> None:
    """Run one stage on the URIs of earlier steps' outputs and on the component's own outputs.

    The inputs are URIs (see :func:`handoff_uri`), not input artifacts: KFP's launcher copies every
    input artifact into the step's pod before the step starts, checkpoints included, although a
    job's pods read them from the bucket themselves.

    Heavy stages (:data:`kshot.stages.HEAVY_STAGES`) run as a job through
    :func:`kshot.launch.launch` — local torchrun processes, or a PyTorchJob / TrainJob in this pod's
    namespace labelled with the KFP run id; light ones run in this process.

    Args:
        stage: the stage name.
        config_json: the config step's output.
        inputs: stage input name → URI (an earlier step's :func:`handoff_uri`).
        outputs: stage output name → artifact.
        launcher: the launch backend (``local``, ``pytorchjob``, ``trainjob``).
        image: the worker image of a job (default: this component's image).
        run_id: the KFP run id, put on the job as the label :data:`RUN_ID_LABEL`.

    Raises:
        LaunchError: a job's artifact is not in Cloud Storage, so its pods could not reach it.
    """
    cfg = config_from_json(config_json)
    input_uris = dict(inputs)
    output_uris = {name: artifact_uri(artifact) for name, artifact in outputs.items()}
    if stage not in HEAVY_STAGES or skipped(stage, cfg):
        _print_result(stage, run_stage(stage, cfg, input_uris, output_uris))
        return
    if launcher != "local":
        remote = {name: artifact.uri for name, artifact in outputs.items()}
        _check_reachable_by_jobs(stage, launcher, {"input": input_uris, "output": remote})
    placement = {"namespace": pod_namespace()} if launcher != "local" else {}
    spec = LaunchSpec(
        stage=stage,
        config=cfg.to_dict(),
        inputs=input_uris,
        outputs=output_uris,
        workers=cfg.workers,
        gpus_per_worker=cfg.gpus_per_worker,
        image=image or job_image(),
        **placement,
        labels={RUN_ID_LABEL: run_id} if run_id else {},
        cpu=cfg.job_cpu,
        memory=cfg.job_memory,
        queue_name=cfg.queue_name,
        priority_class=cfg.priority_class,
    )
    results: list[dict] = []

    def log(line: str) -> None:
        print(line, end="" if line.endswith("\n") else "\n", flush=True)
        found = _worker_result(line, stage)
        if found is not None:
            results.append(found)

    launch(spec, backend=launcher, log=log)
    if results:
        _print_result(stage, results[-1])


def _worker_result(line: str, stage: str) -> dict | None:
    """The result in a log line of :mod:`kshot.worker` (``{"stage": …, "result": …}``), or None."""
    text = line[line.find("{") :].strip()  # pod logs may carry a pod-name prefix
    if not (text.startswith("{") and f'"stage": "{stage}"' in text):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    result = record.get("result") if isinstance(record, dict) else None
    return result if isinstance(result, dict) else None


def _print_result(stage: str, result: dict) -> None:
    print(f"{RESULT_PREFIX} {stage}: {headline(stage, result)}", flush=True)
