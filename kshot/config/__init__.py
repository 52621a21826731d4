"""The run configuration: its schema (:mod:`kshot.config.schema`, every key with its default's
source), the rules its values obey (:mod:`kshot.config.validation`) and the loader that builds one
from files, ``--set`` overrides and pipeline parameters (:mod:`kshot.config.loader`).

Imports neither torch nor kfp: the command line's help and the pipeline's config check read it.
"""

from __future__ import annotations

from kshot.config.loader import (
    add_config_args,
    config_from_args,
    load_config,
    parse_overrides,
    read_config_file,
    resolve_config_file,
    shipped_configs,
)
from kshot.config.schema import FIELD_HELP, PRIORITY_LABEL, QUEUE_LABEL, Config, result_keys
from kshot.config.validation import ConfigError, is_positive_quantity, is_quantity

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "read_config_file",
    "resolve_config_file",
    "shipped_configs",
    "parse_overrides",
    "add_config_args",
    "config_from_args",
    "FIELD_HELP",
    "result_keys",
    "is_quantity",
    "is_positive_quantity",
    "QUEUE_LABEL",
    "PRIORITY_LABEL",
]
