"""``kshot launch render``: print the job the launcher would create, as YAML (a dry run).

The object is rendered by the same code and with the same validation as a real launch, so what a
reviewer or a GitOps repository sees is exactly what the pipeline submits. As a launch does, it
applies the pod settings of the ``kshot-launch-defaults`` ConfigMap of ``--namespace`` (read
through the kubeconfig, or in-cluster), unless ``--pod-overrides`` gives them; where that
ConfigMap cannot be read (no cluster, missing, forbidden) it says so on stderr and renders without
it (``--no-launch-defaults``: without it, quietly). A ConfigMap that a launch would refuse fails
the render too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from kshot.config import add_config_args, config_from_args, parse_overrides
from kshot.launch.spec import LaunchError, LaunchSpec
from kshot.launch.trainjob import DEFAULT_TRAINER_VERSION, TRAINER_VERSIONS
from kshot.stages import ARTIFACTS, HEAVY_STAGES, STAGES

__all__ = ["add_parser"]


def _render(args: argparse.Namespace) -> int:
    from kshot.launch.jobs import render_job

    cfg = config_from_args(args)
    pod_overrides: dict[str, Any] | None = None
    if args.pod_overrides:
        with open(args.pod_overrides) as f:
            pod_overrides = yaml.safe_load(f) or {}
    workers = cfg.workers if args.workers is None else args.workers
    gpus = cfg.gpus_per_worker if args.gpus_per_worker is None else args.gpus_per_worker
    try:
        spec = LaunchSpec(
            stage=args.stage,
            # the config the pods read says what the job is
            config={**cfg.to_dict(), "workers": workers, "gpus_per_worker": gpus},
            inputs=parse_overrides(args.input, "--input"),
            outputs=parse_overrides(args.output, "--output"),
            workers=workers,
            gpus_per_worker=gpus,
            image=args.image,
            namespace=args.namespace,
            name=args.name,
            labels=parse_overrides(args.label, "--label"),
            env=parse_overrides(args.env, "--env"),
            cpu=cfg.job_cpu,
            memory=cfg.job_memory,
            queue_name=cfg.queue_name,
            priority_class=cfg.priority_class,
        )
        _check_pod_artifacts(spec)
        if pod_overrides is None and not args.no_launch_defaults:
            pod_overrides = _launch_defaults(spec.namespace)
        body = render_job(
            spec,
            args.backend,
            service_account=args.service_account,
            backoff_limit=args.backoff_limit,
            pod_overrides=pod_overrides,
            trainer_version=args.trainer_version,
        )
    except LaunchError as e:
        print(f"kshot launch render: error: {e}", file=sys.stderr)
        return 2
    yaml.safe_dump(body, sys.stdout, sort_keys=False)
    return 0


def _launch_defaults(namespace: str) -> dict[str, Any] | None:
    """The pod overrides of the namespace's launch-defaults ConfigMap, as a launch reads them;
    None, after saying on stderr why, where the ConfigMap cannot be read.

    Raises:
        LaunchError: the ConfigMap was read and a launch would refuse it.
    """
    from kshot.launch.cluster import (
        LAUNCH_DEFAULTS_CONFIGMAP,
        LaunchDefaultsUnavailable,
        load_launch_defaults,
    )

    where = f"ConfigMap {namespace}/{LAUNCH_DEFAULTS_CONFIGMAP}"
    try:
        overrides = load_launch_defaults(_cluster(), namespace)
    except LaunchDefaultsUnavailable as error:
        print(
            f"kshot launch render: rendered without the launch defaults of {where}: {error}",
            file=sys.stderr,
        )
        return None
    print(f"kshot launch render: applied the launch defaults of {where}", file=sys.stderr)
    return overrides


def _cluster() -> Any:
    """The cluster's API client; :class:`LaunchDefaultsUnavailable` where there is none."""
    from kshot.launch.cluster import LaunchDefaultsUnavailable, default_api_client

    try:
        return default_api_client()
    except LaunchError as error:
        raise LaunchDefaultsUnavailable(str(error)) from error


def _check_pod_artifacts(spec: LaunchSpec) -> None:
    """A job's pods read and write the artifacts themselves: every one the stage needs must be
    given, as a gs://, s3:// or minio:// URI (a local path is on this machine, not in the pods)."""
    from kshot.storage.uri import remote_scheme

    inputs, outputs = ARTIFACTS[spec.stage]
    for flag, needed, given in (
        ("--input", inputs, spec.inputs),
        ("--output", outputs, spec.outputs),
    ):
        missing = [name for name in needed if not name.endswith("?") and name not in given]
        if missing:
            raise LaunchError(
                f"stage {spec.stage!r} needs {flag} {missing[0]}=gs://BUCKET/… "
                "(or s3://, minio://) "
                f"(missing: {', '.join(missing)}); its pods read and write the artifacts themselves"
            )
        for name, uri in given.items():
            if not remote_scheme(uri):
                raise LaunchError(
                    f"{flag} {name}={uri!r}: the job's pods cannot see a local path; "
                    "give a gs://, s3:// or minio:// URI"
                )


def add_parser(sub: Any) -> None:

    launch = sub.add_parser("launch", help="distributed jobs (PyTorchJob / TrainJob)")
    launch_sub = launch.add_subparsers(dest="launch_command", required=True)
    p = launch_sub.add_parser(
        "render",
        help="print the job a launch would create, as YAML",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=("pytorchjob", "trainjob"), default="pytorchjob")
    p.add_argument(
        "--stage",
        required=True,
        choices=STAGES,
        help=f"the stage (heavy ones run distributed: {', '.join(sorted(HEAVY_STAGES))})",
    )
    p.add_argument(
        "--workers", type=int, help="pods: 1 Master + N-1 Workers (default: config key workers)"
    )
    p.add_argument(
        "--gpus-per-worker",
        type=int,
        help="GPUs per pod, = nprocPerNode (default: config key gpus_per_worker)",
    )
    p.add_argument("--image", required=True, help="the worker image reference")
    p.add_argument("--namespace", default="default", help="the job's namespace")
    p.add_argument("--name", default="", help="job name (default: derived from the spec)")
    p.add_argument("--service-account", default="", help="the pods' service account")
    p.add_argument(
        "--trainer-version",
        choices=tuple(TRAINER_VERSIONS),
        default=DEFAULT_TRAINER_VERSION,
        help="the Kubeflow Trainer release a TrainJob is rendered for (a launch reads it from "
        "the cluster)",
    )
    p.add_argument(
        "--backoff-limit", type=int, default=2, help="PyTorchJob restarts before failing"
    )
    p.add_argument(
        "--pod-overrides",
        metavar="FILE",
        help="YAML with the pods' tolerations, nodeSelector, serviceAccountName, "
        "imagePullSecrets, resources (default: the namespace's kshot-launch-defaults ConfigMap, "
        "as a launch reads it)",
    )
    p.add_argument(
        "--no-launch-defaults",
        action="store_true",
        help="do not read the kshot-launch-defaults ConfigMap (render with no pod overrides)",
    )
    p.add_argument("--input", action="append", default=[], metavar="NAME=URI")
    p.add_argument("--output", action="append", default=[], metavar="NAME=URI")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    add_config_args(p)
    p.set_defaults(func=_render)
