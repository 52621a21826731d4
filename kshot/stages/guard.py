"""What a stage may do to its outputs: one run's work per output, inputs read-only, one writer.

Around every stage (:func:`kshot.stages.run_stage`), before any work:

* **Inputs are read-only.** An output equal to an input, inside one, or holding one is refused.
* **One writer per output.** The main rank holds a lease on each output (:mod:`kshot.lease`)
  while the stage runs; a second writer is refused with the holder's host, pid and start time.
* **Run identity.** A finished stage leaves a run record beside each output
  (``.<name>.kshot-run.json``): the config keys that change the stage's result
  (:func:`kshot.config.result_keys`), the digests of its inputs (the split, the checkpoint, the
  search results …) and the stage's result. An output whose record differs from this run is
  refused, naming the keys that differ; a rerun of the same run finds every record equal and
  reports the recorded result without work. An output file without a record was written by no
  kshot run that finished (or by none at all): it is refused too, rather than replaced unread.
  ``overwrite`` (``kshot stage … --overwrite``)
  removes the outputs and their records first: the run starts over. A checkpoint folder an
  unfinished run left is resumed only by the same run: checkpoints record the same keys
  (:func:`kshot.train.checkpoint.identity_of`).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from kshot import distributed as dist
from kshot import lease, storage
from kshot.config import Config, result_keys
from kshot.stages import FOLDER_ARTIFACTS

__all__ = [
    "RunMismatch",
    "run_guarded",
    "run_identity",
    "record_uri",
    "check_read_only",
    "check_recorded",
]

_RECORD_SUFFIX = ".kshot-run.json"


class RunMismatch(ValueError):
    """An output holds another run's work; the message names the keys that differ."""


def record_uri(output: str) -> str:
    """The run record of ``output``: ``.<name>.kshot-run.json`` beside it."""
    head, _, name = output.rstrip("/").rpartition("/")
    record = f".{name}{_RECORD_SUFFIX}"
    return f"{head}/{record}" if head else record


def _normalised(uri: str) -> str:
    return storage.Uri.parse(uri).canonical()


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_read_only(stage: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> None:
    """Refuse an output that is an input, lies inside one, or holds one.

    Raises:
        ValueError: naming both artifacts.
    """
    for out_name, out_uri in outputs.items():
        out = _normalised(out_uri)
        for in_name, in_uri in inputs.items():
            src = _normalised(in_uri)
            if _within(out, src) or _within(src, out):
                how = "is" if out == src else "lies inside" if _within(out, src) else "holds"
                raise ValueError(
                    f"stage {stage!r}: output {out_name}={out_uri!r} {how} input "
                    f"{in_name}={in_uri!r}; inputs are read-only: give the output its own URI"
                )


def run_identity(stage: str, cfg: Config, inputs: Mapping[str, str]) -> dict[str, Any]:
    """What makes a run of ``stage`` the same run: its result-affecting config keys and the
    digests of its inputs (``input <name>``)."""
    values = cfg.to_dict()
    identity: dict[str, Any] = {key: values[key] for key in result_keys(stage)}
    for name, uri in sorted(inputs.items()):
        try:
            identity[f"input {name}"] = storage.digest(uri)
        except FileNotFoundError:  # the stage itself says what is missing, as it reads it
            identity[f"input {name}"] = None
    return identity


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(found.keys() | expected.keys()):
        if found.get(key) == expected.get(key):
            continue
        if key.startswith("input "):
            diffs.append(f"{key} (its content differs)")
        else:
            diffs.append(f"{key} = {found.get(key)!r} there, {expected.get(key)!r} in this run")
    return diffs


def check_recorded(outputs: Mapping[str, str]) -> None:
    """Refuse an output file that exists without a run record beside it: no kshot run finished
    writing it, so replacing it could destroy a file that is not a run's. A folder output
    (:data:`kshot.stages.FOLDER_ARTIFACTS`: checkpoints) is left to the trainer, which resumes
    only its own run's checkpoints; KFP makes only an output artifact's parent folder, so its
    outputs are never refused.

    Raises:
        RunMismatch: naming the output, its URI and where its record would be.
    """
    for name, uri in sorted(outputs.items()):
        if name in FOLDER_ARTIFACTS or not storage.exists(uri):
            continue
        record_at = record_uri(uri)
        if not storage.exists(record_at):
            raise RunMismatch(
                f"output {name}={uri!r} already exists and has no run record ({record_at}): no "
                "kshot run finished writing it. Give this run another output, or pass "
                "--overwrite to replace it"
            )


def _finished_result(
    stage: str, outputs: Mapping[str, str], identity: Mapping[str, Any]
) -> tuple[bool, Any]:
    """(True, recorded result) when every output holds this run's finished work, else (False,
    None); refuses an output whose record is another run's."""
    results = []
    for name, uri in sorted(outputs.items()):
        record_at = record_uri(uri)
        if not storage.exists(record_at):
            results.append(None)
            continue
        record = storage.read_json(record_at)
        found = record.get("identity") if isinstance(record, dict) else None
        if not isinstance(found, dict) or record.get("stage") != stage:
            raise RunMismatch(
                f"output {name}={uri!r} holds the work of another stage or an unreadable run "
                f"record ({record_at}): give this run another output, or pass --overwrite to "
                "remove it and start over"
            )
        diffs = _differences(found, identity)
        if diffs:
            raise RunMismatch(
                f"output {name}={uri!r} holds another run's {stage} result; it differs in: "
                f"{'; '.join(diffs)}. Give this run another output, or pass --overwrite to "
                "remove it and start over"
            )
        results.append(record)
    finished = [
        record is not None and storage.exists(outputs[name])
        for record, name in zip(results, sorted(outputs), strict=True)
    ]
    if finished and all(finished):
        return True, results[0]["result"]
    return False, None


def _remove(outputs: Mapping[str, str]) -> None:
    for uri in outputs.values():
        for target in (record_uri(uri), uri):
            if storage.exists(target):
                storage.delete(target)


def run_guarded(
    stage: str,
    cfg: Config,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    work: Callable[[], Any],
    overwrite: bool = False,
) -> Any:
    """Run ``work`` (the stage) under the rules of this module; its result, or the recorded one
    of the same run finished before.

    Raises:
        ValueError: an output overlaps an input.
        RunMismatch: an output holds another run's work (and ``overwrite`` is off).
        kshot.lease.LeaseHeld: another writer holds an output.
    """
    check_read_only(stage, inputs, outputs)
    if not dist.is_main():  # rank 0 decides; the others follow (and never write)
        done, result = dist.broadcast_object((False, None))
        return result if done else work()
    with lease.hold(outputs.values(), stage):
        identity = run_identity(stage, cfg, inputs)
        if overwrite:
            _remove(outputs)
            done, result = False, None
        else:
            check_recorded(outputs)
            done, result = _finished_result(stage, outputs, identity)
        dist.broadcast_object((done, result))
        if done:
            print(
                f"kshot: stage {stage!r} already finished this run into "
                f"{', '.join(sorted(outputs.values()))}; reporting its result",
                file=sys.stderr,
            )
            return result
        result = work()
        recorded = json.loads(json.dumps(result, default=str))
        for uri in outputs.values():
            if storage.exists(uri):
                with warnings.catch_warnings():  # the stage warned of NaN metrics already
                    warnings.simplefilter("ignore", UserWarning)
                    storage.write_json(
                        record_uri(uri), {"stage": stage, "identity": identity, "result": recorded}
                    )
        return result
