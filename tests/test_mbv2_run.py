"""The mbv2 space end to end on a tiny class-folder dataset: training with the channel branch and
r_c, NSGA-II under a FLOPs budget, the ImageNet retraining recipe and the exported model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kshot.config import load_config
from kshot.export import load_model
from kshot.spaces import mbv2
from kshot.stages import run_stage
from kshot.stages.data import load_train_data
from kshot.train.builders import space_of
from kshot.train.standalone import imagenet_lambda, retrain_schedule
from kshot.train.trainer import KShotTrainer
from tests.conftest import MBV2_TINY


@pytest.fixture(scope="module")
def mbv2_cfg(cifar_folders):
    return load_config(MBV2_TINY, {"dataset": str(cifar_folders)}, sources=["MBV2_TINY", "fixture"])


@pytest.fixture(scope="module")
def mbv2_run(mbv2_cfg, tmp_path_factory):
    """split → warmup → train, once for the module."""
    run = tmp_path_factory.mktemp("mbv2-run")
    uris = {name: str(run / name) for name in ("split.json", "warm", "trained", "curves.json")}
    run_stage("split", mbv2_cfg, {}, {"split": uris["split.json"]})
    split = {"split": uris["split.json"]}
    run_stage("warmup", mbv2_cfg, split, {"checkpoint": uris["warm"]})
    run_stage(
        "train",
        mbv2_cfg,
        {**split, "checkpoint": uris["warm"]},
        {"checkpoint": uris["trained"], "curves": uris["curves.json"]},
    )
    return run


def test_the_simplex_step_trains_both_branches_on_paths_that_share_operations(mbv2_cfg, mbv2_run):
    data = load_train_data(mbv2_cfg, str(mbv2_run / "split.json"))
    trainer = KShotTrainer(mbv2_cfg, data, torch.device("cpu"))
    choices = trainer.paths_for_step(7, mbv2_cfg.m)
    assert len({mbv2.split(c)[0] for c in choices}) == 1  # one set of operations
    assert len({mbv2.split(c)[1] for c in choices}) == mbv2_cfg.m  # m widths
    supernet_before = [p.detach().clone() for p in trainer.supernet.parameters()]
    x, y = trainer.batch_for_step(7)
    trainer.simplex_step(x, y, choices)  # the zero-initialised output layer moves first
    before = {n: p.detach().clone() for n, p in trainer.simplex.named_parameters()}
    out = trainer.simplex_step(x, y, choices)
    assert math.isfinite(out["simplex_loss"]) and out["channel_reg"] >= 0
    changed = {n for n, p in trainer.simplex.named_parameters() if not torch.equal(p, before[n])}
    assert {"width_branch.weight", "arch_branch.weight", "out.weight"} <= changed
    after = trainer.supernet.parameters()
    assert all(torch.equal(a, b) for a, b in zip(supernet_before, after, strict=True))


def test_channel_regularizer_is_logged_and_moves_lambda(mbv2_cfg, mbv2_run):
    curves = json.loads((mbv2_run / "curves.json").read_text())
    assert curves["channel_reg"][0] is None  # warmup epoch: no simplex-net steps
    assert curves["channel_reg"][1] >= 0 and curves["simplex_loss"][1] > 0
    data = load_train_data(mbv2_cfg, str(mbv2_run / "split.json"))
    grads = []
    for alpha in (0.0, 1.0):  # the same start, batch and paths; only r_c's weight differs
        trainer = KShotTrainer(mbv2_cfg.replace(alpha=alpha), data, torch.device("cpu"))
        # r_c has no gradient while every λ is 1/K; an input, not this run's own output
        trainer.resume(None, str(mbv2_run / "trained"))
        x, y = trainer.batch_for_step(7)
        out = trainer.simplex_step(x, y, trainer.paths_for_step(7, mbv2_cfg.m))
        grads.append([p.grad for p in trainer.simplex.parameters()])
    assert float(out["channel_reg"]) > 0
    # (the parameters themselves may not differ yet: Adam's first update is lr · sign(grad))
    assert any(not torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_search_keeps_every_path_within_the_flops_budget(mbv2_cfg, mbv2_run, cifar_folders):
    data = load_train_data(mbv2_cfg, str(mbv2_run / "split.json"))
    space = space_of(mbv2_cfg, data)
    rng = np.random.default_rng(0)
    budget = float(np.median([space.flops(space.sample(rng)) for _ in range(200)]))
    cfg = mbv2_cfg.replace(flops_budget=budget)
    inputs = {"split": str(mbv2_run / "split.json"), "checkpoint": str(mbv2_run / "trained")}
    results = mbv2_run / "search.json"
    run_stage("search", cfg, inputs, {"results": str(results)})
    searched = json.loads(results.read_text())
    assert len(searched["evaluated"]) == cfg.population * cfg.generations
    for record in searched["evaluated"]:
        assert record["flops"] <= budget
        assert record["flops"] == pytest.approx(space.flops(record["arch"]), abs=0)
    recal = mbv2_run / "recal.json"
    run_stage("recalibrate", cfg, {**inputs, "results": str(results)}, {"results": str(recal)})
    best = json.loads(recal.read_text())["best"]
    assert best["flops"] <= budget and mbv2.parse(best["arch"])

    model_uri, metrics_uri = str(mbv2_run / "model.pt"), str(mbv2_run / "retrain.json")
    metrics = run_stage(
        "retrain",
        cfg,
        {"split": inputs["split"], "results": str(recal)},
        {"model": model_uri, "metrics": metrics_uri},
    )
    assert metrics["arch"] == best["arch"] and metrics["flops"] == best["flops"]
    model, meta = load_model(model_uri)  # rebuilt from kshot.spaces alone
    assert isinstance(model, mbv2.Network) and meta["arch"] == best["arch"]
    logits = model(torch.randn(3, 3, 16, 16))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()


def test_the_retraining_lr_follows_the_papers_formula(mbv2_cfg):
    steps_per_epoch, peak = 10, 0.128
    factor = imagenet_lambda(steps_per_epoch, warmup_epochs=5, decay=0.97, decay_epochs=2.4)
    # linear warmup from 0 over 5 epochs, then × 0.97 every 2.4 epochs (counted from step 0)
    expected = {0: 0.0, 10: 0.2, 25: 0.5, 49: 0.98, 50: 0.97**2, 71: 0.97**2, 72: 0.97**3}
    for step, value in expected.items():
        assert peak * factor(step) == pytest.approx(peak * value, rel=1e-12), step
    cfg = mbv2_cfg.replace(
        retrain_lr=peak, retrain_warmup_epochs=5.0, retrain_lr_decay=0.97, retrain_decay_epochs=2.4
    )
    model = mbv2.build(mbv2.full_width([0] * 21), num_classes=10, width_mult=0.125, divisor=1)
    opt, sched = retrain_schedule(cfg, model, steps_per_epoch, epochs=10)
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["alpha"] == 0.9
    seen = {}
    for step in range(80):
        seen[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    for step, value in expected.items():
        assert seen[step] == pytest.approx(peak * value, rel=1e-12), step


def test_streamed_class_folders_train_search_and_retrain(mbv2_cfg, tmp_path):
    """ImageNet's loading (data_loading: stream): the same stages read the tree through DataLoader
    workers, with the trainer's batches fixed by (seed, step) as in memory."""
    cfg = mbv2_cfg.replace(
        data_loading="stream", loader_workers=2, valid_size=40, epochs=2, warmup_epochs=1
    )
    uri = {name: str(tmp_path / name) for name in ("split", "warm", "trained", "search", "model")}
    run_stage("split", cfg, {}, {"split": uri["split"]})
    split = json.loads((tmp_path / "split").read_text())
    assert (len(split["train"]), len(split["valid"]), split["test"]) == (160, 40, None)

    data = load_train_data(cfg, uri["split"])
    assert data.resolution == 16 and data.in_channels == 3 and len(data.train_labels) == 160
    trainer = KShotTrainer(cfg, data, torch.device("cpu"))
    later = trainer.batch_for_step(5)
    first = [trainer.batch_for_step(s) for s in range(3)]  # a jump back restarts the stream
    again = KShotTrainer(cfg, data, torch.device("cpu"))
    assert torch.equal(again.batch_for_step(5)[0], later[0])
    for step, (x, y) in enumerate(first):
        assert x.shape == (40, 3, 16, 16) and x.dtype == torch.float32
        assert torch.equal(again.batch_for_step(step)[1], y)
    data.train_images.close()

    split_in = {"split": uri["split"]}
    run_stage("warmup", cfg, split_in, {"checkpoint": uri["warm"]})
    run_stage("train", cfg, {**split_in, "checkpoint": uri["warm"]}, {"checkpoint": uri["trained"]})
    best = run_stage(
        "search", cfg, {**split_in, "checkpoint": uri["trained"]}, {"results": uri["search"]}
    )
    assert mbv2.parse(best["arch"])
    metrics = run_stage(
        "retrain",
        cfg,
        {**split_in, "results": uri["search"]},
        {"model": uri["model"], "metrics": str(tmp_path / "retrain.json")},
    )
    assert 0 <= metrics["test_accuracy"] <= 100  # on the tree's own test/ folder, streamed


