"""Progress off a terminal: one line per tenth of the loop or per minute, not one per update."""

from __future__ import annotations

import io

from kshot.progress import LINE_EVERY_S, LineProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_fast_loop_writes_one_line_per_tenth() -> None:
    out = io.StringIO()
    items = list(LineProgress(range(250), desc="supernet", unit="epoch", file=out, clock=Clock()))
    assert items == list(range(250))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "supernet: 25/250 epoch (10%) in 0 s"
    assert lines[-1] == "supernet: 250/250 epoch (100%) in 0 s"


def test_a_slow_loop_writes_a_line_each_minute_between_tenths() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=1000, desc="scoring", unit="path", file=out, clock=clock)
    bar.update(1)
    assert out.getvalue() == ""  # 0.1 % done, no time passed
    clock.now = LINE_EVERY_S
    bar.set_postfix({"loss": "1.234"}, best=91.5)
    bar.update(1)
    assert out.getvalue() == "scoring: 2/1000 path (0%) in 60 s, loss=1.234, best=91.5\n"
    clock.now += 1
    bar.update(1)
    assert out.getvalue().count("\n") == 1


def test_a_resumed_loop_counts_from_where_it_was() -> None:
    out = io.StringIO()
    bar = LineProgress(total=10, initial=5, desc="supernet", unit="epoch", file=out, clock=Clock())
    bar.update(1)
    assert out.getvalue() == "supernet: 6/10 epoch (60%) in 0 s\n"


def test_off_a_terminal_the_bar_is_lines(capsys) -> None:
    bar = progress_bar(range(3), desc="x")  # pytest's captured stderr is no TTY
    assert isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2]
    assert capsys.readouterr().err.splitlines()[-1] == "x: 3/3 it (100%) in 0 s"
    assert not isinstance(progress_bar(range(3), disable=True), LineProgress)
