"""Every stage on digits with a tiny supernet, through the ``kshot stage`` command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from kshot.cli import main
from kshot.config import load_config
from kshot.eval.ranking import ranking_metrics
from kshot.export import load_model
from kshot.spaces import nb201
from kshot.stages.data import load_train_data
from kshot.train import checkpoint as ckpt
from kshot.train.builders import space_of
from kshot.train.standalone import evaluate
from tests.conftest import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A folder holding the artifacts of the whole chain of stages, run once for this module."""
    d = tmp_path_factory.mktemp("stages")
    cfg = d / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "flops_budget": 0.05}))

    def stage(name, *args):
        assert main(["stage", name, "--config", str(cfg), *args]) == 0, name

    stage("split", "--output", f"split={d}/split.json")
    stage("warmup", "--input", f"split={d}/split.json", "--output", f"checkpoint={d}/warm")
    stage(
        "train",
        "--input",
        f"split={d}/split.json",
        "--input",
        f"checkpoint={d}/warm",
        "--output",
        f"checkpoint={d}/trained",
        "--output",
        f"curves={d}/curves.json",
    )
    stage(
        "search",
        "--input",
        f"split={d}/split.json",
        "--input",
        f"checkpoint={d}/trained",
        "--output",
        f"results={d}/search.json",
    )
    stage(
        "recalibrate",
        "--input",
        f"split={d}/split.json",
        "--input",
        f"checkpoint={d}/trained",
        "--input",
        f"results={d}/search.json",
        "--output",
        f"results={d}/recal.json",
    )
    stage("standalone", "--input", f"split={d}/split.json", "--output", f"table={d}/gt.csv")
    stage(
        "rank",
        "--input",
        f"split={d}/split.json",
        "--input",
        f"checkpoint={d}/trained",
        "--input",
        f"ground_truth={d}/gt.csv",
        "--output",
        f"scores={d}/scores.csv",
        "--output",
        f"metrics={d}/rank.json",
    )
    stage(
        "retrain",
        "--input",
        f"split={d}/split.json",
        "--input",
        f"results={d}/recal.json",
        "--output",
        f"model={d}/model.pt",
        "--output",
        f"metrics={d}/retrain.json",
    )
    return d


