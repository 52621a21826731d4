"""``kshot pipeline compile|upload|run``: the pipelines as YAML, and on a Kubeflow Pipelines host.

    kshot pipeline compile [--output FILE] [--sweep] [--step-image REF] [--job-image REF]
    kshot pipeline upload [--host URL] [--package FILE] [--name N] [--version V] [--sweep]
    kshot pipeline run [--host URL] [--experiment E]
                       [--package FILE | --pipeline-id ID | --name N] [--version-id ID | --version V]
                       [--sweep] [--pipeline-root gs://B/P] [--enable-caching | --no-caching]
                       [--config F] [--set key=value …]

Compile once, upload that file, run that version: ``compile`` writes the YAML (and says where),
``upload --package FILE`` puts it on the host and prints its ``pipeline_id`` and ``version_id``,
``run --pipeline-id ID --version-id ID`` (or ``--name N --version V``) runs exactly it.

A pipeline for a cluster names two images: the steps' (``--step-image``, else
``$KSHOT_STEP_IMAGE``) and the jobs' workers' (``--job-image``, else ``$KSHOT_JOB_IMAGE``: the
default of the ``image`` parameter); ``$KSHOT_IMAGE`` stands for either. Compiling without them
fails, naming them, and so do ``upload`` and ``run`` without ``--package``, which compile the same
way.

The host is ``--host``, else kfp's ``$KF_PIPELINES_ENDPOINT``; the bearer token
``--existing-token``, else ``$KF_PIPELINES_TOKEN``, else the file kfp reads in a pod
(``$KF_PIPELINES_SA_TOKEN_PATH``, default ``/var/run/secrets/kubeflow/pipelines/token``).
``--set`` takes config keys (`kshot config --help-keys`) and the pipeline's own parameters
``launcher``, ``image``, ``step_cpu``, ``step_memory``, ``step_tolerations``,
``step_node_selector`` and, with ``--sweep``, ``k_values``; config keys that are not pipeline
parameters travel in ``extra_config``. Exactly the keys that ``--config`` and ``--set`` name are
sent (even when equal to this kshot's defaults, since an uploaded pipeline's may differ); the rest
keep the pipeline's defaults. ``--pipeline-root gs://BUCKET/PREFIX`` (or ``s3://``, ``minio://``)
puts the run's artifacts in an object store that every pod reaches, which job launchers need.

Running an uploaded pipeline imports neither torch nor the pipeline's components: a CI job submits
with kshot installed without its dependencies, plus kfp (``.github/workflows/rerun.yml``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kshot.config import ConfigError, parse_overrides

__all__ = ["add_parser", "cluster_images", "compile_pipeline", "run_arguments", "set_caching"]

_PIPELINE_ONLY = (
    "launcher",
    "image",
    "step_cpu",
    "step_memory",
    "step_tolerations",
    "step_node_selector",
)
_SWEEP_ONLY = ("k_values",)


def _pipeline(sweep: bool) -> tuple[Callable[..., Any], str]:
    """The pipeline function and its name."""
    if sweep:
        from kshot.pipeline.sweep import SWEEP_PIPELINE_NAME, kshot_k_sweep

        return kshot_k_sweep, SWEEP_PIPELINE_NAME
    from kshot.pipeline.pipeline import PIPELINE_NAME, kshot_nas

    return kshot_nas, PIPELINE_NAME


def cluster_images(step_image: str = "", job_image: str = "") -> tuple[str, str]:
    """The images a pipeline for a cluster runs: (the steps', the jobs' workers').

    Args:
        step_image: ``--step-image``; '' for ``$KSHOT_STEP_IMAGE``, else ``$KSHOT_IMAGE``.
        job_image: ``--job-image``; '' for ``$KSHOT_JOB_IMAGE``, else ``$KSHOT_IMAGE``.

    Raises:
        ConfigError: an image is not given anywhere (naming the flag and the variables), or is
            not an image reference (naming where it came from).
    """
    from kshot.components.runtime import IMAGE_ENV, JOB_IMAGE_ENV, STEP_IMAGE_ENV
    from kshot.launch.spec import is_image_reference

    chosen: list[str] = []
    missing: list[str] = []
    for role, flag, given, env in (
        ("steps", "--step-image", step_image, STEP_IMAGE_ENV),
        ("jobs", "--job-image", job_image, JOB_IMAGE_ENV),
    ):
        sources = [(flag, given), (f"${env}", os.environ.get(env, ""))]
        sources.append((f"${IMAGE_ENV}", os.environ.get(IMAGE_ENV, "")))
        source, image = next(((s, i) for s, i in sources if i.strip()), ("", ""))
        if not image:
            missing.append(f"the {role}' image ({flag} or ${env})")
        elif not is_image_reference(image.strip()):
            raise ConfigError(
                f"{source} {image!r} is not a valid image reference "
                "([registry[:port]/]name[:tag][@digest], name in lower case)"
            )
        chosen.append(image.strip())
    if missing:
        raise ConfigError(
            f"missing {' and '.join(missing)}, or ${IMAGE_ENV} for both: a pipeline for a "
            "cluster runs the images it names; build and push them as images/README.md says and "
            "name them (e.g. --step-image REGISTRY/kshot-cpu:TAG --job-image REGISTRY/kshot:TAG)"
        )
    return chosen[0], chosen[1]


def compile_pipeline(
    output: str, sweep: bool = False, step_image: str = "", job_image: str = ""
) -> str:
    """Compile the K-shot NAS pipeline (or the K sweep) for a cluster to the YAML file ``output``.

    Args:
        output: where the YAML goes.
        sweep: the K sweep instead.
        step_image: the image every step runs in (see :func:`cluster_images`).
        job_image: the default of the ``image`` parameter, the jobs' workers' image.

    Returns:
        The pipeline's name.

    Raises:
        ConfigError: an image is missing or malformed (before anything is written).
    """
    from kfp import compiler

    step, job = cluster_images(step_image, job_image)
    func, name = _pipeline(sweep)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(func, output, pipeline_parameters={"image": job})
    _set_step_image(output, step)
    return name


def _set_step_image(package: str, image: str) -> None:
    """Make ``image`` the container image of every step of the compiled ``package``.

    (The components name the image they were defined with, which the import reads from the
    environment; the compiled pipeline must name the one chosen now.)
    """
    documents = list(yaml.safe_load_all(Path(package).read_text()))
    for executor in documents[0]["deploymentSpec"]["executors"].values():
        executor["container"]["image"] = image
    Path(package).write_text(yaml.safe_dump_all(documents, sort_keys=False))


def run_arguments(files: list[str], overrides: list[str], sweep: bool = False) -> dict[str, Any]:
    """The pipeline arguments of ``--config`` files and ``--set`` pairs, validated.

    Args:
        files: YAML config files, applied in order.
        overrides: ``key=value`` pairs (config keys or pipeline parameters).
        sweep: whether they are for the K sweep (which takes ``k_values``, not ``k``).

    Returns:
        Every key the files or pairs set, even to a local default: an uploaded pipeline's
        defaults may differ. Config keys without a parameter of their own go in ``extra_config``.

    Raises:
        ConfigError: a bad key or value, named with its source.
    """
    from kshot.components.runtime import build_config, pipeline_arguments
    from kshot.components.stages import PIPELINE_CONFIG_KEYS
    from kshot.config import load_config, read_config_file

    pairs = parse_overrides(overrides)
    own = _PIPELINE_ONLY + (_SWEEP_ONLY if sweep else ())
    direct = {key: yaml.safe_load(pairs.pop(key)) for key in own if key in pairs}
    if sweep and "k" in pairs:
        raise ConfigError("--set k: the K sweep takes k_values (e.g. --set k_values=[1,2,4,8])")
    if "k_values" in direct and not (
        isinstance(direct["k_values"], list)
        and direct["k_values"]
        and all(isinstance(k, int) and not isinstance(k, bool) for k in direct["k_values"])
    ):
        raise ConfigError(f"--set k_values: {direct['k_values']!r} is not a list of integers")
    layers = [read_config_file(f) for f in files]
    cfg = load_config(*layers, pairs, sources=[*files, "--set"])
    for k in direct.get("k_values", []):  # each run of the sweep must be a valid config
        load_config(*layers, {**pairs, "k": k}, sources=[*files, "--set k_values"])
    if len(set(direct.get("k_values", []))) < len(direct.get("k_values", [])):
        raise ConfigError(f"--set k_values: {direct['k_values']!r} repeats a K")
    _check_placement(direct)
    build_config(
        {**pipeline_arguments(cfg), **{key: direct[key] for key in _PIPELINE_ONLY if key in direct}}
    )
    explicit = set(pairs).union(*layers)  # load_config checked that all are known keys
    if sweep:
        explicit.discard("k")
    values = cfg.to_dict()
    arguments = {key: values[key] for key in PIPELINE_CONFIG_KEYS if key in explicit}
    extra = {key: values[key] for key in sorted(explicit - set(PIPELINE_CONFIG_KEYS))}
    if extra:
        arguments["extra_config"] = json.dumps(extra, sort_keys=True)
    return {**arguments, **direct}


def _check_placement(direct: dict[str, Any]) -> None:
    """Refuse ``--set step_tolerations`` / ``step_node_selector`` that Kubernetes would not read."""
    tolerations = direct.get("step_tolerations", [])
    fields = {"key", "operator", "value", "effect", "tolerationSeconds"}
    if not isinstance(tolerations, list) or not all(
        isinstance(t, dict) and t and set(t) <= fields for t in tolerations
    ):
        raise ConfigError(
            f"--set step_tolerations: {tolerations!r} is not a list of Kubernetes tolerations "
            f"(mappings of {', '.join(sorted(fields))})"
        )
    selector = direct.get("step_node_selector", {})
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise ConfigError(
            f"--set step_node_selector: {selector!r} is not a mapping of node label to value "
            "(e.g. {cloud.google.com/gke-nodepool: pipelines})"
        )
    for parameter in ("step_cpu", "step_memory"):  # YAML reads --set step_cpu=4 as a number
        if parameter in direct:
            direct[parameter] = str(direct[parameter])


def _auth_args(parser: argparse.ArgumentParser) -> None:
    from kshot.pipeline import ENDPOINT_ENV, SA_TOKEN_PATH_ENV, TOKEN_ENV

    parser.add_argument(
        "--host",
        default="",
        metavar="URL",
        help=f"Kubeflow Pipelines API endpoint, e.g. https://HOST/pipeline (default: ${ENDPOINT_ENV})",
    )
    parser.add_argument(
        "--existing-token",
        metavar="TOKEN",
        help=f"bearer token for the host (default: ${TOKEN_ENV}, else the file ${SA_TOKEN_PATH_ENV} "
        "names, as kfp reads it in a pod)",
    )
    parser.add_argument(
        "--namespace", default="", help="your profile namespace on a multi-user Kubeflow"
    )
    parser.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help="send the token to an http:// host too (e.g. kubectl port-forward to localhost; "
        "or set $KSHOT_ALLOW_INSECURE_TOKEN=1)",
    )
    parser.add_argument("--sweep", action="store_true", help="the K-sweep pipeline")


def _image_args(parser: argparse.ArgumentParser, when: str = "") -> None:
    from kshot.components.runtime import IMAGE_ENV, JOB_IMAGE_ENV, STEP_IMAGE_ENV

    parser.add_argument(
        "--step-image",
        default="",
        metavar="REF",
        help=f"the image every step runs in{when} (default: ${STEP_IMAGE_ENV}, else ${IMAGE_ENV})",
    )
    parser.add_argument(
        "--job-image",
        default="",
        metavar="REF",
        help=f"the jobs' workers' image, the default of the image parameter{when} (default: "
        f"${JOB_IMAGE_ENV}, else ${IMAGE_ENV})",
    )


def _package(args: argparse.Namespace, scratch: str) -> str:
    """``--package``, else the pipeline compiled into ``scratch`` (with the images it needs)."""
    if args.package:
        if not Path(args.package).is_file():
            raise FileNotFoundError(f"--package {args.package}: no such file")
        return args.package
    path = str(Path(scratch) / "pipeline.yaml")
    compile_pipeline(path, args.sweep, args.step_image, args.job_image)
    return path


def set_caching(package: str, enable: bool, output: str) -> None:
    """Write ``package`` to ``output`` with KFP's cache on (or off) for every task of every DAG.

    (``kfp.Client``'s ``enable_caching`` reaches the root DAG's tasks only, not those inside a
    condition or a loop, such as the standalone sample and the K sweep's stages.)
    """
    documents = list(yaml.safe_load_all(Path(package).read_text()))
    spec = documents[0]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for task in dag["tasks"].values():
            if "executorLabel" in spec["components"][task["componentRef"]["name"]]:
                task.setdefault("cachingOptions", {})["enableCache"] = enable
    Path(output).write_text(yaml.safe_dump_all(documents, sort_keys=False))


def _run_package(args: argparse.Namespace, scratch: str) -> str:
    """The package to run: :func:`_package`, with ``--enable-caching / --no-caching`` applied."""
    package = _package(args, scratch)
    if args.enable_caching is None:
        return package
    output = str(Path(scratch) / "pipeline-caching.yaml")
    set_caching(package, args.enable_caching, output)
    return output


def _check_pipeline_root(uri: str) -> None:
    """Refuse a ``--pipeline-root`` outside the object stores kshot reaches (gs://, s3://,
    minio://): only there do the job pods and later steps reach the artifacts (see
    :func:`kshot.components.runtime.handoff_uri`)."""
    from kshot.storage.uri import Uri

    if not uri:
        return
    try:
        if not Uri.parse(uri).is_remote:
            raise ValueError(f"not a gs://, s3:// or minio:// URI: {uri!r}")
    except ValueError as error:
        raise ConfigError(
            f"--pipeline-root {uri!r}: {error}; the pipeline needs gs://BUCKET/PREFIX, "
            "s3://BUCKET/PREFIX or minio://BUCKET/PREFIX"
        ) from error


def _timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _default_name(sweep: bool) -> str:
    from kshot.pipeline import PIPELINE_NAME, SWEEP_PIPELINE_NAME

    return SWEEP_PIPELINE_NAME if sweep else PIPELINE_NAME


def _compile(args: argparse.Namespace) -> int:
    name = compile_pipeline(args.output, args.sweep, args.step_image, args.job_image)
    print(f"compiled pipeline {name!r} to {Path(args.output).resolve()}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from kshot.pipeline.client import connect, upload

    with tempfile.TemporaryDirectory(prefix="kshot-pipeline-") as scratch:
        package = _package(args, scratch)  # compiles (or fails on the images) before any request
        host = connect(args.host, args.existing_token, args.namespace, args.allow_insecure_token)
        name = args.name or _default_name(args.sweep)
        uploaded = upload(host, package, name, args.version, args.description)
    what = "pipeline" if uploaded.new_pipeline else "version"
    print(
        f"uploaded {what}: {name!r} version {uploaded.version_name!r} "
        f"pipeline_id={uploaded.pipeline_id} version_id={uploaded.version_id}"
    )
    return 0


def _check_source(args: argparse.Namespace) -> None:
    """Refuse a run that names its pipeline twice, or a version of no uploaded pipeline."""
    named = [
        flag
        for flag, value in (
            ("--package", args.package),
            ("--pipeline-id", args.pipeline_id),
            ("--name", args.name),
        )
        if value
    ]
    if len(named) > 1:
        raise ConfigError(
            f"{' and '.join(named)}: give one (--package runs that file; --pipeline-id and --name "
            "run an uploaded pipeline)"
        )
    versions = [
        flag
        for flag, value in (("--version-id", args.version_id), ("--version", args.version))
        if value
    ]
    if len(versions) > 1:
        raise ConfigError("--version-id and --version: give one")
    if versions and not (args.pipeline_id or args.name):
        raise ConfigError(
            f"{versions[0]} names a version of an uploaded pipeline: give --pipeline-id or --name"
        )


def _run(args: argparse.Namespace) -> int:
    from kshot.pipeline.client import (
        PipelineHostError,
        connect,
        find_pipeline,
        find_version,
        submit_run,
    )

    _check_source(args)
    arguments = run_arguments(args.config, args.overrides, args.sweep)
    _check_pipeline_root(args.pipeline_root)
    if args.enable_caching is not None and (args.pipeline_id or args.name):
        flag = "--enable-caching" if args.enable_caching else "--no-caching"
        raise ConfigError(
            f"{flag} applies to a pipeline compiled now or given with --package (KFP writes it "
            "into the pipeline spec): an uploaded pipeline keeps the caching it was compiled with"
        )
    with tempfile.TemporaryDirectory(prefix="kshot-pipeline-") as scratch:
        uploaded = args.pipeline_id or args.name
        package = None if uploaded else _run_package(args, scratch)  # before any request
        host = connect(args.host, args.existing_token, args.namespace, args.allow_insecure_token)
        pipeline_id = args.pipeline_id
        if args.name:
            pipeline_id = find_pipeline(host, args.name, shared_too=True)
            if pipeline_id is None:
                raise PipelineHostError(
                    f"Kubeflow Pipelines at {host.url}: no pipeline {args.name!r}"
                )
        version_id = args.version_id
        if args.version:
            version_id = find_version(host, pipeline_id, args.version)
        run_name = args.run_name or f"{args.name or _default_name(args.sweep)}-{_timestamp()}"
        run_id = submit_run(
            host,
            args.experiment,
            run_name,
            arguments,
            package_path=package,
            pipeline_id=pipeline_id,
            version_id=version_id,
            service_account=args.service_account,
            pipeline_root=args.pipeline_root,
        )
    shown = ", ".join(f"{key}={value}" for key, value in sorted(arguments.items())) or "defaults"
    print(f"submitted run {run_name!r} (run_id={run_id}) with {shown}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``pipeline compile|upload|run`` to the ``kshot`` command."""
    parser = subparsers.add_parser(
        "pipeline",
        help="compile the pipelines; upload and run them on Kubeflow Pipelines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)

    compile_ = sub.add_parser("compile", help="compile a pipeline to YAML")
    compile_.add_argument("--output", default="pipeline.yaml", metavar="FILE")
    compile_.add_argument("--sweep", action="store_true", help="the K-sweep pipeline")
    _image_args(compile_)
    compile_.set_defaults(func=_compile)

    upload_ = sub.add_parser("upload", help="upload a pipeline (a new version when it exists)")
    _auth_args(upload_)
    upload_.add_argument("--name", default="", help="pipeline name (default: the pipeline's)")
    upload_.add_argument("--version", default="", help="version name (default: a UTC timestamp)")
    upload_.add_argument("--description", default="", help="shown in the UI")
    upload_.add_argument(
        "--package", default="", metavar="FILE", help="compiled YAML (default: compile now)"
    )
    _image_args(upload_, " when compiling now")
    upload_.set_defaults(func=_upload)

    run = sub.add_parser("run", help="start a run; parameters from --config/--set")
    _auth_args(run)
    run.add_argument("--experiment", default="kshot", help="experiment name (created if missing)")
    run.add_argument("--run-name", default="", help="default: pipeline name and a UTC timestamp")
    run.add_argument("--pipeline-id", default="", help="run an uploaded pipeline")
    run.add_argument("--name", default="", help="run the uploaded pipeline of this name")
    run.add_argument("--version-id", default="", help="its version (default: the newest)")
    run.add_argument("--version", default="", help="its version of this name")
    run.add_argument(
        "--package",
        default="",
        metavar="FILE",
        help="run this compiled YAML (default, without --pipeline-id / --name: compile now)",
    )
    _image_args(run, " when compiling now")
    run.add_argument("--service-account", default="", help="Kubernetes service account of the run")
    run.add_argument(
        "--pipeline-root",
        default="",
        metavar="gs://BUCKET/PREFIX",
        help="where the run's artifacts go (default: the host's); steps and jobs need gs://, s3:// or minio://",
    )
    caching = run.add_mutually_exclusive_group()
    caching.add_argument(
        "--enable-caching",
        dest="enable_caching",
        action="store_const",
        const=True,
        default=None,
        help="let KFP serve unchanged steps from its cache (default: as compiled)",
    )
    caching.add_argument(
        "--no-caching",
        dest="enable_caching",
        action="store_const",
        const=False,
        help="run every step anew",
    )
    run.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config file (local path, gs://, s3:// or minio:// URI); repeat to layer several",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a config key or pipeline parameter (launcher, image, step_cpu, step_memory, "
        "step_tolerations, step_node_selector, k_values)",
    )
    run.set_defaults(func=_run)
