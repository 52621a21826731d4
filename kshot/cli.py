"""The ``kshot`` command: every stage on its own, the whole pipeline locally, and Kubeflow.

    kshot stage NAME [--config F] [--set key=value …] [--input NAME=URI …] [--output NAME=URI …]
    kshot run --local [--config F] [--set key=value …] [--output DIR]
    kshot pipeline compile|upload|run …
    kshot launch render --backend pytorchjob|trainjob --stage NAME …
    kshot config [--config F] [--set key=value …]

Configuration comes in layers, later ones winning: the defaults (the paper's and NAS-Bench-201's, see
``kshot config``), ``--config`` YAML files, then ``--set`` pairs. Bad values stop the command before any
work starts, with the key and where it came from.

One idea, the command line: its length is one small parser and handler per subcommand, which
read best side by side (the ``launch``, ``pipeline`` and ``experiment`` subcommands keep theirs
beside their code).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from kshot.config import (
    FIELD_HELP,
    ConfigError,
    add_config_args,
    config_from_args,
    parse_overrides,
)
from kshot.launch.spec import LaunchError
from kshot.stages import ARTIFACTS, STAGES

__all__ = ["main", "build_parser", "config_from_args", "DISTRIBUTION", "CLOSED_PIPE_EXIT"]

DISTRIBUTION = "kshot-nas"
"""The installed distribution (``pyproject.toml``'s name), whose version ``kshot --version`` shows."""
CLOSED_PIPE_EXIT = 128 + 13
"""The exit status when the reader of the output went away (``kshot … | head``): as a shell tool
killed by SIGPIPE."""


class CommandError(Exception):
    """A user error: printed as one line, exit code 2."""


def _artifact_help(stage: str) -> str:
    inputs, outputs = ARTIFACTS[stage]
    lines = ["artifacts:"]
    for kind, table in (("--input", inputs), ("--output", outputs)):
        for name, what in table.items():
            optional = name.endswith("?")
            lines.append(
                f"  {kind} {name.rstrip('?')}=URI  {what}{' (optional)' if optional else ''}"
            )
    return "\n".join(lines)


def _module_doc(module: str) -> str:
    """The docstring of ``module``, read from its source: importing a stage would load torch, which
    takes seconds, for a ``--help``. The file is found from the top-level package's folder, since
    finding a submodule's spec imports its parent packages (``kshot.data`` imports torch)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        base = os.path.join(folder, *rest)
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return ast.get_docstring(ast.parse(f.read())) or ""
    return ""


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _stage(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    inputs = parse_overrides(args.input, "--input")
    outputs = parse_overrides(args.output, "--output")
    if args.workers > 1:
        from kshot.launch.local import run_local
        from kshot.stages import check_stage, check_world

        check_stage(args.name, cfg, inputs, outputs, gpu=False)  # the workers check the GPU
        check_world(args.name, cfg, args.workers, f"--workers {args.workers}")
        if not args.overwrite:
            from kshot.stages.guard import check_recorded

            check_recorded(outputs)  # the workers check again, holding the outputs' leases
        from kshot.launch.spec import LaunchSpec

        run_local(
            LaunchSpec(
                stage=args.name,
                config=cfg.to_dict(),
                inputs=inputs,
                outputs=outputs,
                workers=args.workers,
                overwrite=args.overwrite,
            )
        )
        return 0
    from kshot.stages import headline, run_stage

    result = run_stage(args.name, cfg, inputs, outputs, overwrite=args.overwrite)
    if args.verbose:
        print(json.dumps(result, indent=2, default=str))
    print(f"{args.name}: {headline(args.name, result)}")
    for name, uri in outputs.items():
        print(f"  {name}: {uri}")
    return 0


def _config(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.help_keys:
        for key, value in cfg.to_dict().items():
            shown = json.dumps(value, ensure_ascii=False)
            print(f"{key} = {shown}\n    {FIELD_HELP[key]}")
        return 0
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        raise CommandError(
            "kshot run: only --local is supported here; on a cluster use "
            "`kshot pipeline run --host URL`"
        )
    from kshot.pipeline.local_run import DEFAULT_CONFIG, run_local_pipeline, summary_lines

    cfg = config_from_args(args, base=[] if args.config else [DEFAULT_CONFIG])
    summary = run_local_pipeline(cfg, args.output, verbose=args.verbose, k_values=args.sweep)
    if args.verbose:
        print(json.dumps(summary, indent=2))
    print("\n".join(summary_lines(summary, args.output)))
    return 0


def _sweep(text: str) -> list[int]:
    """``k=1,2,4,8`` → ``[1, 2, 4, 8]`` (an argparse type)."""
    key, sep, values = text.partition("=")
    if key.strip().lower() != "k" or not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected k=VALUES, e.g. k=1,2,4,8")
    return _int_list(values)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from e


class _LazyHelpParser(argparse.ArgumentParser):
    """A parser whose description can be made only when its help is shown (``describe``), so
    that building the command line imports nothing heavy (``kshot --help`` loads no torch)."""

    def __init__(self, *args: Any, describe: Callable[[], str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._describe = describe

    def format_help(self) -> str:
        if self._describe is not None:
            self.description = self._describe()
        return super().format_help()


def _ranking_description() -> str:
    from kshot.experiments.arms import ARMS

    return (
        "Train the supernet of every arm and seed (paired: the same split, ranked "
        "paths and BN images per seed), score paths with BN recalibration and compare with the "
        "ground truth (config key ground_truth): Kendall τ-a (Eq. 18) and τ-b, Spearman ρ, "
        "Pearson r, top-group τ (appendix C.1), λ statistics; mean, std and 95 % intervals over "
        "seeds, paired differences and the pre-registered verdict. Arms: "
        + "; ".join(f"{name}: {arm.what}" for name, arm in ARMS.items())
        + "."
    )


def _experiment(args: argparse.Namespace) -> int:
    from kshot.experiments.ranking import run_ranking_experiment

    report = run_ranking_experiment(
        config_from_args(args),
        args.arms,
        args.seeds,
        args.k,
        args.workdir,
        args.out,
        args.results,
        report_only=args.report_only,
    )
    print(json.dumps({k: report["summary"][k] for k in ("verdicts", "verdict")}, indent=2))
    return 0


def _vary(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,…`` of ``simplex-pilot --vary``: the key and its values (checked against the
    config before any work, by :func:`kshot.experiments.simplex_pilot.pilot_variants`)."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=V1,V2,…")
    return key.strip(), [v.strip() for v in values.split(",") if v.strip()]


def _pilot(args: argparse.Namespace) -> int:
    from kshot.experiments.simplex_pilot import run_simplex_pilot

    vary = args.vary or [("simplex_lr", [1e-3, 1e-2, 1e-1])]
    report = run_simplex_pilot(
        config_from_args(args), args.seed, vary, args.k, args.workdir, args.out
    )
    print(json.dumps({"chosen": report["chosen"]}, indent=2))
    return 0


def _code_gradients(args: argparse.Namespace) -> int:
    from kshot.experiments.code_gradients import run_code_gradients

    report = run_code_gradients(
        config_from_args(args), args.split, args.checkpoint, args.out, args.images
    )
    print(json.dumps(report["runs"], indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from kshot import storage
    from kshot.experiments.bench import HEADLINE, run_benchmarks

    result = run_benchmarks(
        quick=args.quick,
        device=args.device,
        sections=args.sections.split(","),
        on_section=lambda report: storage.write_json(args.out, report),
    )
    print(json.dumps({k: result[k] for k in HEADLINE}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=f"kshot {importlib.metadata.version(DISTRIBUTION)}"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    stage = sub.add_parser(
        "stage",
        help="run one stage of the pipeline",
        description="Run one stage on artifact URIs (local paths, gs://, s3:// or minio://).",
    )
    stage_sub = stage.add_subparsers(dest="name", required=True)
    for name in STAGES:
        module_doc = _module_doc(f"kshot.stages.{name}")
        p = stage_sub.add_parser(
            name,
            help=module_doc.splitlines()[0],
            description=module_doc,
            epilog=_artifact_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_args(p)
        p.add_argument(
            "--input",
            action="append",
            default=[],
            metavar="NAME=URI",
            help="an input artifact (see below); repeatable",
        )
        p.add_argument(
            "--output",
            action="append",
            default=[],
            metavar="NAME=URI",
            help="an output artifact (see below); repeatable",
        )
        p.add_argument(
            "--workers",
            type=_positive_int,
            default=1,
            help="run as this many local torchrun processes (gloo); 1: in this process",
        )
        p.add_argument(
            "--verbose",
            action="store_true",
            help="also print the stage's whole result as JSON (e.g. retrain's curves)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="remove the outputs (and only them) first and start over, even when they hold "
            "another run's work; without it such outputs are refused",
        )
        p.set_defaults(func=_stage)

    run = sub.add_parser(
        "run",
        help="run the whole pipeline",
        description="Run the K-shot NAS pipeline. --local runs the real KFP DAG "
        "through kfp.local's SubprocessRunner on this machine, heavy stages as "
        "local torchrun jobs; without --config it uses the offline default "
        "(digits, tiny supernet).",
    )
    run.add_argument("--local", action="store_true", help="run on this machine (required)")
    add_config_args(run)
    run.add_argument(
        "--output",
        default="runs/local",
        metavar="DIR",
        help="where artifacts, logs/ and summary.json go (a folder, gs://, s3:// or minio:// prefix)",
    )
    run.add_argument(
        "--sweep",
        type=_sweep,
        metavar="k=K1,K2,…",
        help="run the K-sweep pipeline instead, e.g. k=1,2,4,8: Kendall τ against K (Fig. 4)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="echo every step's log and kfp.local's own lines (default: one line per step start "
        "and end; the logs go to OUTPUT/logs)",
    )
    run.set_defaults(func=_run)

    experiment = sub.add_parser("experiment", help="experiments that reproduce the paper's tables")
    exp_sub = experiment.add_subparsers(
        dest="experiment", required=True, parser_class=_LazyHelpParser
    )
    ranking = exp_sub.add_parser(
        "ranking",
        help="K-shot against one-shot: ranking quality on NAS-Bench-201",
        describe=_ranking_description,
    )
    add_config_args(ranking)
    ranking.add_argument(
        "--arms",
        type=lambda text: [a.strip() for a in text.split(",") if a.strip()],
        default=["A", "B", "C"],
        help="arms in run order within a seed, e.g. A,B,C,C-iter,D,A-lr",
    )
    ranking.add_argument("--k", type=int, default=8, help="K of the arms with K slots")
    ranking.add_argument("--seeds", type=_int_list, default=[0], help="seeds, e.g. 0,1,2")
    ranking.add_argument(
        "--workdir", default="runs/ranking", help="the runs' artifacts (resumable)"
    )
    ranking.add_argument("--out", default="runs/ranking/report.json", help="the JSON report")
    ranking.add_argument(
        "--results",
        default=None,
        help="where each finished run's JSON and per-path CSV go (default: beside --out)",
    )
    ranking.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the report from the finished runs' records",
    )
    ranking.set_defaults(func=_experiment)
    pilot = exp_sub.add_parser(
        "simplex-pilot",
        help="choose the simplex-net's settings on a pilot seed (never by the ground truth)",
        description="Train arm C on a seed kept out of the reported ones, with the config and "
        "with one key changed at a time (--vary), and choose by the simplex-net's loss and how "
        "far its codes λ are from uniform and from one another.",
    )
    add_config_args(pilot)
    pilot.add_argument("--seed", type=int, default=100, help="the pilot seed")
    pilot.add_argument(
        "--vary",
        action="append",
        type=_vary,
        metavar="KEY=V1,V2,…",
        help="a config key and the values to try, one key changed at a time (repeatable; "
        "default simplex_lr=0.001,0.01,0.1)",
    )
    pilot.add_argument("--k", type=int, default=8, help="K")
    pilot.add_argument("--workdir", default="runs/ranking", help="the runs' artifacts")
    pilot.add_argument("--out", default="runs/ranking/pilot.json", help="the JSON report")
    pilot.set_defaults(func=_pilot)
    gradients = exp_sub.add_parser(
        "code-gradients",
        help="where the simplex-net's signal comes from: each path's ∂L/∂λ by layers",
        description="On trained K-shot supernets (nb201), each of 64 probe paths' gradient of its "
        "loss with respect to its code, through the layers every path shares and through its own "
        "operations, and how much of each is common to all paths.",
    )
    add_config_args(gradients)
    gradients.add_argument("--split", required=True, help="the runs' split JSON")
    gradients.add_argument(
        "--checkpoint", action="append", required=True, help="a trained checkpoint folder"
    )
    gradients.add_argument("--images", type=int, default=256, help="validation images")
    gradients.add_argument("--out", required=True, help="the JSON report")
    gradients.set_defaults(func=_code_gradients)

    bench = sub.add_parser(
        "bench",
        help="measure K-shot training and search speed against a plain network",
        description=_module_doc("kshot.experiments.bench"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a CPU")
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    bench.add_argument(
        "--out", default="bench.json", help="where the JSON goes (rewritten after each section)"
    )
    bench.add_argument(
        "--sections",
        default="training,search,ddp,mbv2",
        help="comma-separated parts to run, of training, search, ddp, mbv2",
    )
    bench.set_defaults(func=_bench)

    data = sub.add_parser("data", help="prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    shard = data_sub.add_parser(
        "shard",
        help="write a class-folder tree as a sharded dataset (tar shards plus an index)",
        description=_module_doc("kshot.data.shards"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shard.add_argument("source", help="class-folder tree: local folder or gs:// s3:// minio:// URI")
    shard.add_argument("dest", help="where the shards and index go: local folder or bucket prefix")
    shard.add_argument(
        "--shard-mb", type=int, default=128, help="close a shard before it passes this size (MiB)"
    )
    shard.add_argument(
        "--seed", type=int, default=0, help="seed of the order images are written in"
    )
    shard.set_defaults(func=_shard)

    config = sub.add_parser(
        "config",
        help="print the resolved configuration",
        description="Print the configuration that --config/--set resolve to.",
    )
    add_config_args(config)
    config.add_argument(
        "--help-keys",
        action="store_true",
        help="list every key with the value in force (the default, or what --config/--set "
        "make it), its meaning and the source of its default",
    )
    config.set_defaults(func=_config)

    _add_optional(sub, "kshot.pipeline.cli", "pipeline")
    _add_optional(sub, "kshot.launch.cli", "launch")
    return parser


def _shard(args: argparse.Namespace) -> int:
    from kshot.data.shards import write_shards

    if args.shard_mb < 1:
        raise CommandError(f"--shard-mb must be >= 1, got {args.shard_mb}")

    def progress(part: str, done: int, total: int) -> None:
        print(f"{part}: {done}/{total} images", file=sys.stderr)

    index = write_shards(
        args.source,
        args.dest,
        shard_bytes=args.shard_mb * 1024 * 1024,
        seed=args.seed,
        progress=progress,
    )
    print(
        json.dumps(
            {
                "dataset": args.dest,
                "train_images": len(index),
                "train_shards": len(index.shards),
                "classes": index.num_classes,
                "sha256": index.fingerprint(),
            }
        )
    )
    return 0


def _add_optional(sub: Any, module: str, name: str) -> None:
    """Sub-commands whose code lives beside the library (Kubeflow clients, launchers)."""
    try:
        mod = __import__(module, fromlist=["add_parser"])
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return
        raise
    mod.add_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _dispatch(build_parser().parse_args(argv))
        sys.stdout.flush()  # here, so that a closed pipe is met while it can still be handled
        return status
    except BrokenPipeError:
        return _closed_pipe()
    except SystemExit:  # --help and --version print, then exit through argparse
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _closed_pipe()
        raise


def _dispatch(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:
        raise
    except (ConfigError, CommandError, ValueError, OSError, LaunchError) as e:
        print(f"kshot {args.command}: error: {e}", file=sys.stderr)
        return 2


def _closed_pipe() -> int:
    """End quietly once the reader of stdout has gone (``kshot config --help-keys | head``).

    What is still buffered would fail again when the interpreter flushes stdout at exit, so
    stdout is pointed at the null device first (Python's documented recipe for SIGPIPE).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return CLOSED_PIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
