"""Run identity: an output holds one run's work, inputs are read-only.

A rerun with any result-affecting key changed is refused, naming the keys, before any work and
without touching the output; the identical rerun reports the finished result without work;
an output file that no run wrote is refused; ``--overwrite`` removes only that output; a supernet
is never scored on another split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from kshot.cli import main
from kshot.config import Config, load_config, result_keys
from kshot.stages import run_stage
from kshot.stages.data import load_train_data
from kshot.train import checkpoint as ckpt
from kshot.train.trainer import KShotTrainer
from tests.conftest import TINY


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (records and locks beside outputs included) → its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder with a config file, a split and a finished one-epoch warmup (TINY)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cfg = load_config(TINY)
    run_stage("split", cfg, {}, {"split": str(root / "split.json")})
    run_stage("warmup", cfg, {"split": str(root / "split.json")}, {"checkpoint": str(root / "W")})
    return {"root": root, "config": root / "tiny.yaml", "split": root / "split.json"}


def _stage(finished: dict[str, Path], *args: str) -> list[str]:
    return ["stage", *args, "--config", str(finished["config"])]


def test_a_finished_warmup_is_not_returned_as_another_seeds(
    finished: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`warmup --set seed=1` into a folder holding a finished seed-0 warmup exits 2 naming the
    key and both values, and leaves every file as it was."""
    before = _fingerprint(finished["root"])
    argv = _stage(finished, "warmup", "--set", "seed=1")
    argv += [
        "--input",
        f"split={finished['split']}",
        "--output",
        f"checkpoint={finished['root']}/W",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "seed = 0 there, 1 in this run" in err and "--overwrite" in err, err
    assert _fingerprint(finished["root"]) == before


def test_another_runs_unfinished_checkpoints_are_not_resumed(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    """A folder where an lr = 0.1 run was killed after its first checkpoint (no run record) is
    not resumed by an lr = 0.05 run, which would report that run's weights as its own."""
    cfg = load_config(TINY)
    data = load_train_data(cfg, str(finished["split"]))
    killed = KShotTrainer(cfg, data, torch.device("cpu"))
    for _ in range(5):
        killed.train_step()
    killed.save(str(tmp_path / "W"))
    before = _fingerprint(tmp_path)

    with pytest.raises(ckpt.CheckpointError, match=r"lr = 0\.1 there, 0\.05 in this run"):
        run_stage(
            "warmup",
            cfg.replace(lr=0.05),
            {"split": str(finished["split"])},
            {"checkpoint": str(tmp_path / "W")},
        )
    assert _fingerprint(tmp_path) == before


def test_the_identical_rerun_reports_the_finished_result_without_work(
    finished: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running a finished search again (also with only execution settings changed: threads,
    eval batch size) returns its recorded result and neither searches nor rewrites anything."""
    cfg = load_config(TINY)
    inputs = {"split": str(finished["split"]), "checkpoint": str(finished["root"] / "W")}
    out = {"results": str(finished["root"] / "search.json")}
    first = run_stage("search", cfg, inputs, out)
    before = _fingerprint(finished["root"])

    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("the finished search ran again")

    monkeypatch.setattr("kshot.stages.search.nsga2_search", no_search)
    again = run_stage("search", cfg.replace(num_threads=2, eval_batch_size=64), inputs, out)
    assert again == first
    assert _fingerprint(finished["root"]) == before
    with pytest.raises(ValueError, match=r"population = 6 there, 8 in this run"):
        run_stage("search", cfg.replace(population=8), inputs, out)


def test_train_into_a_finished_run_with_other_epochs_and_lr_is_refused(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: `train` with epochs=2 lr=0.05 into a finished epochs=3 lr=0.1 run."""
    inputs = [
        "--input",
        f"split={finished['split']}",
        "--input",
        f"checkpoint={finished['root']}/W",
    ]
    out = ["--output", f"checkpoint={tmp_path}/T"]
    assert main(_stage(finished, "train", "--set", "epochs=3", *inputs, *out)) == 0
    before = _fingerprint(tmp_path)
    capsys.readouterr()
    argv = _stage(finished, "train", "--set", "epochs=2", "--set", "lr=0.05", *inputs, *out)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "epochs = 3 there, 2 in this run" in err and "lr = 0.1 there, 0.05 in this run" in err
    assert _fingerprint(tmp_path) == before


def test_overwrite_removes_only_that_output_and_starts_over(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    """--overwrite replaces the refused output with this run's work; a sibling output beside it
    and the inputs stay byte-identical."""
    split = str(finished["split"])
    run_stage("warmup", load_config(TINY), {"split": split}, {"checkpoint": str(tmp_path / "A")})
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "keep.txt").write_text("another output")
    inputs_before = _fingerprint(finished["root"])
    argv = _stage(finished, "warmup", "--set", "seed=1", "--overwrite")
    argv += ["--input", f"split={split}", "--output", f"checkpoint={tmp_path}/A"]
    assert main(argv) == 0
    assert ckpt.load_latest(str(tmp_path / "A"))["config"]["seed"] == 1
    assert (tmp_path / "B" / "keep.txt").read_text() == "another output"
    assert _fingerprint(finished["root"]) == inputs_before


def test_an_output_no_run_wrote_is_replaced_only_with_overwrite(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file at an output with no run record beside it is refused, naming it, and kept;
    --overwrite replaces it; the output this run then wrote (with its record) is reported as
    finished by the plain rerun."""
    out = tmp_path / "split.json"
    out.write_text("a file of the user's")
    argv = _stage(finished, "split", "--output", f"split={out}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"output split='{out}' already exists and has no run record" in err
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]
    assert out.read_text() == "a file of the user's"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() == finished["split"].read_bytes()
    capsys.readouterr()
    assert main(argv) == 0
    assert "already finished this run" in capsys.readouterr().err


def test_a_supernet_is_never_scored_on_another_split(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A seed-1 split with a seed-0 supernet would score its training images as validation: the
    checkpoint records its split, and search refuses the pair before scoring."""
    split1 = tmp_path / "split1.json"
    assert main(_stage(finished, "split", "--set", "seed=1", "--output", f"split={split1}")) == 0
    capsys.readouterr()
    argv = _stage(finished, "search", "--input", f"split={split1}")
    argv += ["--input", f"checkpoint={finished['root']}/W", "--output", f"results={tmp_path}/r"]
    assert main(argv) == 2
    assert "trained on another split" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("output", ["W", "W/inner"])
def test_an_output_equal_to_or_inside_an_input_is_refused(
    finished: dict[str, Path], output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --input checkpoint=W --output checkpoint=W` (or a folder inside W) exits 2 and
    leaves the warmup checkpoint byte-identical (keep-two rotation deleted it before)."""
    before = _fingerprint(finished["root"])
    w = finished["root"] / "W"
    argv = _stage(finished, "train", "--set", "epochs=3", "--input", f"split={finished['split']}")
    argv += ["--input", f"checkpoint={w}", "--output", f"checkpoint={finished['root']}/{output}"]
    assert main(argv) == 2
    assert "inputs are read-only" in capsys.readouterr().err
    assert _fingerprint(finished["root"]) == before


def test_rotation_never_deletes_an_inputs_checkpoint(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    """Training that resumes from an input folder and (called as a library, past the CLI's
    checks) saves into that same folder keeps every checkpoint it did not write."""
    cfg: Config = load_config(TINY, {"epochs": 4})
    w = tmp_path / "W"
    for src in (finished["root"] / "W").iterdir():
        (w / src.name).parent.mkdir(exist_ok=True)
        (w / src.name).write_bytes(src.read_bytes())
    original = _fingerprint(w)
    trainer = KShotTrainer(cfg, load_train_data(cfg, str(finished["split"])), torch.device("cpu"))
    trainer.resume(str(tmp_path / "empty"), str(w))
    trainer.fit(4, str(w), progress=False)
    after = _fingerprint(w)
    assert all(after.get(name) == digest for name, digest in original.items())
    assert len(ckpt.list_checkpoints(str(w))) == len(original) + 3


def test_result_affecting_keys_are_declared_once_in_the_config() -> None:
    """Execution settings are outside every stage's identity; hyper-parameters are inside the
    identity of the stages that read them."""
    stages = ("split", "warmup", "train", "search", "recalibrate", "rank", "retrain", "standalone")
    every = set(result_keys(*stages))
    for setting in ("num_threads", "workers", "device", "compile", "checkpoint_every_steps"):
        assert setting not in every
    assert {"seed", "lr", "epochs", "batch_size", "dataset"} <= set(result_keys("warmup"))
    assert "lambda_mode" in result_keys("train") and "lambda_mode" not in result_keys("warmup")
    assert "population" in result_keys("search") and "population" not in result_keys("train")
