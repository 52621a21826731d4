"""The command line a person meets first: a fast --help, keys with their values, hints for typos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import kshot
from kshot.cli import build_parser, main
from kshot.config import Config, ConfigError, load_config


def test_help_loads_neither_torch_nor_kfp() -> None:
    probe = (
        "import sys\n"
        "from kshot.cli import main\n"
        "for argv in (['--help'], ['stage', 'train', '--help'], ['pipeline', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted({'torch', 'kfp', 'kubernetes', 'matplotlib'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    # the stage's help still shows its module's docstring and artifacts
    assert "artifacts:" in result.stdout and "--output checkpoint=URI" in result.stdout


def test_help_keys_shows_the_values_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--help-keys", "--set", "k=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "k = 3" in lines
    assert f"epochs = {Config().epochs}" in lines  # a default
    assert 'ground_truth = ""' in lines
    assert lines[lines.index("k = 3") + 1].startswith("    ")  # then the key's meaning


@pytest.mark.parametrize(
    "typo,meant",
    [
        ("epoch", "epochs"),
        ("warmup", "warmup_epochs"),
        ("batchsize", "batch_size"),
        ("Seed", "seed"),
    ],
)
def test_an_unknown_key_suggests_the_one_meant(typo: str, meant: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"unknown config key '{typo}' from --set \(did you mean '{meant}'\?\)"
    ):
        load_config({typo: 1}, sources=["--set"])


def test_a_key_like_none_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'colour' from x\.yaml$"):
        load_config({"colour": 1}, sources=["x.yaml"])


def test_the_sweep_option_takes_k_and_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--local", "--sweep", "k=1,2,4,8"]).sweep == [1, 2, 4, 8]
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--local", "--sweep", "m=1,2"])
    assert "expected k=VALUES" in capsys.readouterr().err


def test_a_bad_k_of_the_sweep_stops_before_any_step(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    assert main(["run", "--local", "--sweep", "k=1,0", "--output", str(out)]) == 2
    assert "config key 'k' from --sweep k=0: 0 must be >= 1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "--local", "--sweep", "k=2,2", "--output", str(out)]) == 2
    assert "--sweep k=2,2: repeats a K" in capsys.readouterr().err


def test_a_stage_prints_its_key_figure_and_outputs_not_its_whole_result(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "split.json"
    assert (
        main(["stage", "split", "--set", "valid_fraction=0.5", "--output", f"split={split}"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "split: 899 train, 449 valid, 449 test images",  # digits: 1,797 images, a quarter to test
        f"  split: {split}",
    ]
    assert main(["stage", "split", "--verbose", "--output", f"split={split}"]) == 0
    assert '"train": 899' in capsys.readouterr().out


def test_a_missing_input_is_named_before_any_work(tmp_path, capsys) -> None:
    checkpoint = tmp_path / "warm"
    checkpoint.mkdir()
    (checkpoint / "ckpt.pt").write_bytes(b"")
    argv = ["stage", "train", "--input", f"split={tmp_path / 'split.json'}"]
    argv += ["--input", f"checkpoint={checkpoint}", "--output", f"checkpoint={tmp_path / 'out'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    split = str(tmp_path / "split.json")
    assert f"stage 'train', input artifact split={split!r}: {split} does not exist" in err
    assert not (tmp_path / "out").exists()


def test_a_shipped_config_is_named_without_a_path(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--config digits-tiny`` reads the packaged file from any working directory (a pod's is
    not a clone), as ``digits-tiny.yaml`` and the file's own path do."""
    from kshot.config import shipped_configs

    monkeypatch.chdir(tmp_path)
    assert {"digits-tiny", "ranking-cpu-proxy", "mbv2-imagenet", "mbv2-imagenet-343m"} <= set(
        shipped_configs()
    )
    packaged = load_config(str(Path(kshot.__file__).parent / "configs" / "digits-tiny.yaml"))
    assert packaged != Config()  # the file sets keys, so reading it is seen
    for value in ("digits-tiny", "digits-tiny.yaml"):
        assert main(["config", "--config", value]) == 0
        assert capsys.readouterr().out == yaml.safe_dump(packaged.to_dict(), sort_keys=False)
    # a local file of that name is the user's, and wins
    (tmp_path / "digits-tiny.yaml").write_text("k: 3\n")
    assert load_config("digits-tiny.yaml").k == 3
    assert load_config("digits-tiny").k == packaged.k != 3


@pytest.mark.parametrize(
    "value,hint",
    [("digits-small", ""), ("kshot/configs/digits-tiny.yaml", " (did you mean 'digits-tiny'?)")],
)
def test_an_unknown_config_name_is_refused_naming_the_shipped_ones(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value, hint
) -> None:
    monkeypatch.chdir(tmp_path)  # no clone here: the relative path does not exist
    assert main(["stage", "split", "--config", value, "--output", "split=s.json"]) == 2
    err = capsys.readouterr().err
    assert (
        f"config file {value!r} from --config not found, and it is not the name of a shipped "
        f"config{hint}; shipped: digits-tiny, mbv2-imagenet, " in err
    )
    assert not (tmp_path / "s.json").exists()


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"kshot {importlib.metadata.version('kshot-nas')}\n"


_RENDER = [
    *("launch", "render", "--stage", "train", "--image", "ghcr.io/acme/kshot:1"),
    *("--input", "split=gs://b/split.json", "--input", "checkpoint=gs://b/warm"),
    *("--output", "checkpoint=gs://b/train", "--no-launch-defaults"),
]


@pytest.mark.parametrize(
    "argv", [["config", "--help-keys"], ["config"], ["--help"], _RENDER], ids=" ".join
)
def test_a_closed_pipe_ends_the_command_quietly(argv: list[str]) -> None:
    """`kshot config --help-keys | head`: the reader went away before kshot wrote a byte."""
    command = subprocess.Popen(
        [sys.executable, "-m", "kshot.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    command.stdout.close()  # before the interpreter has even started: every write meets it
    error = command.stderr.read().decode()
    status = command.wait(timeout=120)
    command.stderr.close()
    assert error == ""
    assert status in (0, 128 + 13)  # --help exits through argparse; a command as SIGPIPE would
