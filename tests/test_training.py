"""Algorithms 1 and 2: what each kind of step updates, and resuming that equals not stopping."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from kshot.config import ConfigError
from kshot.nn.simplex import code_statistics
from kshot.spaces import nb201
from kshot.train import checkpoint as ckpt
from kshot.train.groups import simplex_groups
from kshot.train.run_data import TrainData, training_batch
from kshot.train.trainer import KShotTrainer, curves


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def test_warmup_steps_train_the_supernet_with_uniform_lambda(tiny_cfg, digits_data):
    trainer = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    assert trainer.step < trainer.warmup_steps
    simplex_before = _snapshot(trainer.simplex)
    supernet_before = _snapshot(trainer.supernet)
    (choice,) = trainer.paths_for_step(0, 1)
    trainer.train_step()
    assert not _changed(simplex_before, trainer.simplex)
    changed = _changed(supernet_before, trainer.supernet)
    on_path = {
        n
        for n, p in trainer.supernet.named_parameters()
        if any(p is q for _, layer in trainer.supernet.path_layers(choice) for q in layer.slots())
    }
    assert changed == on_path  # exactly the sampled path's slots, no weight decay elsewhere
    assert torch.equal(trainer.lam_for(choice, warmup=True), torch.full((4,), 0.25))


def test_alternating_steps_update_only_the_intended_network(tiny_cfg, digits_data):
    trainer = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    trainer.step = trainer.warmup_steps  # first alternating iteration: a supernet step
    for kind in ("supernet", "simplex", "supernet", "simplex"):
        sup, simp = _snapshot(trainer.supernet), _snapshot(trainer.simplex)
        out = trainer.train_step()
        if kind == "supernet":
            assert "supernet_loss" in out
            assert _changed(sup, trainer.supernet) and not _changed(simp, trainer.simplex)
        else:
            assert "simplex_loss" in out
            assert _changed(simp, trainer.simplex) and not _changed(sup, trainer.supernet)
    # after warmup a supernet step merges with the simplex-net's λ = π(a): off 1/K, on the simplex
    (choice,) = trainer.paths_for_step(trainer.step, 1)
    lam = trainer.lam_for(choice, warmup=False)
    k = tiny_cfg.k
    assert not torch.allclose(lam, torch.full((k,), 1 / k), atol=1e-4)
    assert torch.equal(lam, trainer.simplex(*trainer.space.codes([choice], torch.device("cpu")))[0])
    assert (lam >= 0).all() and torch.isclose(lam.sum(), torch.tensor(1.0))
    received = []
    original = trainer.supernet_step
    trainer.supernet_step = lambda x, y, c, lam: received.append(lam) or original(x, y, c, lam)
    trainer.train_step()
    assert torch.equal(received[0], lam)


# starting on a simplex step, the scheduler steps before the supernet optimiser ever has
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_simplex_step_uses_m_paths_on_m_groups_of_the_batch(tiny_cfg, digits_data):
    trainer = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    seen = []
    original = trainer.supernet.forward

    def spy(x, arch, lam):
        seen.append((len(x), nb201.parse(arch), lam.requires_grad))
        return original(x, arch, lam)

    trainer.supernet.forward = spy
    trainer.step = trainer.warmup_steps + 1
    expected = trainer.paths_for_step(trainer.step, tiny_cfg.m)
    trainer.train_step()
    assert [s[0] for s in seen] == [tiny_cfg.batch_size // tiny_cfg.m] * tiny_cfg.m
    assert [s[1] for s in seen] == expected
    assert all(s[2] for s in seen)  # λ carries the simplex-net's gradient


def test_augmented_batches_stay_channels_last_with_the_seeded_crops():
    """The crop and flip run where the batch is and keep the layout ``prepare`` chose, with the
    crops and flips drawn from ``(seed, step)``."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    data = TrainData(images, labels, images, labels, [0.5] * 3, [0.25] * 3, 10)
    kwargs = dict(seed=3, step=5, steps_per_epoch=2, batch_size=16, device=torch.device("cpu"))
    plain, y = training_batch(data, augment=False, **kwargs)
    augmented, y_aug = training_batch(data, augment=True, **kwargs)
    assert plain.is_contiguous(memory_format=torch.channels_last)
    assert augmented.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y_aug) and not torch.equal(plain, augmented)
    assert torch.equal(training_batch(data, augment=True, **kwargs)[0], augmented)
    # every augmented image is its own image shifted by at most 1 pixel (8×8), perhaps flipped
    for image, shifted in zip(plain, augmented, strict=True):
        padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
        windows = [padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
        assert any(torch.equal(shifted, w) or torch.equal(shifted, w.flip(-1)) for w in windows)


def test_paths_depend_only_on_seed_and_step(tiny_cfg, digits_data):
    a = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    b = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    assert a.paths_for_step(7, 16) == b.paths_for_step(7, 16)
    assert len({a.paths_for_step(step, 1)[0] for step in range(20)}) > 15  # a new one each step
    assert len(set(a.paths_for_step(7, 16))) > 12  # m different paths within a step
    other_seed = KShotTrainer(
        tiny_cfg.replace(seed=tiny_cfg.seed + 1), digits_data, torch.device("cpu")
    )
    assert other_seed.paths_for_step(7, 16) != a.paths_for_step(7, 16)


@pytest.mark.numerics
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny_cfg, digits_data, tmp_path):
    cfg = tiny_cfg.replace(epochs=3, warmup_epochs=1, augment=True)
    straight = KShotTrainer(cfg, digits_data, torch.device("cpu"))
    straight.fit(3, progress=False)

    first = KShotTrainer(cfg, digits_data, torch.device("cpu"))
    first.fit(2, str(tmp_path / "ckpt"), progress=False)  # stops after epoch 2 (mid alternation)
    resumed = KShotTrainer(cfg, digits_data, torch.device("cpu"))
    assert resumed.resume(str(tmp_path / "ckpt")).endswith(ckpt.checkpoint_name(2, resumed.step))
    resumed.fit(3, progress=False)

    for name, p in straight.supernet.state_dict().items():
        assert torch.equal(p, resumed.supernet.state_dict()[name]), name
    for name, p in straight.simplex.state_dict().items():
        assert torch.equal(p, resumed.simplex.state_dict()[name]), name
    assert curves(straight.history) == curves(resumed.history)


