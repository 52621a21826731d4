"""Checkpoints of the supernet stages: one folder URI, one complete file per save.

A checkpoint folder holds ``ckpt-e{epoch:04d}-s{step:08d}.pt`` files, each written atomically through
:mod:`kshot.storage`, so a killed worker never leaves a truncated file under a final name. Loading
takes the newest file that loads; a damaged newest one is reported and the previous one is used.
Files are read with ``torch.load(weights_only=True)`` (:func:`kshot.storage.load_torch`): tensors
and plain data only; a file that would run code when loaded is refused, never run.
Every checkpoint records what it was trained as (:func:`identity_of`: space, K, C, N, classes, the
split and the dataset) so that a mismatch with the run's configuration is caught before training
resumes, and the config keys its weights follow from (:func:`run_keys`), so that a run's output
folder is resumed only by the same run.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, TypeVar

from kshot import storage
from kshot.config import Config, result_keys
from kshot.spaces import space_class
from kshot.train.run_data import TrainData

__all__ = [
    "CheckpointError",
    "checkpoint_name",
    "list_checkpoints",
    "save_checkpoint",
    "load_latest",
    "check_identity",
    "check_same_run",
    "identity_of",
    "run_keys",
]

_U = TypeVar("_U", str, storage.Uri)
_NAME = re.compile(r"ckpt-e(\d{4,})-s(\d{8,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or from another configuration."""


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:08d}.pt"


def list_checkpoints(folder: _U) -> list[_U]:
    """Checkpoint URIs under ``folder``, oldest first (text or :class:`~kshot.storage.Uri`, as
    ``folder`` is given); none when the folder does not exist."""
    found = []
    for uri in storage.list_uris(folder):
        m = _NAME.search(str(uri))
        if m:
            found.append(((int(m.group(1)), int(m.group(2))), uri))
    return [uri for _, uri in sorted(found, key=lambda pair: pair[0])]


def save_checkpoint(
    folder: str | storage.Uri, state: dict[str, Any], keep: int = 2, rotate: bool = True
) -> str:
    """Write ``state`` (which must hold ``epoch`` and ``step``) and, with ``rotate``, drop all but
    the ``keep`` newest. A writer whose folder also holds checkpoints it did not write (an input's)
    passes ``rotate=False``.

    On an object store a save is one upload (its name is new: no version to read first), one
    listing and one delete per dropped checkpoint. Temporary files that a writer killed mid-save
    left in a local folder are removed after the save: only this folder's single writer (rank 0)
    saves there, so every one still there belongs to a dead process.
    """
    folder = storage.Uri.parse(folder)
    uri = folder.join(checkpoint_name(state["epoch"], state["step"]))
    storage.save_torch(state, uri, new=True)
    storage.remove_partials(folder, "ckpt-")
    if rotate:
        for old in list_checkpoints(folder)[:-keep]:
            storage.delete(old, is_object=True)
    return str(uri)


def load_latest(folder: str, required: bool = True) -> dict[str, Any] | None:
    """The newest checkpoint under ``folder`` that loads, or None (``required=False``) if none does."""
    uris = list_checkpoints(folder)
    for uri in reversed(uris):
        try:
            state = storage.load_torch(uri)
        except storage.UnsafeFileError as e:  # planted, not damaged: no fallback hides it
            raise CheckpointError(str(e)) from None
        except Exception as e:  # a truncated or corrupt file: fall back to the previous one
            warnings.warn(
                f"checkpoint {uri} is damaged ({type(e).__name__}: {e}); using the previous one",
                stacklevel=2,
            )
            continue
        _check_structure(state, uri)
        state["uri"] = uri
        return state
    if required:
        why = "holds no checkpoint" if not uris else "holds only damaged checkpoints"
        raise CheckpointError(f"checkpoint folder {folder!r} {why}")
    return None


