"""Building a :class:`~kshot.config.schema.Config` from its sources: YAML files (local, object
storage or a shipped config's name), ``--set key=value`` overrides and pipeline parameters, applied
in layers, later winning.

Each value is converted to its field's type (a string from ``--set`` is read as YAML), an unknown
key is refused with the closest key's name, the result is validated
(:func:`kshot.config.validation.validate`) naming each bad value's key and source, and keys the
chosen search space ignores are warned about. A YAML mapping that gives a key twice is refused
rather than read as its last value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.resources
import os
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from kshot.config.schema import FIELDS, Config
from kshot.config.validation import ConfigError, validate

__all__ = [
    "load_config",
    "read_config_file",
    "resolve_config_file",
    "shipped_configs",
    "parse_overrides",
    "add_config_args",
    "config_from_args",
]


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the type of field ``key``; strings (from --set) are parsed as YAML."""
    hint = typing.get_type_hints(Config)[key]
    if isinstance(value, str) and hint is not str:
        value = yaml.safe_load(value) if value.strip() else value
    origin = typing.get_origin(hint)
    bad = ConfigError(f"config key {key!r} from {source}: {value!r} is not a valid {_name(hint)}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_scalar(item, v, bad) for v in value]
    return _scalar(hint, value, bad)


def _scalar(hint: Any, value: Any, bad: ConfigError) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    raise TypeError(hint)


def _name(hint: Any) -> str:
    if isinstance(hint, types.GenericAlias):
        return str(hint)
    return getattr(hint, "__name__", str(hint))


def parse_overrides(pairs: Iterable[str], source: str = "--set") -> dict[str, str]:
    """``["k=4", "epochs=2"]`` → ``{"k": "4", "epochs": "2"}``; values stay strings (YAML-parsed later)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source} {pair!r}: expected key=value")
        out[key.strip()] = value
    return out


class _DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice (PyYAML would keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key {key!r} is given twice (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def shipped_configs() -> list[str]:
    """The names of the configs packaged in ``kshot/configs`` (``digits-tiny``, …), sorted."""
    files = importlib.resources.files("kshot.configs").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def resolve_config_file(value: str, source: str = "--config") -> str:
    """The path or URI of the config file that ``value`` names.

    A URI (``gs://``, ``s3://``, ``minio://``) or an existing local file is itself; otherwise a
    shipped config's name (``digits-tiny``, or ``digits-tiny.yaml``) is its packaged file, so that
    one command reads the same file in a clone, an installed package and the images.

    Raises:
        ConfigError: ``value`` is neither, naming it, ``source`` and the shipped names.
    """
    if "://" in value or os.path.exists(value):
        return value
    shipped = shipped_configs()
    name = value.removesuffix(".yaml")
    if name in shipped:
        return str(importlib.resources.files("kshot.configs") / f"{name}.yaml")
    stem = os.path.basename(name)
    hint = f" (did you mean {stem!r}?)" if stem in shipped else ""
    raise ConfigError(
        f"config file {value!r} from {source} not found, and it is not the name of a shipped "
        f"config{hint}; shipped: {', '.join(shipped)}"
    )


def read_config_file(uri: str, source: str = "--config") -> dict[str, Any]:
    """The mapping of a YAML config file, its keys not yet checked.

    ``uri`` is a local path, a ``gs://`` / ``s3://`` / ``minio://`` URI or a shipped config's name
    (:func:`resolve_config_file`); ``source`` says where it came from, for error messages.

    Raises:
        ConfigError: the file is missing, not UTF-8, not YAML or not a mapping, naming it.
    """
    from kshot import storage

    uri = resolve_config_file(uri, source)
    try:
        data = yaml.load(storage.read_text(uri), Loader=_UniqueKeyLoader)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {uri!r} not found") from e
    except _DuplicateKey as e:
        raise ConfigError(f"config file {uri!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {uri!r} is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {uri!r} is not UTF-8 text: {e}") from e
    if data is None:  # a truncated copy or a wrong path: never read as "all defaults"
        raise ConfigError(f"config file {uri!r} is empty: it sets no key")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri!r} must hold a mapping of keys to values")
    return data


def load_config(*layers: Mapping[str, Any] | str | None, sources: Iterable[str] = ()) -> Config:
    """Build a :class:`Config` from layers applied in order (later wins).

    Each layer is a mapping or a path / URI of a YAML file; ``sources`` names the layers in error
    messages (defaults: the file name, or ``layer N``).
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    names = list(sources)
    for i, layer in enumerate(layers):
        if layer is None:
            continue
        name = names[i] if i < len(names) else (layer if isinstance(layer, str) else f"layer {i}")
        if isinstance(layer, str):
            layer = read_config_file(layer)
        for key, value in layer.items():
            if key not in FIELDS:
                close = [
                    k for k in FIELDS if k.replace("_", "") == str(key).lower().replace("_", "")
                ]
                close = close or difflib.get_close_matches(str(key).lower(), FIELDS, 1, 0.75)
                close = close or [k for k in FIELDS if k.startswith(f"{str(key).lower()}_")]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown config key {key!r} from {name}{hint}")
            values[key] = _coerce(key, value, name)
            origin[key] = name
    try:
        cfg = Config.__new__(Config)
        for name_, f in FIELDS.items():
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            object.__setattr__(cfg, name_, values.get(name_, default))
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(str(e)) from e
    validate(cfg, origin)
    ignored = [
        k
        for k in _OTHER_SPACE_KEYS[cfg.search_space]
        if k in origin and getattr(cfg, k) != FIELDS[k].default
    ]
    if ignored:
        given = ", ".join(f"{k!r} (from {origin[k]})" for k in ignored)
        warnings.warn(
            f"config keys {given} do not apply to search_space {cfg.search_space!r} "
            f"(from {origin.get('search_space', 'defaults')}), which ignores them",
            stacklevel=2,
        )
    return cfg


# Shape keys of one search space, which the other one ignores.
_OTHER_SPACE_KEYS = {
    "nb201": ("width_mult", "channel_divisor", "channel_search", "rc_threshold"),
    "mbv2": ("channels", "cells"),
}


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--set KEY=VALUE``, both repeatable, as :func:`config_from_args`
    reads them."""
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config file (local path, gs://, s3:// or minio:// URI) or a shipped config's "
        "name (digits-tiny, ranking-cpu-proxy, …); repeat to layer several",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one config key (see `kshot config --help-keys`); repeatable",
    )


def config_from_args(args: argparse.Namespace, base: Sequence[str] = ()) -> Config:
    """Defaults, then ``base`` files, then ``--config`` files, then ``--set`` pairs."""
    files = [*base, *args.config]
    overrides = parse_overrides(args.overrides)
    return load_config(*files, overrides, sources=[*files, "--set"])