def test_a_checkpoint_from_another_k_is_refused(tiny_cfg, digits_data, tmp_path):
    trainer = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    trainer.save(str(tmp_path))
    other = KShotTrainer(tiny_cfg.replace(k=2), digits_data, torch.device("cpu"))
    with pytest.raises(ckpt.CheckpointError, match=r"k = 4 \(config: 2\)"):
        other.resume(str(tmp_path))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tiny_cfg, digits_data, tmp_path
):
    trainer = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    trainer.save(str(tmp_path))
    trainer.step = 5
    trainer.save(str(tmp_path))
    newest = ckpt.list_checkpoints(str(tmp_path))[-1]
    with open(newest, "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="damaged"):
        state = ckpt.load_latest(str(tmp_path))
    assert state["step"] == 0


def test_bad_batch_settings_are_refused_before_training(tiny_cfg, digits_data):
    with pytest.raises(ConfigError, match="'m' .*does not divide batch_size"):
        tiny_cfg.replace(m=5)
    with pytest.raises(ValueError, match="exceeds the .* training images"):
        KShotTrainer(tiny_cfg.replace(batch_size=4096, m=4), digits_data, torch.device("cpu"))


@pytest.mark.parametrize("mode", ["fixed", "random"])
def test_lambda_ablations_train_only_the_supernet(tiny_cfg, digits_data, mode):
    """Table 6's fixed-1/K and random-λ ablations: no simplex-net steps, λ as the mode says."""
    trainer = KShotTrainer(tiny_cfg.replace(lambda_mode=mode), digits_data, torch.device("cpu"))
    trainer.step = trainer.warmup_steps
    simplex_before = _snapshot(trainer.simplex)
    for _ in range(4):
        assert "supernet_loss" in trainer.train_step()
    assert not _changed(simplex_before, trainer.simplex)
    a, b = trainer.paths_for_step(0, 1)[0], trainer.paths_for_step(1, 1)[0]
    lam_a, lam_b = trainer.lam_for(a, warmup=False), trainer.lam_for(b, warmup=False)
    assert torch.isclose(lam_a.sum(), torch.tensor(1.0)) and (lam_a >= 0).all()
    assert torch.equal(lam_a, lam_b) == (mode == "fixed")


def test_random_ablation_draws_one_code_per_path_once_and_scores_with_it(
    tiny_cfg, digits_data, digits_split
):
    """Table 6's random λ: each path's code is drawn once from the seed and never changes, in
    training (whatever the step) and in scoring."""
    from kshot.stages.trained import make_scorer

    cfg = tiny_cfg.replace(lambda_mode="random")
    trainer = KShotTrainer(cfg, digits_data, torch.device("cpu"))
    path = trainer.paths_for_step(3, 1)[0]
    received = []
    original = trainer.supernet_step
    trainer.supernet_step = lambda x, y, c, lam: received.append((c, lam)) or original(x, y, c, lam)
    trainer.step = trainer.warmup_steps
    for _ in range(6):
        trainer.train_step()
    for choice, lam in received:  # every step's code is its path's code
        assert torch.equal(lam, trainer.lam_for(choice, warmup=False))
    codes = {tuple(lam.tolist()) for _, lam in received}
    assert len(codes) == len({c for c, _ in received})  # one code per path, not per step
    again = KShotTrainer(cfg, digits_data, torch.device("cpu")).lam_for(path, warmup=False)
    assert torch.equal(again, trainer.lam_for(path, warmup=False))
    other = KShotTrainer(cfg.replace(seed=1), digits_data, torch.device("cpu"))
    assert not torch.equal(other.lam_for(path, warmup=False), again)
    assert not torch.allclose(again, torch.full((cfg.k,), 1 / cfg.k), atol=1e-3)
    scorer = make_scorer(cfg, digits_data, trainer.supernet, trainer.simplex, torch.device("cpu"))
    assert torch.equal(scorer.lam(path), again)  # scored with its own code, not 1/K


def test_k1_trains_the_supernet_on_every_iteration_as_spos(tiny_cfg, digits_data):
    trainer = KShotTrainer(tiny_cfg.replace(k=1), digits_data, torch.device("cpu"))
    trainer.step = trainer.warmup_steps
    assert all("supernet_loss" in trainer.train_step() for _ in range(4))


@pytest.mark.numerics
def test_bf16_autocast_trains_with_fp32_weights_close_to_fp32(tiny_cfg, digits_data):
    """precision bf16 (the default on CUDA) runs the forwards in bf16; the K-slot merge, BN and the
    optimiser stay fp32, and the first epoch's losses track an fp32 run's."""
    runs = {}
    for precision in ("fp32", "bf16"):
        trainer = KShotTrainer(
            tiny_cfg.replace(precision=precision), digits_data, torch.device("cpu")
        )
        trainer.fit(until_epoch=2, progress=False)
        assert all(p.dtype == torch.float32 for p in trainer.supernet.parameters())
        runs[precision] = trainer.history
    assert runs["bf16"]["supernet_loss"] != runs["fp32"]["supernet_loss"]  # bf16 did run
    for key in ("supernet_loss", "simplex_loss"):
        fp32, bf16 = runs["fp32"][key][-1], runs["bf16"][key][-1]
        assert bf16 == pytest.approx(fp32, rel=0.05), key


# One step of either kind from the same state sums the same terms (the masked step adds exact zeros)
# but, where an output feeds several edges (the stem's), in another order: its result may differ by
# a rounding of the summed gradient, a few float32 ulp of the O(1) parameters (1 ulp measured, on
# the stem). 8 ulp at scale 1 is 8 × 2^-23 ≈ 9.5e-7. Over many steps such roundings grow without
# bound (Adam's first updates are lr · sign(g)), so the runs are compared step by step from the
# same state, not at the end of a run.
STEP_TOLERANCE = {"rtol": 8 * 2**-23, "atol": 8 * 2**-23}


@pytest.mark.numerics
def test_compiled_training_follows_the_eager_run_and_compiles_once(
    tiny_cfg, digits_data, monkeypatch
):
    """config key ``compile``: the path-masked step, captured once for every path, makes the same
    updates as the eager step: from the same state, each step of either kind gives the same loss,
    weights, BN statistics, λ and optimiser state, to one step's rounding."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    # inductor's C++ build of the CPU kernels takes minutes on 2 cores; the capture is the same
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: real_compile(fn, backend=counting_backend, dynamic=False)
    )
    torch._dynamo.reset()
    # a simplex-net learning rate that moves λ well away from 1/K within the steps compared, so a
    # compiled step that ignored λ = π(a) would show
    cfg = tiny_cfg.replace(simplex_lr=0.05)
    eager, compiled = (
        KShotTrainer(cfg.replace(compile=c), digits_data, torch.device("cpu"))
        for c in (False, True)
    )
    eager.step = compiled.step = eager.warmup_steps - 2  # two warmup steps, then alternating ones
    kinds = set()
    for _ in range(10):
        out_eager, out_compiled = eager.train_step(), compiled.train_step()
        kinds.add(next(iter(out_eager)))
        torch.testing.assert_close(out_compiled, out_eager, **STEP_TOLERANCE)
        state_eager, state_compiled = eager.state_dict(), compiled.state_dict()
        for part in ("supernet", "simplex"):
            torch.testing.assert_close(
                state_compiled[part], state_eager[part], **STEP_TOLERANCE, msg=part
            )
        # SGD state exists for exactly the parameters some path used
        for part in ("optimizer", "simplex_optimizer"):
            torch.testing.assert_close(state_compiled[part], state_eager[part], **STEP_TOLERANCE)
        compiled.load_state_dict(copy.deepcopy(state_eager), "the eager run")
    assert kinds == {"supernet_loss", "simplex_loss"}
    lam = eager.lam_for(nb201.sample(np.random.default_rng(0)), warmup=False)
    assert (lam - 1 / cfg.k).abs().max() > 1e-3  # λ has left 1/K: the comparison sees it
    assert len(graphs) == 2  # one per kind of step, whatever the paths


@pytest.mark.parametrize("world", [1, 2, 4, 16, 32])
def test_under_ddp_each_image_takes_the_path_it_takes_in_one_process(world):
    """A simplex-net step's m groups over ``world`` ranks: each rank chunks its share of the batch
    into its groups, and every image meets the path of its group in the one-process split."""
    m, batch = 16, 64
    share = batch // world
    for rank in range(world):
        groups = simplex_groups(m, world, rank)
        per_group = share // len(groups)
        for j in range(share):
            image = rank * share + j
            assert groups[j // per_group] == image // (batch // m), (rank, j)


def test_m_and_the_process_count_must_divide_one_another():
    with pytest.raises(ValueError, match="m = 16 and 6 processes"):
        simplex_groups(16, 6, 0)


def test_checkpoint_identity_compares_what_the_checkpoint_records(tiny_cfg, digits_data):
    """A key added to the identity later is not held against older checkpoints; a recorded one
    that differs is refused, and so is a file with no identity at all."""
    cpu = torch.device("cpu")
    state = KShotTrainer(tiny_cfg, digits_data, cpu).state_dict()
    del state["identity"]["simplex_hidden"]  # as written before simplex_hidden joined
    KShotTrainer(tiny_cfg, digits_data, cpu).load_state_dict(state, "old.pt")
    state["identity"]["k"] = 2
    with pytest.raises(ckpt.CheckpointError, match=r"old.pt does not match .*k = 2 \(config: 4\)"):
        KShotTrainer(tiny_cfg, digits_data, cpu).load_state_dict(state, "old.pt")
    del state["identity"]
    with pytest.raises(ckpt.CheckpointError, match="records no identity"):
        KShotTrainer(tiny_cfg, digits_data, cpu).load_state_dict(state, "old.pt")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (inductor, CUDA graphs)"
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_training_on_cuda_follows_eager_inside_cuda_graphs(
    tiny_cfg, digits_data, precision, monkeypatch
):
    """config key ``compile`` as it runs on a GPU: inductor's kernels recorded and replayed as CUDA
    graphs (mode reduce-overhead), one graph per kind of step, none skipped; in fp32 the eager
    run's weights to float precision, in bf16 (a GPU's default) its curves to bf16's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 here
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    runs = {}
    for compiled in (False, True):
        cfg = tiny_cfg.replace(compile=compiled, precision=precision, device="cuda")
        trainer = KShotTrainer(cfg, digits_data, torch.device("cuda"))
        trainer.step = trainer.warmup_steps - 2
        trainer.fit(until_epoch=trainer.warmup_steps // trainer.steps_per_epoch + 1, progress=False)
        runs[compiled] = trainer
    assert counters["stats"]["unique_graphs"] == 2
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] > 0  # graphs recorded
    eager, graphed = (runs[c].supernet.state_dict() for c in (False, True))
    if precision == "fp32":
        for name, value in eager.items():
            if value.is_floating_point():
                assert torch.allclose(graphed[name], value, atol=1e-4, rtol=1e-3), name
    else:
        assert all(v.isfinite().all() for v in graphed.values() if v.is_floating_point())
        for key in ("supernet_loss", "simplex_loss"):
            assert runs[True].history[key] == pytest.approx(
                runs[False].history[key], rel=0.05, nan_ok=True
            )


