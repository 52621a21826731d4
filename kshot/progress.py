"""Progress of long loops: a live bar on a terminal, a few plain lines anywhere else.

On a terminal (stderr is a TTY) :func:`progress_bar` is a ``tqdm`` bar. Elsewhere — a log file, a
``kfp.local`` step, a pod's log — a redrawn bar would become one line per update, so it writes one
line when another tenth of the loop is done or a minute has passed since the last line, whichever
comes first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

__all__ = ["progress_bar", "LineProgress"]

LINE_EVERY_S = 60.0
"""Seconds after which a plain progress line is written even without another tenth done."""


class LineProgress:
    """The part of ``tqdm``'s interface the loops use, written as one line per tenth or minute."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        file: TextIO | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n = iterable, total, initial
        self.desc, self.unit, self.postfix = desc, unit, ""
        self._file, self._clock = file, clock
        self._start = self._last = clock()
        self._tenth = self._tenths(initial)

    def _tenths(self, n: int) -> int:
        return 10 * n // self.total if self.total else 0

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        tenth = self._tenths(self.n)
        if tenth > self._tenth or now - self._last >= LINE_EVERY_S:
            self._tenth, self._last = tenth, now
            self._write(now)

    def set_postfix(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Figures written after the count on the following lines, as ``tqdm`` shows them."""
        items = {**(values or {}), **more}
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def _write(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        line = f"{self.desc}: {done} {self.unit}{percent} in {now - self._start:.0f} s{postfix}"
        file = self._file or sys.stderr
        print(line, file=file, flush=True)

    def close(self) -> None:
        """Nothing to clear: the lines stay, as a log's should."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
) -> Any:
    """A ``tqdm`` bar on a terminal, :class:`LineProgress` elsewhere; a silent one if ``disable``.

    Args:
        iterable: what to iterate over (or None, and call ``update``).
        total: the number of steps (default: ``len(iterable)``).
        desc: the loop's name, first on every line.
        unit: what one step is (epoch, path, gen).
        initial: steps already done (a resumed loop).
        disable: show nothing (e.g. on every rank but the first).
    """
    if disable or sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            leave=False,
            disable=disable,
        )
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
