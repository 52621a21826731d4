"""``kshot run --local``: the real KFP DAG on this machine, through kfp.local's SubprocessRunner.

Every component runs as a subprocess of this Python (no venv, no network); heavy stages run as
local ``torchrun`` jobs, so the local run exercises the distributed code path. Artifacts land under
``OUTPUT/artifacts``, each step's log under ``OUTPUT/logs`` (the console shows one line per step
start and end, see :mod:`kshot.pipeline.console`); the run summary goes to ``OUTPUT/summary.json``.
With ``k_values`` the K sweep (:mod:`kshot.pipeline.sweep`) runs instead and the summary holds τ, ρ
and r per K. An object-store output keeps kfp.local's scratch in a local temporary folder
and uploads the artifacts, logs, report and summary after.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import re
import shutil
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kshot import storage
from kshot.components.runtime import build_config, pipeline_arguments
from kshot.config import Config
from kshot.stages import CORRELATION_LABELS

__all__ = [
    "DEFAULT_CONFIG",
    "LocalRunError",
    "pipeline_arguments",
    "publish",
    "run_local_pipeline",
    "summary_lines",
]

DEFAULT_CONFIG: str = str(importlib.resources.files("kshot.configs") / "digits-tiny.yaml")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class LocalRunError(ValueError):
    """A step of the local pipeline run failed; its log above says why."""


@contextlib.contextmanager
def _local_folder(output: str) -> Iterator[Path]:
    """``output`` itself when local; a temporary folder (removed after) for a bucket prefix."""
    if storage.Uri.parse(output).is_remote:
        with tempfile.TemporaryDirectory(prefix="kshot-run-") as scratch:
            yield Path(scratch)
    else:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string under the folder ``old`` moved under the URI ``new``."""
    if isinstance(value, dict):
        return {key: _rebase(item, old, new) for key, item in value.items()}
    if isinstance(value, str) and value.startswith(old + "/"):
        return storage.join(new, value[len(old) + 1 :])
    return value


def publish(summary: dict[str, Any], artifacts: Path, output: str) -> dict[str, Any]:
    """Write ``summary.json`` under ``output``; for a bucket output, upload ``artifacts`` first.

    Args:
        summary: the run summary; paths in it under ``artifacts`` are rewritten to their URIs.
        artifacts: the local folder of the run's artifacts.
        output: the run's output folder, gs://, s3:// or minio:// prefix.

    Returns:
        The summary as written.
    """
    if storage.Uri.parse(output).is_remote:
        artifacts_uri = storage.join(output, "artifacts")
        storage.upload_dir(artifacts, artifacts_uri)
        summary = _rebase(summary, str(artifacts), artifacts_uri)
    storage.write_json(storage.join(output, "summary.json"), summary)
    return summary


