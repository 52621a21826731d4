"""A quiet console for ``kshot run --local``: kfp.local's output sorted into log files.

``kfp.local`` prints everything a step does to standard output: its own INFO lines, each step's
executor input (the whole config, as JSON), every line of the step's log and its outputs.
:class:`StepConsole` stands in for ``sys.stdout`` while the pipeline runs. Every line goes to
``LOGS/pipeline.log`` and to the log of its step, ``LOGS/<step>.log``; the console gets one line
when a step starts and one when it ends, with the step's key figure (the ``kshot result:`` line of
:func:`kshot.components.runtime.run_pipeline_stage`); a failed step's last lines come with its
error. ``verbose`` echoes every line as well.
"""

from __future__ import annotations

import io
import re
import time
from collections import deque
from pathlib import Path
from typing import TextIO

from kshot.components.runtime import RESULT_PREFIX

__all__ = ["StepConsole", "strip_ansi"]

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_STEP_START = re.compile(r" - INFO - Executing task '(?P<step>[^']+)'")
_STEP_END = re.compile(
    r" - (?:INFO|ERROR) - Task '(?P<step>[^']+)' finished with status (?P<status>\w+)"
)
_ERROR = re.compile(r"^\S+ - ERROR - ")
_EXCEPTION = re.compile(r"^\s*[\w.]*(Error|Exception|Interrupt|Exit)\b:")
FAILED_TAIL_LINES = 10
"""Lines of a failed step's log shown on the console when it names no exception."""


def strip_ansi(text: str) -> str:
    """``text`` without the terminal colour codes kfp.local puts around names and statuses."""
    return _ANSI_ESCAPE.sub("", text)


class StepConsole(io.TextIOBase):
    """A text stream that files kfp.local's output by step and echoes a summary of it.

    Args:
        console: where the summary lines go (the real standard output).
        logs: the folder of ``pipeline.log`` and one ``<step>.log`` per step (created).
        verbose: echo every line too.
    """

    def __init__(self, console: TextIO, logs: Path, verbose: bool = False) -> None:
        super().__init__()
        self.console, self.logs, self.verbose = console, logs, verbose
        logs.mkdir(parents=True, exist_ok=True)
        self._all = (logs / "pipeline.log").open("a", encoding="utf-8")
        self._step: str | None = None
        self._step_log: TextIO | None = None
        self._started = 0.0
        self._figure = ""
        self._tail: deque[str] = deque(maxlen=FAILED_TAIL_LINES)
        self._exceptions: list[str] = []
        self._seen: dict[str, int] = {}
        self._pending = ""
        self.failed: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(strip_ansi(line))
        return len(text)

    def flush(self) -> None:
        self._all.flush()
        if self._step_log:
            self._step_log.flush()
        self.console.flush()

    def close(self) -> None:
        if self.closed:
            return
        if self._pending:
            self._line(strip_ansi(self._pending))
            self._pending = ""
        super().close()  # flushes first
        self._end_step()
        self._all.close()

    def _echo(self, text: str) -> None:
        self.console.write(text + "\n")
        self.console.flush()

    def _line(self, line: str) -> None:
        self._all.write(line + "\n")
        if self.verbose:
            self._echo(line)
        start = _STEP_START.search(line)
        if start:
            self._start_step(start["step"])
            return
        end = _STEP_END.search(line)
        if end and end["step"] == self._step:
            self._finish_step(end["status"])
            return
        if self._step_log:
            self._step_log.write(line + "\n")
            self._tail.append(line)
            text = line.strip()
            if _EXCEPTION.match(text) and text not in self._exceptions:
                self._exceptions.append(text)
            if text.startswith(RESULT_PREFIX):
                self._figure = text[len(RESULT_PREFIX) :].split(":", 1)[-1].strip()
        elif _ERROR.search(line) and not self.verbose:
            self._echo(line)

    def _start_step(self, step: str) -> None:
        self._end_step()
        self._step, self._figure, self._started = step, "", time.monotonic()
        # a step that runs again (one per K in a sweep) gets a log of its own
        self._seen[step] = self._seen.get(step, 0) + 1
        name = re.sub(r"[^\w.-]", "_", step)
        name += f"-{self._seen[step]}" if self._seen[step] > 1 else ""
        self._step_log = (self.logs / f"{name}.log").open("w", encoding="utf-8")
        self._tail.clear()
        self._exceptions.clear()
        if not self.verbose:
            self._echo(f"▶ {step}")

    def _finish_step(self, status: str) -> None:
        step, seconds = self._step, time.monotonic() - self._started
        figure = f"  {self._figure}" if self._figure else ""
        if status == "SUCCESS":
            if not self.verbose:
                self._echo(f"✓ {step} ({seconds:.0f} s){figure}")
        else:
            self.failed.append(str(step))
            log = self._step_log.name if self._step_log else self.logs
            if not self.verbose:
                self._echo(f"✗ {step} {status} after {seconds:.0f} s; its log: {log}")
                for line in self._exceptions or list(self._tail):
                    self._echo(f"    {line.strip()}")
        self._end_step()

    def _end_step(self) -> None:
        if self._step_log:
            self._step_log.close()
        self._step, self._step_log = None, None