def _theta_schedule(cfg, data):
    """Run a whole training with stubbed steps; returns, per Θ update, (index of its batch and
    path, lr), and the number of simplex-net steps."""
    trainer = KShotTrainer(cfg, data, torch.device("cpu"))
    theta, simplex = [], []

    def supernet_step(x, y, choice, lam):
        theta.append((choice, trainer.opt.param_groups[0]["lr"]))
        return torch.zeros(()), torch.zeros(())

    trainer.supernet_step = supernet_step
    trainer.simplex_step = lambda x, y, choices: simplex.append(choices) or {}
    trainer.fit(cfg.epochs, progress=False)
    return trainer, theta, simplex


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_supernet_steps_budget_gives_learned_k_shot_the_theta_updates_of_k1(tiny_cfg, digits_data):
    """budget supernet_steps: the learned K-shot run makes as many Θ updates as K = 1, on the same
    paths, at the same learning rates (the cosine indexed by Θ updates), plus one simplex-net step
    per Θ update after warmup; budget iterations is Algorithm 2 (half the Θ updates after warmup)."""
    cfg = tiny_cfg.replace(budget="supernet_steps", epochs=3, lr_min=0.01)
    one_shot, one_shot_theta, none = _theta_schedule(cfg.replace(k=1), digits_data)
    learned, theta, simplex = _theta_schedule(cfg, digits_data)
    assert not none and one_shot.total_steps == learned.total_steps
    assert len(one_shot_theta) == one_shot.total_steps
    assert theta == one_shot_theta  # same paths in the same order, same lr at every update
    assert len(simplex) == learned.total_steps - learned.warmup_steps
    assert simplex[0] == learned.paths_for_step(learned.total_steps, cfg.m)  # its own paths
    assert learned.history["epoch"] == one_shot.history["epoch"] == [1, 2, 3]
    assert one_shot_theta[-1][1] == pytest.approx(0.01, rel=0.05)  # cosine down to lr_min

    paper, paper_theta, paper_simplex = _theta_schedule(
        cfg.replace(budget="iterations"), digits_data
    )
    after = paper.total_steps - paper.warmup_steps
    assert len(paper_theta) == paper.warmup_steps + after // 2 + after % 2
    assert len(paper_simplex) == after // 2
    assert paper.step == paper.total_steps == one_shot.step


