"""The exported stand-alone model of a path: one torch file that rebuilds a plain ``torch.nn`` module.

The file holds the search space, the path, the network shape, the input normalisation and the
state dict: tensors and plain data only, read back with ``torch.load(weights_only=True)``. :func:`load_model` rebuilds the network from :mod:`kshot.spaces` alone (no supernet,
simplex-net or trainer), ready for inference::

    model, meta = load_model("gs://bucket/run/model.pt")
    logits = model(normalize(images, meta["mean"], meta["std"]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kshot import storage
from kshot.spaces import SPACES

__all__ = ["save_model", "load_model"]


def save_model(
    uri: str,
    model: nn.Module,
    *,
    search_space: str,
    arch: str,
    shape: dict[str, Any],
    mean: list[float],
    std: list[float],
) -> None:
    """Write ``model`` (the stand-alone network of ``arch``) and what rebuilding it needs."""
    storage.save_torch(
        {
            "search_space": search_space,
            "arch": arch,
            "shape": dict(shape),
            "mean": list(mean),
            "std": list(std),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        uri,
    )


def load_model(
    uri: str, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The plain network saved at ``uri`` in eval mode, and its metadata (arch, shape, mean, std).

    Raises:
        ValueError: naming the URI when the file is not a model this project wrote.
    """
    saved = storage.load_torch(uri, map_location=map_location)
    keys = ("search_space", "arch", "shape", "state_dict")
    missing = [k for k in keys if k not in saved] if isinstance(saved, dict) else list(keys)
    if missing:
        raise ValueError(f"{uri!r} is not an exported kshot model (missing {missing})")
    if saved["search_space"] not in SPACES:
        raise ValueError(f"{uri!r}: unknown search space {saved['search_space']!r}")
    try:
        model = SPACES[saved["search_space"]](shape=saved["shape"]).build(saved["arch"])
        model.load_state_dict(saved["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{uri!r}: cannot rebuild the saved model: {e}") from None
    return model.eval(), {k: v for k, v in saved.items() if k != "state_dict"}
