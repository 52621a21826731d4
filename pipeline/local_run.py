"""``kshot run --local``: the real KFP DAG on this machine, through kfp.local's SubprocessRunner.

Every component runs as a subprocess of this Python (no venv, no network); heavy stages run as
local ``torchrun`` jobs, so the local run exercises the distributed code path. Artifacts land under
``OUTPUT/artifacts``; the run summary goes to ``OUTPUT/summary.json``. A ``gs://`` or ``s3://``
output keeps kfp.local's scratch in a local temporary folder and uploads the artifacts and the
summary after.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kshot import storage
from kshot.components.runtime import PIPELINE_CONFIG_KEYS, job_image
from kshot.config import Config

__all__ = [
    "DEFAULT_CONFIG",
    "LocalRunError",
    "pipeline_arguments",
    "publish",
    "run_local_pipeline",
]

DEFAULT_CONFIG: str = str(importlib.resources.files("kshot.configs") / "digits-tiny.yaml")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class LocalRunError(ValueError):
    """A step of the local pipeline run failed; its log above says why."""


def pipeline_arguments(cfg: Config, launcher: str = "local", image: str = "") -> dict[str, Any]:
    """The pipeline's arguments for ``cfg``: its own parameters, other changed keys in extra_config.

    Args:
        cfg: the run configuration.
        launcher: the launch backend of the heavy stages.
        image: their worker image (default: the jobs' image, :func:`job_image`).

    Returns:
        Keyword arguments of :func:`kshot.pipeline.pipeline.kshot_nas`.
    """
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


@contextlib.contextmanager
def _local_folder(output: str) -> Iterator[Path]:
    """``output`` itself when local; a temporary folder (removed after) for a bucket prefix."""
    if storage.is_remote(output):
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
        output: the run's output folder, gs:// or s3:// prefix.

    Returns:
        The summary as written.
    """
    if storage.is_remote(output):
        artifacts_uri = storage.join(output, "artifacts")
        storage.upload_dir(artifacts, artifacts_uri)
        summary = _rebase(summary, str(artifacts), artifacts_uri)
    storage.write_json(storage.join(output, "summary.json"), summary)
    return summary


def run_local_pipeline(cfg: Config, output: str) -> dict[str, Any]:
    """Run the whole pipeline locally on ``cfg``; write and return the run summary.

    Args:
        cfg: the run configuration (e.g. :data:`DEFAULT_CONFIG` with ``--set`` overrides).
        output: a folder, ``gs://`` or ``s3://`` prefix for ``artifacts/`` and ``summary.json``.

    Returns:
        The summary: k, best_arch, best_accuracy, best_flops, retrained_test_accuracy,
        kendall_tau_a, kendall_tau_b, spearman_rho, pearson_r, n_paths, the reports' paths and the
        wall time.

    Raises:
        LocalRunError: a step failed.
        ValueError, OSError: nothing could be written at ``output`` (checked before any step).
    """
    from kfp import local

    from kshot.pipeline.pipeline import kshot_nas

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
        artifacts = (folder / "artifacts").resolve()
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(artifacts))
        try:
            run = kshot_nas(**pipeline_arguments(cfg))
        except RuntimeError as error:
            raise LocalRunError(_ANSI_ESCAPE.sub("", str(error))) from error
        summary = json.loads(Path(run.output.path).read_text())
        summary["wall_time_s"] = round(time.monotonic() - started, 1)
        return publish(summary, artifacts, output)
