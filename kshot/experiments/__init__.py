"""Experiments and benchmarks: orchestrators that run the pipeline's stages, or time the library's
parts, and write a report.

They sit above the library: they import :mod:`kshot.stages` and the packages below it, and nothing
in the library imports them; the command line (``kshot experiment …``, ``kshot bench``) runs them.
"""

from __future__ import annotations

__all__: list[str] = []
