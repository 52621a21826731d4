"""The local run's console: kfp.local's output filed by step, one line per step start and end."""

from __future__ import annotations

import io
from pathlib import Path

from kshot.pipeline.console import StepConsole

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


def _kfp(message: str, level: str = "INFO") -> str:
    """A line as kfp.local's logger writes it, colour codes included."""
    return f"22:04:57.123 - {level} - {message}\n"


def _step(name: str, body: list[str], status: str = "SUCCESS") -> str:
    colour = GREEN if status == "SUCCESS" else RED
    level = "INFO" if status == "SUCCESS" else "ERROR"
    return (
        _kfp(f"Executing task {CYAN}'{name}'{RESET}")
        + _kfp("Streamed logs:\n")
        + "".join(f"    {line}\n" for line in body)
        + _kfp(f"Task {CYAN}'{name}'{RESET} finished with status {colour}{status}{RESET}", level)
        + _kfp(f"Task {CYAN}'{name}'{RESET} outputs:")
        + "    split: Dataset( name='split' )\n"
        + "-" * 80
        + "\n"
    )


EXECUTOR = ["[KFP Executor 2026-12-03 INFO]: Got executor_input:", "{", '  "inputs": {}', "}"]


def test_steps_are_one_line_each_way_and_their_logs_go_to_files(tmp_path: Path) -> None:
    out = io.StringIO()
    console = StepConsole(out, tmp_path / "logs")
    text = (
        _kfp(f"Running pipeline: \x1b[95m'kshot-nas'{RESET}")
        + _step("split", [*EXECUTOR, "kshot result: split: 899 train, 449 valid images"])
        + _step(
            "train", [*EXECUTOR, "supernet: 1/2 epoch (50%) in 3 s", "kshot result: train: epoch 2"]
        )
    )
    for start in range(0, len(text), 7):  # kfp writes in pieces that split lines
        console.write(text[start : start + 7])
    console.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["▶ split", "✓ split", "▶ train", "✓ train"]
    assert lines[1].endswith("s)  899 train, 449 valid images")
    assert lines[3].endswith("s)  epoch 2")
    logs = tmp_path / "logs"
    train = (logs / "train.log").read_text()
    assert "supernet: 1/2 epoch (50%) in 3 s" in train and "899 train" not in train
    assert "Got executor_input" in (logs / "split.log").read_text()
    everything = (logs / "pipeline.log").read_text()
    assert (
        text.replace(CYAN, "").replace(GREEN, "").replace(RESET, "").replace("\x1b[95m", "")
        == everything
    )


def test_a_failed_step_shows_its_errors_and_where_its_log_is(tmp_path: Path) -> None:
    out = io.StringIO()
    console = StepConsole(out, tmp_path)
    console.write(
        _step(
            "search",
            [
                "Traceback (most recent call last):",
                '  File "nsga2.py", line 1, in run',
                "TypeError: set_postfix() got an unexpected keyword argument 'best'",
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
                "kshot.launch.spec.LaunchError: stage 'search' failed locally (exit code 1)",
                "=" * 60,
            ],
            status="FAILURE",
        )
        + _kfp(
            f"Pipeline {CYAN}'kshot-nas'{RESET} finished with status {RED}FAILURE{RESET}", "ERROR"
        )
    )
    console.close()
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("✗ search FAILURE after ") and lines[1].endswith(
        f"its log: {tmp_path / 'search.log'}"
    )
    assert [line.strip() for line in lines[2:5]] == [
        "TypeError: set_postfix() got an unexpected keyword argument 'best'",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "kshot.launch.spec.LaunchError: stage 'search' failed locally (exit code 1)",
    ]
    assert lines[5].endswith("- ERROR - Pipeline 'kshot-nas' finished with status FAILURE")
    assert len(lines) == 6


def test_verbose_echoes_every_line_and_a_rerun_step_gets_its_own_log(tmp_path: Path) -> None:
    out = io.StringIO()
    console = StepConsole(out, tmp_path, verbose=True)
    text = _step("rank", ["kshot result: rank: K = 1"]) + _step(
        "rank", ["kshot result: rank: K = 2"]
    )
    console.write(text)
    console.close()
    assert out.getvalue() == (tmp_path / "pipeline.log").read_text()
    assert "K = 1" in (tmp_path / "rank.log").read_text()
    assert "K = 2" in (tmp_path / "rank-2.log").read_text()