def test_split_is_disjoint_and_covers_digits(run_dir):
    split = json.loads((run_dir / "split.json").read_text())
    parts = [set(split[p]) for p in ("train", "valid", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 1797


def test_split_takes_a_subset_and_holds_out_exactly_valid_size(tmp_path):
    from kshot.config import load_config
    from kshot.stages import run_stage

    cfg = load_config(TINY, {"train_subset": 300, "valid_size": 40})
    run_stage("split", cfg, {}, {"split": str(tmp_path / "split.json")})
    split = json.loads((tmp_path / "split.json").read_text())
    sizes = [len(split[p]) for p in ("train", "valid", "test")]
    assert sizes == [260, 20, 20]  # digits has no test part: the 40 held out are halved
    assert split["num_images"] == 1797 and split["subset"] == 300
    bad = load_config(TINY, {"train_subset": 300, "valid_size": 300})
    with pytest.raises(ValueError, match="valid_size=300.*cannot split 300 images"):
        run_stage("split", bad, {}, {"split": str(tmp_path / "bad.json")})
    assert not (tmp_path / "bad.json").exists()


def test_warmup_then_train_checkpoints_carry_on_the_same_schedule(run_dir):
    warm = ckpt.load_latest(str(run_dir / "warm"))
    trained = ckpt.load_latest(str(run_dir / "trained"))
    steps_per_epoch = 899 // TINY["batch_size"]
    assert warm["epoch"] == TINY["warmup_epochs"] and warm["step"] == steps_per_epoch
    assert trained["epoch"] == TINY["epochs"] and trained["step"] == 2 * steps_per_epoch
    assert trained["identity"]["k"] == TINY["k"]
    curves = json.loads((run_dir / "curves.json").read_text())
    assert len(curves["supernet_loss"]) == TINY["epochs"]
    assert curves["simplex_loss"][0] is None and curves["simplex_loss"][1] > 0
    # the plot marks the warmup; accuracies are in % as retraining's are (chance on digits: 10 %)
    assert curves["warmup_epochs"] == TINY["warmup_epochs"]
    assert all(1.0 < acc <= 100.0 for acc in curves["supernet_acc"])


def test_search_output_is_complete_and_within_budget(run_dir):
    results = json.loads((run_dir / "search.json").read_text())
    evaluated = results["evaluated"]
    assert len(evaluated) == TINY["population"] * TINY["generations"]
    for r in evaluated:
        assert r["flops"] <= 0.05
        assert 0 <= r["accuracy"] <= 100
        assert len(r["lam"]) == TINY["k"] and abs(sum(r["lam"]) - 1) < 1e-5
        nb201.parse(r["arch"])
    assert results["best"]["accuracy"] == max(r["accuracy"] for r in evaluated)
    assert results["front"] and results["best"]["arch"] in {r["arch"] for r in evaluated}


def test_recalibrate_rescores_the_front_and_best(run_dir):
    """Recalibrate scores exactly the search's front and best path, each on the whole validation
    split (the search scored only ``eval_images`` of it, so the accuracies are new ones, not the
    search's copied), and picks as best the most accurate of them within the budget."""
    searched = json.loads((run_dir / "search.json").read_text())
    recal = json.loads((run_dir / "recal.json").read_text())
    chosen = {r["arch"] for r in searched["front"]} | {searched["best"]["arch"]}
    assert {r["arch"] for r in recal["evaluated"]} == chosen
    assert all(r["bn_images"] == TINY["bn_images"] for r in recal["evaluated"])
    n_valid = len(json.loads((run_dir / "split.json").read_text())["valid"])
    assert TINY["eval_images"] < n_valid and math.gcd(TINY["eval_images"], n_valid) == 1
    searched_accuracy = {r["arch"]: r["accuracy"] for r in searched["evaluated"]}
    for r in recal["evaluated"]:
        correct = r["accuracy"] * n_valid / 100  # a count of the whole split's images
        assert abs(correct - round(correct)) < 1e-6, (r["arch"], r["accuracy"], n_valid)
        # k / eval_images = j / n_valid, coprime denominators, only at 0 % and 100 %
        assert r["accuracy"] != searched_accuracy[r["arch"]] or r["accuracy"] in (0, 100)
    in_budget = [r for r in recal["evaluated"] if r["flops"] <= recal["flops_budget"]]
    assert recal["flops_budget"] == 0.05 and in_budget
    best = max(in_budget, key=lambda r: (r["accuracy"], -r["flops"]))
    assert recal["best"] == best


def _same_metric(a: float | None, b: float) -> bool:
    """Equal to 1e-12, NaN (written to JSON as NaN) equal to NaN."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return math.isnan(b)
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def test_rank_compares_every_standalone_path(run_dir):
    """rank scores every path of the standalone table, writes each path's ground truth as the
    table has it beside its supernet accuracy, and its metrics are those of exactly these
    (ground truth, supernet accuracy) pairs."""
    with open(run_dir / "gt.csv") as f:
        truth = list(csv.DictReader(f))
    metrics = json.loads((run_dir / "rank.json").read_text())
    assert len(truth) == TINY["standalone_paths"] == metrics["n_paths"]
    # each accuracy with the count of test images it was measured on: its binomial noise
    split = json.loads((run_dir / "split.json").read_text())
    assert {int(r["test_images"]) for r in truth} == {len(split["test"])}
    assert -1 <= metrics["kendall_tau_a"] <= 1
    assert set(metrics["top_group_tau"]) == {str(n) for n in TINY["top_n"]}
    with open(run_dir / "scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert {r["arch"] for r in scores} == {r["arch"] for r in truth}
    table = {r["arch"]: float(r["accuracy"]) for r in truth}
    for r in scores:
        assert float(r["ground_truth"]) == table[r["arch"]], r["arch"]
    expected = ranking_metrics(
        [float(r["ground_truth"]) for r in scores],
        [float(r["supernet_accuracy"]) for r in scores],
        TINY["top_n"],
    )
    assert metrics["n_paths"] == expected["n_paths"]
    for name in ("kendall_tau_a", "kendall_tau_b", "spearman_rho", "pearson_r"):
        assert _same_metric(metrics[name], expected[name]), (name, metrics[name], expected[name])
    for n, tau in expected["top_group_tau"].items():
        assert _same_metric(metrics["top_group_tau"][n], tau), (n, metrics["top_group_tau"], tau)


def test_retrain_exports_a_loadable_stand_alone_model(run_dir):
    """retrain exports the recalibrated best path as a plain network that loads without the
    supernet code; the test accuracy it records is the exported model's on the test images, and
    training made it clearly better than the same network freshly initialised."""
    saved = torch.load(run_dir / "model.pt", weights_only=True)  # plain tensors and values
    recal = json.loads((run_dir / "recal.json").read_text())
    assert saved["arch"] == recal["best"]["arch"]
    net = nb201.build(saved["arch"], **saved["shape"]).eval()
    net.load_state_dict(saved["state_dict"])
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # runs alone, without the supernet code
    loaded, meta = load_model(str(run_dir / "model.pt"))
    assert meta["arch"] == saved["arch"] and len(meta["mean"]) == 1
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), net(x))
    metrics = json.loads((run_dir / "retrain.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 100 and len(metrics["curves"]["loss"]) == 1

    cfg = load_config(str(run_dir / "tiny.yaml"))
    data = load_train_data(cfg, str(run_dir / "split.json"))
    cpu = torch.device("cpu")

    def accuracy_of(model):
        return evaluate(model, data.test_images, data.test_labels, data, cfg.eval_batch_size, cpu)

    assert accuracy_of(loaded) == metrics["test_accuracy"]
    torch.manual_seed(cfg.seed)  # the initial weights retrain starts from
    fresh = accuracy_of(space_of(cfg, data).build(saved["arch"]))
    # one epoch reaches about 35 % on digits; untrained, the network is at chance (about 10 %)
    assert metrics["test_accuracy"] > fresh + 10, (metrics["test_accuracy"], fresh)


def test_train_refuses_a_checkpoint_of_another_k(run_dir, tmp_path, capsys):
    cfg = tmp_path / "k2.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "k": 2}))
    code = main(
        [
            "stage",
            "train",
            "--config",
            str(cfg),
            "--input",
            f"split={run_dir}/split.json",
            "--input",
            f"checkpoint={run_dir}/warm",
            "--output",
            f"checkpoint={tmp_path}/t",
        ]
    )
    assert code == 2
    assert "k = 4 (config: 2)" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--set", "k=0"], "config key 'k' from --set: 0 must be >= 1"),
        (["--set", "m=5"], "'m' from --set: 5 does not divide batch_size"),
        (["--set", "dataset=/no/such/folder"], "/no/such/folder"),
        (["--set", "flops_budget=0.0001"], "no nb201 path meets it"),
        (["--set", "epochs=-1"], "'epochs' from --set: -1 must be >= 1"),
        (["--set", "colour=red"], "unknown config key 'colour'"),
        (["--set", "k=four"], "'four' is not a valid int"),
    ],
)
def test_bad_input_stops_with_a_clear_message(run_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "results.json"
    code = main(
        [
            "stage",
            "search",
            "--config",
            str(run_dir / "tiny.yaml"),
            *argv,
            "--input",
            f"split={run_dir}/split.json",
            "--input",
            f"checkpoint={run_dir}/trained",
            "--output",
            f"results={out}",
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_artifact_arguments_are_named(capsys):
    assert main(["stage", "train"]) == 2
    assert "needs input artifact(s) split, checkpoint" in capsys.readouterr().err