def test_streaming_bad_inputs_are_named_before_any_work(tmp_path):
    from kshot.config import ConfigError

    with pytest.raises(ConfigError, match="'data_loading'.*needs config key 'resolution'"):
        load_config(MBV2_TINY, {"data_loading": "stream", "resolution": 0})
    cfg = load_config(MBV2_TINY, {"data_loading": "stream", "dataset": "digits"})
    with pytest.raises(ValueError, match="'data_loading' = 'stream'.*'digits' is not a folder"):
        run_stage("split", cfg, {}, {"split": str(tmp_path / "split.json")})
    (tmp_path / "flat").mkdir()
    cfg = cfg.replace(dataset=str(tmp_path / "flat"))
    with pytest.raises(ValueError, match="'data_loading' = 'stream' reads a class-folder tree"):
        run_stage("split", cfg, {}, {"split": str(tmp_path / "split.json")})
    assert not (tmp_path / "split.json").exists()


def test_standalone_ground_truth_and_ranking_work_on_mbv2_paths_or_are_skipped(
    mbv2_cfg, mbv2_run, tmp_path
):
    split = {"split": str(mbv2_run / "split.json")}
    table = tmp_path / "gt.csv"
    cfg = mbv2_cfg.replace(standalone_paths=2, top_n=[1, 2])
    assert run_stage("standalone", cfg, split, {"table": str(table)})["paths"] == 2
    rows = table.read_text().splitlines()
    assert rows[0] == "arch,accuracy,test_images"
    assert all(mbv2.parse(r.rsplit(",", 2)[0]) for r in rows[1:])
    inputs = {**split, "checkpoint": str(mbv2_run / "trained"), "ground_truth": str(table)}
    outputs = {"scores": str(tmp_path / "scores.csv"), "metrics": str(tmp_path / "rank.json")}
    assert run_stage("rank", cfg, inputs, outputs)["n_paths"] == 2

    off = cfg.replace(ranking=False)
    skipped_table = tmp_path / "none.csv"
    assert run_stage("standalone", off, split, {"table": str(skipped_table)})["paths"] == 0
    assert skipped_table.read_text() == "arch,accuracy\n"
    off_outputs = {
        "scores": str(tmp_path / "off-scores.csv"),
        "metrics": str(tmp_path / "off-rank.json"),
    }
    metrics = run_stage("rank", off, {**inputs, "ground_truth": str(skipped_table)}, off_outputs)
    assert "config key 'ranking' is false" in metrics["skipped"]
    assert json.loads((tmp_path / "off-rank.json").read_text()) == metrics