# What every checkpoint of the supernet stages holds (``Trainer.state_dict``), with its type.
_REQUIRED = {
    "identity": dict,
    "epoch": int,
    "step": int,
    "supernet": dict,
    "simplex": dict,
    "optimizer": dict,
    "simplex_optimizer": dict,
    "scheduler": dict,
    "history": dict,
    "epoch_sums": dict,
}


def _check_structure(state: Any, uri: str) -> None:
    """Fail, naming the file, when a loadable torch file is not a checkpoint of these stages."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {uri} holds a {type(state).__name__}, not a checkpoint's dict "
            f"(with {', '.join(_REQUIRED)})"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {uri} lacks {', '.join(map(repr, missing))}")
    wrong = [
        f"{key!r} is a {type(state[key]).__name__}, not a {kind.__name__}"
        for key, kind in _REQUIRED.items()
        if not isinstance(state[key], kind) or isinstance(state[key], bool)
    ]
    if wrong:
        raise CheckpointError(f"checkpoint {uri}: {'; '.join(wrong)}")


def check_identity(state: dict[str, Any], expected: dict[str, Any], uri: str) -> None:
    """Fail if the checkpoint was trained with another space / K / shape than ``expected``.

    A key the checkpoint does not record (it was written before the key joined the identity) is
    not compared: loading its tensors still catches a shape that differs."""
    found = state.get("identity")
    if not isinstance(found, dict):
        raise CheckpointError(f"checkpoint {uri} records no identity: it is not a K-shot run's")
    diffs = [
        _CONTENT_KEYS.get(k) or f"{k} = {found[k]!r} (config: {v!r})"
        for k, v in expected.items()
        if k in found and found[k] != v
    ]
    if diffs:
        raise CheckpointError(f"checkpoint {uri} does not match the config: {'; '.join(diffs)}")


# Identity entries that are digests of content, and what a difference means.
_CONTENT_KEYS = {
    "split": "it was trained on another split (input split): this split's validation images may "
    "be among its training images",
    "dataset": "it was trained on other images (config key 'dataset' names different content)",
}


def check_same_run(state: dict[str, Any], expected: dict[str, Any], uri: str) -> None:
    """Fail if the checkpoint ``uri``, found in a run's own output folder, was trained by a run
    with other result-affecting config keys (:func:`run_keys`): resuming it
    would hand that run's weights on as this run's. Keys it does not record are not compared."""
    found = state.get("run")
    if not isinstance(found, dict):
        return
    diffs = [
        f"{k} = {found[k]!r} there, {v!r} in this run"
        for k, v in expected.items()
        if k in found and found[k] != v
    ]
    if diffs:
        raise CheckpointError(
            f"output checkpoint folder holds {uri}, another run's work; it differs in: "
            f"{'; '.join(diffs)}. Give this run another output, or pass --overwrite to remove it "
            "and start over"
        )


def identity_of(cfg: Config, data: TrainData) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed or scored under ``cfg``: the space, K, the
    network's shape and (mbv2) whether widths are searched, the simplex-net's size and inputs, the
    image resolution, the split and the dataset. Keyed by config key where there is one, so that
    a mismatch names the key to change."""
    return {
        "search_space": cfg.search_space,
        "k": cfg.k,
        **space_class(cfg.search_space).identity(cfg),
        "simplex_hidden": cfg.simplex_hidden,
        "resolution": data.resolution,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "split": data.split_digest,
        "dataset": data.dataset_digest,
    }


def run_keys(cfg: Config, alternating: bool) -> dict[str, Any]:
    """The config keys a checkpoint's weights follow from (:func:`kshot.config.result_keys`): the
    warmup stage's, and once alternating training has begun (``alternating``) the train stage's
    too. A checkpoint folder is resumed only by a run equal in all of them."""
    values = cfg.to_dict()
    stages = ("warmup", "train") if alternating else ("warmup",)
    return {key: values[key] for key in result_keys(*stages)}
