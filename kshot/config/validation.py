"""The rules a configuration's values obey, and the error that names a bad one.

A field's metadata (:mod:`kshot.config.schema`) states its own rules: ``choices``, bounds (``ge``,
``gt``, ``le``, ``lt``), a Kubernetes ``quantity`` or a ``label`` value; :func:`validate` applies
them and the rules between keys (``lr_min`` at most ``lr``, ``m`` dividing ``batch_size``, …), and
names the key and where its value came from, so that a bad value fails before any expensive work
starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kshot.config.schema import Config

__all__ = ["ConfigError", "validate", "is_quantity", "is_positive_quantity"]

# A Kubernetes resource quantity, as the API server's (and the Kubeflow CRDs') schemas spell it.
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# What a label value (and so a LocalQueue or WorkloadPriorityClass name given as one) may be.
_LABEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE_MAX = 63


def is_quantity(text: str) -> bool:
    """Whether ``text`` is a Kubernetes resource quantity."""
    return bool(_QUANTITY.match(text))


def is_positive_quantity(text: str) -> bool:
    """Whether ``text`` is a Kubernetes quantity above zero (``"2"``, ``"500m"``, ``"8Gi"``)."""
    match = _QUANTITY.match(text)
    return bool(match) and match.group(1) != "-" and float(match.group(2)) > 0


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and where the value came from."""


def validate(cfg: Config, sources: Mapping[str, str]) -> None:
    """Check every value of ``cfg`` against its field's rules and the rules between keys.

    Args:
        cfg: the configuration.
        sources: where each key's value came from (file, ``--set``, pipeline parameter); a key
            not in it came from the defaults.

    Raises:
        ConfigError: the first bad value, naming its key and source.
    """

    def fail(key: str, why: str) -> None:
        src = sources.get(key, "defaults")
        raise ConfigError(f"config key {key!r} from {src}: {getattr(cfg, key)!r} {why}")

    for f in dataclasses.fields(cfg):
        name = f.name
        v = getattr(cfg, name)
        md = f.metadata
        if any(
            isinstance(x, float) and not math.isfinite(x)
            for x in (v if isinstance(v, list) else [v])
        ):
            fail(name, "must be a finite number")
        if "choices" in md and v not in md["choices"]:
            fail(name, f"is not one of {', '.join(md['choices'])}")
        if "ge" in md and v < md["ge"]:
            fail(name, f"must be >= {md['ge']}")
        if "gt" in md and v <= md["gt"]:
            fail(name, f"must be > {md['gt']}")
        if "le" in md and v > md["le"]:
            fail(name, f"must be <= {md['le']}")
        if "lt" in md and v >= md["lt"]:
            fail(name, f"must be < {md['lt']}")
        if md.get("quantity") and not is_positive_quantity(v):
            fail(name, "is not a positive Kubernetes quantity (e.g. '4', '500m', '16Gi')")
        if md.get("label") and v and not (len(v) <= _LABEL_VALUE_MAX and _LABEL_NAME.match(v)):
            fail(
                name,
                f"is not a name a label can hold ({_LABEL_VALUE_MAX} characters at most: lower "
                "case letters, digits, '-' and '.', starting and ending with a letter or digit)",
            )
    if cfg.lr_min > cfg.lr:
        fail("lr_min", f"exceeds lr = {cfg.lr}: the cosine schedule anneals from lr down to it")
    if cfg.warmup_epochs > cfg.epochs:
        fail("warmup_epochs", f"exceeds epochs = {cfg.epochs} (epochs counts the warmup)")
    if cfg.compile and cfg.search_space != "nb201":
        fail("compile", f"applies to search_space nb201 only, not {cfg.search_space!r}")
    if cfg.lambda_mode == "learned" and cfg.k > 1 and cfg.batch_size % cfg.m:
        fail(
            "m",
            f"does not divide batch_size = {cfg.batch_size}: each of the m paths of a "
            "simplex-net step needs b/m images",
        )
    if not cfg.dataset.strip():
        fail("dataset", "is empty: name a dataset ('digits', a local path or gs:// URI)")
    if cfg.resolution % 4:
        fail("resolution", "must be a multiple of 4")
    if cfg.data_loading == "stream" and not cfg.resolution:
        fail(
            "data_loading",
            "needs config key 'resolution' (e.g. 224): streamed images are cropped to it",
        )
    if cfg.search_space == "mbv2" and cfg.channel_search and cfg.m < 2 and cfg.alpha > 0:
        fail("m", "must be >= 2 for r_c, which compares the m paths of a simplex-net step")
    if cfg.parents > cfg.population:
        fail("parents", f"exceeds population = {cfg.population}")
    if cfg.rank_paths == 1:
        fail("rank_paths", "must be 0 (all) or at least 2: a ranking needs 2 paths")
    if any(n < 1 for n in cfg.top_n):
        fail("top_n", "must hold positive group sizes")
    if cfg.priority_class and not cfg.queue_name:
        fail("priority_class", "orders jobs in a Kueue queue: set queue_name too")