def test_a_streamed_split_refuses_a_tree_whose_files_changed(mbv2_cfg, cifar_folders, tmp_path):
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(cifar_folders, tree)
    cfg = mbv2_cfg.replace(data_loading="stream", loader_workers=0, dataset=str(tree))
    split = str(tmp_path / "split.json")
    run_stage("split", cfg, {}, {"split": split})
    assert len(load_train_data(cfg, split).train_labels) == 160
    first = sorted((tree / "train").glob("*/*.jpg"))[0]
    first.rename(first.with_name("renamed.jpg"))  # same count, other files
    with pytest.raises(ValueError, match="another list of files.*make the split again"):
        load_train_data(cfg, split)


def test_the_imagenet_recipe_decays_no_bn_parameter_and_warms_its_ema_up(mbv2_cfg):
    """As the reference (EfficientNet/MnasNet TPU code): the L2 term skips BN's γ and β, and the
    EMA's decay at update t is min(decay, (1 + t) / (10 + t))."""
    from torch.optim.swa_utils import AveragedModel

    from kshot.train.standalone import tf_ema_update

    model = mbv2.build(mbv2.full_width([0] * 21), num_classes=10, width_mult=0.125, divisor=1)
    opt, _ = retrain_schedule(mbv2_cfg, model, steps_per_epoch=10, epochs=1)
    bn = {p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    decayed, kept = opt.param_groups
    assert kept["weight_decay"] == 0.0 and set(kept["params"]) == bn
    assert decayed["weight_decay"] == mbv2_cfg.retrain_weight_decay > 0
    assert not bn & set(decayed["params"]) and len(decayed["params"]) + len(bn) == len(
        list(model.parameters())
    )

    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=tf_ema_update(0.9999), use_buffers=True)
    values, average = [0.0, 1.0, 1.0], 0.0  # the first update copies the weights
    for t, value in enumerate(values):
        net.weight.data.fill_(value)
        ema.update_parameters(net)
        if t:
            d = min(0.9999, (1 + t) / (10 + t))
            average = d * average + (1 - d) * value
        assert ema.module.weight.item() == pytest.approx(average, rel=1e-6), t