def run_local_pipeline(
    cfg: Config,
    output: str,
    verbose: bool = False,
    k_values: list[int] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline (or the K sweep) locally on ``cfg``; write and return its summary.

    Args:
        cfg: the run configuration (e.g. :data:`DEFAULT_CONFIG` with ``--set`` overrides).
        output: a folder or object-store prefix for ``artifacts/``, ``logs/``,
            ``report/`` and ``summary.json``.
        verbose: echo every line of kfp.local and of the steps, not just one per step start / end.
        k_values: run the K sweep over these K (the config's ``k`` is then unused).

    Returns:
        The summary: k, best_arch, best_supernet_accuracy, best_flops, retrained_test_accuracy,
        kendall_tau_a, kendall_tau_b, spearman_rho, pearson_r, n_paths, the reports' paths and the
        wall time; for the sweep: k_values, the correlations of every K (``per_k``) and the
        report's path.

    Raises:
        LocalRunError: a step failed.
        ValueError, OSError: nothing could be written at ``output`` (checked before any step).
    """
    from kfp import local

    from kshot.pipeline.console import StepConsole

    if k_values is not None:
        _check_k_values(cfg, k_values)
    else:
        build_config(pipeline_arguments(cfg))  # what the config step refuses, refused now
    storage.check_writable(output, folder=True)  # a bad output fails now, not after the DAG
    started = time.monotonic()
    with _local_folder(output) as folder, warnings.catch_warnings():
        # kfp warns that the components' base image is not this environment: it is, by design
        warnings.filterwarnings(
            "ignore", message=".*custom or non-Python base image", category=RuntimeWarning
        )
        # nor can a local run honour the steps' cluster sizes (kshot.pipeline.platform)
        warnings.filterwarnings(
            "ignore",
            message=r"Task .*have no effect in the current local runner",
            category=UserWarning,
        )
        artifacts, logs = (folder / "artifacts").resolve(), (folder / "logs").resolve()
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(artifacts))
        console = StepConsole(sys.stdout, logs, verbose)
        try:
            with contextlib.redirect_stdout(console):  # kfp.local prints to sys.stdout
                run = _pipeline_run(cfg, k_values)
        except RuntimeError as error:
            message = _ANSI_ESCAPE.sub("", str(error))
            raise LocalRunError(f"{message}; the steps' logs are in {logs}") from error
        finally:
            console.close()
            if storage.Uri.parse(output).is_remote:
                storage.upload_dir(logs, storage.join(output, "logs"))
        summary = json.loads(Path(run.output.path).read_text())
        summary["wall_time_s"] = round(time.monotonic() - started, 1)
        write_report(summary, folder / "report")
        if storage.Uri.parse(output).is_remote:
            storage.upload_dir(folder / "report", storage.join(output, "report"))
            summary["logs"] = storage.join(output, "logs")
            summary["report"] = storage.join(output, "report", "index.html")
        else:
            summary["logs"] = str(logs)
            summary["report"] = str((folder / "report" / "index.html").resolve())
        return publish(summary, artifacts, output)


def write_report(summary: dict[str, Any], folder: Path) -> None:
    """The run's HTML pages as ``folder/NAME.html`` and an ``index.html`` that links them by
    relative path above the summary: a folder to open in a browser, move or serve as it is."""
    from kshot import report

    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name, uri in summary.get("reports", {}).items():
        if name == "summary_markdown" or not Path(uri).is_file():
            continue
        shutil.copyfile(uri, folder / f"{name}.html")
        links.append((name.replace("_", " "), f"{name}.html"))
    shown = {key: value for key, value in summary.items() if key != "reports"}
    text = report.markdown_summary(shown)
    title = "K-shot NAS: K sweep" if "per_k" in summary else "K-shot NAS run"
    (folder / "index.html").write_text(report.index_page(title, links, text), encoding="utf-8")


def _check_k_values(cfg: Config, k_values: list[int]) -> None:
    """Every K of a sweep makes a valid config, none repeats: refused before any step runs."""
    from kshot.config import ConfigError, load_config

    if not k_values:
        raise ConfigError("--sweep: no value of K given (e.g. --sweep k=1,2,4,8)")
    if len(set(k_values)) < len(k_values):
        raise ConfigError(f"--sweep k={','.join(map(str, k_values))}: repeats a K")
    for k in k_values:
        run = load_config(cfg.to_dict(), {"k": k}, sources=["the run config", f"--sweep k={k}"])
        build_config(pipeline_arguments(run))


def _pipeline_run(cfg: Config, k_values: list[int] | None) -> Any:
    """The finished kfp.local run of the pipeline, or of the K sweep with ``k_values``."""
    arguments = pipeline_arguments(cfg)
    if k_values is None:
        from kshot.pipeline.pipeline import kshot_nas

        return kshot_nas(**arguments)
    from kshot.pipeline.sweep import kshot_k_sweep

    del arguments["k"]
    return kshot_k_sweep(k_values=list(k_values), **arguments)


def _figure(value: Any, fmt: str = ".3f", suffix: str = "") -> str:
    return f"{value:{fmt}}{suffix}" if isinstance(value, (int, float)) else "n/a"


def summary_lines(summary: dict[str, Any], output: str) -> list[str]:
    """The lines ``kshot run --local`` ends with: what a person wants from the run's summary."""
    correlations = ", ".join(
        f"{label} {_figure(summary.get(key))}" for key, label in CORRELATION_LABELS
    )
    report = storage.join(output, "summary.json")
    if "per_k" in summary:
        lines = ["Kendall τ against K (τ-a, ρ, r of the supernet's ranking):"]
        lines += [
            f"  K = {row['k']:>2}: τ-a {_figure(row.get('kendall_tau_a'))}, "
            f"ρ {_figure(row.get('spearman_rho'))}, r {_figure(row.get('pearson_r'))}"
            f" over {row.get('n_paths', '?')} paths"
            for row in summary["per_k"]
        ]
        lines.append(f"report: {summary['report']}")
        lines.append(
            f"summary: {report} ({summary['wall_time_s']:.0f} s, logs in {summary['logs']})"
        )
        return lines
    lines = [
        f"best path (K = {summary['k']}): {summary['best_arch']}",
        f"  supernet accuracy {_figure(summary['best_supernet_accuracy'], '.2f', ' %')} "
        f"(after BN recalibration), {_figure(summary['best_flops'], '.3g')} MFLOPs",
        f"  retrained test accuracy {_figure(summary['retrained_test_accuracy'], '.2f', ' %')}",
    ]
    if "best_standalone_rank" in summary:
        rank = summary["best_standalone_rank"]
        shown = f"{rank['rank']} of {rank['of']}" if rank else "n/a (not trained alike)"
        lines.append(f"  rank among the stand-alone sample: {shown}")
        if rank and rank.get("reading"):  # what the rank means against the sample's noise
            lines += textwrap.wrap(
                rank["reading"],
                width=100,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
    lines.append(f"ranking of {summary['n_paths']} paths against {summary['ground_truth']}:")
    lines.append(f"  {correlations}")
    if summary.get("against_baselines"):
        sizes = ", ".join(
            f"{label} {_figure(summary.get(f'params_{key}'))}" for key, label in CORRELATION_LABELS
        )
        lines.append(f"  counting parameters on the same paths: {sizes}")
        lines.append(f"  {summary['against_baselines']}")
    lines.append(f"report: {summary['report']}")
    lines.append(f"summary: {report} ({summary['wall_time_s']:.0f} s, logs in {summary['logs']})")
    return lines