def test_fixed_one_over_k_is_one_shot_at_lr_over_k_and_weight_decay_times_k(tiny_cfg, digits_data):
    """λ = 1/K with SGD (Nesterov momentum, weight decay) moves the merged weight θ̃ = mean_k θ_k
    exactly as one-shot SGD at lr / K and weight decay × K: the experiment's lr-matched one-shot
    arm. In float64 the two runs' losses agree to rounding."""
    from kshot.experiments.arms import arm_config

    base = tiny_cfg.replace(k=8, augment=False)
    fixed_cfg, matched_cfg = arm_config(base, "B"), arm_config(base, "A-lr")
    assert (matched_cfg.k, fixed_cfg.k, fixed_cfg.lambda_mode) == (1, 8, "fixed")
    fixed = KShotTrainer(fixed_cfg, digits_data, torch.device("cpu"))
    matched = KShotTrainer(matched_cfg, digits_data, torch.device("cpu"))
    fixed.supernet.double()
    matched.supernet.double()
    with torch.no_grad():
        for p1, p8 in zip(matched.supernet.parameters(), fixed.supernet.parameters(), strict=True):
            p1.copy_(p8.mean(0, keepdim=True))
    losses = {}
    for name, trainer in (("fixed", fixed), ("matched", matched)):
        trainer.batch_for_step = lambda step, t=trainer: (lambda xy: (xy[0].double(), xy[1]))(
            KShotTrainer.batch_for_step(t, step)
        )
        losses[name] = [float(trainer.train_step()["supernet_loss"]) for _ in range(30)]
    assert losses["fixed"] == pytest.approx(losses["matched"], rel=1e-9, abs=1e-12)
    assert losses["fixed"][0] != pytest.approx(losses["fixed"][-1], rel=1e-3)  # it trained
    for p1, p8 in zip(matched.supernet.parameters(), fixed.supernet.parameters(), strict=True):
        torch.testing.assert_close(p1[0], p8.mean(0), rtol=1e-9, atol=1e-12)


