"""The pipelines' parameters that are config keys, built from :class:`kshot.config.Config`.

``@dsl.pipeline`` reads a pipeline's parameters from its function's signature
(``inspect.signature``, which honours ``__signature__``) and their descriptions from its
docstring's ``Args``. :func:`config_parameters` writes both from ``Config``: a parameter that is a
config key has that field's name, type, default and help (``kshot config``). Which keys are
parameters is the config step's choice (:data:`kshot.components.stages.PIPELINE_CONFIG_KEYS`):
KFP ships that component's source to its pod, so its signature stays written out.

This module does not use ``from __future__ import annotations``: the signature it builds carries
the fields' types themselves, which KFP reads.
"""

import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any

from kshot.config import FIELD_HELP, Config

__all__ = ["config_parameters"]

_ARGS = re.compile(r"^( *)Args:\n", re.M)


def config_parameters(keys: Iterable[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a pipeline function one parameter per config key of ``keys``, as ``Config`` has it.

    The decorated function's first parameter receives them as one mapping (key → value; in a
    pipeline, key → pipeline channel); its other parameters follow the config keys in the
    signature. Its docstring's ``Args`` gain each key's help, unless they describe the key
    themselves.

    Args:
        keys: config keys (fields of :class:`kshot.config.Config`).

    Returns:
        The decorator; put it below ``@dsl.pipeline``.
    """
    keys = tuple(keys)
    types = typing.get_type_hints(Config)
    defaults = Config()
    config = [
        inspect.Parameter(
            key,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=getattr(defaults, key),
            annotation=types[key],
        )
        for key in keys
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func)
        signature = own.replace(parameters=[*config, *list(own.parameters.values())[1:]])

        @functools.wraps(func)
        def pipeline(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            return func({key: values.pop(key) for key in keys}, **values)

        pipeline.__signature__ = signature  # type: ignore[attr-defined]
        pipeline.__annotations__ = {
            **{p.name: p.annotation for p in signature.parameters.values()},
            "return": signature.return_annotation,
        }
        pipeline.__doc__ = _with_help(func.__doc__ or "", keys)
        return pipeline

    return decorate


def _with_help(doc: str, keys: tuple[str, ...]) -> str:
    """``doc`` with a line for each key of ``keys`` that its ``Args`` do not describe."""
    found = _ARGS.search(doc)
    if not found:
        raise ValueError("a pipeline's docstring needs an Args section for its parameters")
    described = set(re.findall(r"^ *(\w+):", doc[found.end() :], re.M))
    indent = found.group(1) + "    "
    lines = "".join(f"{indent}{key}: {FIELD_HELP[key]}\n" for key in keys if key not in described)
    return doc[: found.end()] + lines + doc[found.end() :]