def test_curves_follow_the_codes_of_fixed_probe_paths(tiny_cfg, digits_data):
    """Per epoch, the λ statistics of the same probe paths: uniform in warmup and under fixed 1/K,
    moving away from it once the simplex-net learns."""
    learned = KShotTrainer(tiny_cfg.replace(simplex_lr=0.05), digits_data, torch.device("cpu"))
    learned.fit(tiny_cfg.epochs, progress=False)
    fixed = KShotTrainer(tiny_cfg.replace(lambda_mode="fixed"), digits_data, torch.device("cpu"))
    fixed.fit(tiny_cfg.epochs, progress=False)
    k = tiny_cfg.k
    for trainer in (learned, fixed):
        assert len(trainer.history["lam_tv"]) == tiny_cfg.epochs
        assert trainer.history["lam_tv"][0] == pytest.approx(0.0, abs=1e-7)  # warmup: 1/K
        assert trainer.history["lam_max"][0] == pytest.approx(1 / k)
        assert trainer.history["lam_cosine"][0] == pytest.approx(1.0)
    assert fixed.history["lam_tv"][-1] == pytest.approx(0.0, abs=1e-7)
    assert learned.history["lam_tv"][-1] > 1e-3
    assert learned.history["lam_max"][-1] > 1 / k
    assert learned.history["lam_entropy"][-1] < math.log(k)


def test_code_statistics_of_uniform_one_hot_and_shared_codes():
    k = 4
    uniform = code_statistics(np.full((3, k), 1 / k))
    assert uniform["mean"]["max"] == pytest.approx(1 / k)
    assert uniform["mean"]["sq_norm"] == pytest.approx(1 / k)
    assert uniform["mean"]["entropy"] == pytest.approx(math.log(k))
    assert uniform["mean"]["tv"] == pytest.approx(0.0) and uniform["near_uniform"]
    one_hot = code_statistics(np.eye(k))  # every path its own slot
    assert one_hot["mean"]["tv"] == pytest.approx(1 - 1 / k) and not one_hot["near_uniform"]
    assert one_hot["mean"]["cosine"] == pytest.approx(0.0)
    assert one_hot["mean"]["entropy"] == pytest.approx(0.0)
    shared = code_statistics(np.array([[0.7, 0.1, 0.1, 0.1]] * 2 + [[0.1, 0.7, 0.1, 0.1]]))
    # pairs: (0,1) identical, (0,2) and (1,2) cos = (0.07 + 0.07 + 0.01 + 0.01) / 0.52
    assert shared["mean"]["cosine"] == pytest.approx((1 + 2 * 0.16 / 0.52) / 3)
    assert shared["per_path"]["max"].tolist() == pytest.approx([0.7, 0.7, 0.7])
    # pairs (0,1) at distance 0, (0,2) and (1,2) at ½(0.6 + 0.6) = 0.6
    assert shared["mean"]["pairwise_tv"] == pytest.approx(2 * 0.6 / 3)
    assert uniform["mean"]["pairwise_tv"] == pytest.approx(0.0)
    assert one_hot["mean"]["pairwise_tv"] == pytest.approx(1.0)


def test_the_mean_pairwise_distance_between_codes_is_that_of_every_pair():
    """The sorted-order sum equals ½‖λ_i − λ_j‖₁ averaged over every pair, pair by pair."""
    rng = np.random.default_rng(3)
    for paths, k in ((2, 2), (7, 4), (40, 8)):
        codes = rng.dirichlet(np.ones(k), size=paths)
        codes[1] = codes[0]  # a repeated code
        pairs = [
            0.5 * np.abs(codes[i] - codes[j]).sum()
            for i in range(paths)
            for j in range(i + 1, paths)
        ]
        assert code_statistics(codes)["mean"]["pairwise_tv"] == pytest.approx(np.mean(pairs))
    assert code_statistics(np.array([[0.5, 0.5]]))["mean"]["pairwise_tv"] == 0.0


def test_a_shared_warmup_hands_on_its_state_but_not_its_simplex_lr(tiny_cfg, digits_data, tmp_path):
    """Runs that differ in simplex_lr share one warmup checkpoint: resumed from it, each trains
    the simplex-net at its own config's learning rate, not the one the warmup was made at."""
    warm = KShotTrainer(tiny_cfg, digits_data, torch.device("cpu"))
    warm.fit(tiny_cfg.warmup_epochs, str(tmp_path), progress=False)
    trainer = KShotTrainer(tiny_cfg.replace(simplex_lr=0.05), digits_data, torch.device("cpu"))
    assert trainer.resume(str(tmp_path)) is not None
    assert trainer.step == warm.step == warm.warmup_steps
    assert [g["lr"] for g in trainer.simplex_opt.param_groups] == [0.05]
    assert warm.simplex_opt.param_groups[0]["lr"] == tiny_cfg.simplex_lr != 0.05
