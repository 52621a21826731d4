"""Warmup and alternating K-shot training (the paper's Algorithms 1 and 2).

* Warmup (``T_w`` epochs): every iteration samples one path uniformly, uses λ = 1/K and updates the
  supernet weights Θ.
* Alternating: iterations alternate, counted from the end of warmup. Even iterations sample one path,
  take λ = π(a) with the simplex-net frozen and update Θ on the whole batch (Eq. 9). Odd iterations
  sample ``m`` paths, split the batch into ``m`` groups of ``b/m`` images, run each group through its
  own path with its own λ_i = π(a_i), keep Θ frozen and update σ on the mean loss (Eq. 8).

The budget (config key ``budget``) is counted in iterations, as Algorithm 2 does (Θ then gets half
the updates a run without simplex-net steps gets), or in supernet steps: the learned run makes as
many Θ updates as K = 1 (twice the iterations after warmup), the cosine schedule advancing on Θ
updates only. In that mode the j-th Θ update takes the batch and path of iteration j of a run
without simplex-net steps, so K = 1, fixed-1/K and learned runs of a seed train Θ on the same
sequence; the simplex-net steps take batches and paths of their own, past the end of that sequence.

Everything random derives from ``(seed, iteration)``: the path(s) of an iteration, its batch (the
epoch's permutation comes from ``(seed, epoch)``) and its augmentation. So every DDP rank samples the
same paths, and a run resumed from a checkpoint at iteration ``s`` continues exactly as the
uninterrupted run would (:mod:`kshot.train.run_data`).

This module holds the schedule: which kind of step an iteration is, the epochs' curves,
checkpoints and resuming. What the networks and optimisers are is :mod:`kshot.train.builders`'s;
the λ and loss math of each step is :mod:`kshot.train.steps`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kshot import distributed as dist
from kshot import seeds
from kshot.config import Config
from kshot.nn.simplex import code_statistics
from kshot.nn.supernets import build_supernet
from kshot.progress import progress_bar
from kshot.spaces import Path, Space
from kshot.train import checkpoint as ckpt
from kshot.train.builders import (
    autocast,
    build_simplex,
    simplex_optimizer,
    space_of,
    supernet_optimizer,
)
from kshot.train.groups import check_processes, simplex_groups
from kshot.train.run_data import TrainData, training_batch
from kshot.train.steps import (
    code_of,
    compile_grouped_loss,
    frozen,
    grouped_loss,
    uniform_lambda,
    width_regularizer,
)

__all__ = ["KShotTrainer", "curves"]


class KShotTrainer:
    """Owns the supernet, the simplex-net, their optimisers and the iteration counter.

    Args:
        cfg: the run configuration.
        data: the split's images.
        device: where to train.
        space: the run's space at the data's shape (:func:`kshot.train.builders.space_of`; built when
            not given).
    """

    def __init__(
        self, cfg: Config, data: TrainData, device: torch.device, space: Space | None = None
    ) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.world = dist.world_size()
        check_processes(cfg, self.world)
        self.simplex_steps = cfg.lambda_mode == "learned" and cfg.k > 1
        if self.simplex_steps:
            self.groups = simplex_groups(cfg.m, self.world, dist.rank())
        n_train = len(data.train_labels)
        if n_train < cfg.batch_size:
            raise ValueError(
                f"config key 'batch_size' = {cfg.batch_size} exceeds the {n_train} training images "
                f"of dataset {cfg.dataset!r}"
            )
        self.steps_per_epoch = n_train // cfg.batch_size
        # Θ updates of a run without simplex-net steps (iterations: total_steps too)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = self.steps_per_epoch * cfg.warmup_epochs
        self.equal_theta = cfg.budget == "supernet_steps" and self.simplex_steps

        self.space = space or space_of(cfg, data)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.supernet = build_supernet(self.space, cfg.k).to(device)
        self.simplex = build_simplex(cfg, self.space).to(device)
        # config key ``compile``: the path-masked forward, whose graph is the same for every path,
        # captured once (on CUDA with CUDA graphs: mode "reduce-overhead")
        self.compiled = compile_grouped_loss(self.supernet, device) if cfg.compile else None
        self.opt, self.scheduler = supernet_optimizer(cfg, self.supernet, self.total_steps)
        self.simplex_opt = simplex_optimizer(cfg, self.simplex)
        self.code = code_of(cfg, self.space, self.simplex, device)
        # the paths whose codes the curves follow (λ statistics per epoch)
        self.probe = [
            self.space.sample(seeds.rng(cfg.seed, seeds.CODE_PROBE, i)) for i in range(_PROBE_PATHS)
        ]
        self.step = 0
        self.input_folders: list[str] = []  # checkpoint folders this trainer only reads
        # This epoch's step values, for its curves: device scalars, read once at the epoch's end
        # (or a checkpoint), so that no step waits for the device to report its loss.
        self.epoch_sums: dict[str, list[torch.Tensor | float]] = {}
        self.history: dict[str, list[float]] = {
            "epoch": [],
            "lr": [],
            "supernet_loss": [],
            "supernet_acc": [],
            "simplex_loss": [],
            **({"channel_reg": []} if self.space.has_widths else {}),
            **{f"lam_{name}": [] for name in _CODE_CURVES},
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "identity": ckpt.identity_of(self.cfg, self.data),
            "run": ckpt.run_keys(self.cfg, alternating=self.step > self.warmup_steps),
            "config": self.cfg.to_dict(),
            "epoch": self.epochs_done(),
            "step": self.step,
            "supernet": self.supernet.state_dict(),
            "simplex": self.simplex.state_dict(),
            "optimizer": self.opt.state_dict(),
            "simplex_optimizer": self.simplex_opt.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "epoch_sums": {k: _floats(v) for k, v in self.epoch_sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any], uri: str, same_run: bool = False) -> None:
        """Continue from ``state`` (read from ``uri``); with ``same_run`` (a checkpoint of this
        run's own output) it must also have been trained with this run's keys."""
        ckpt.check_identity(state, ckpt.identity_of(self.cfg, self.data), uri)
        if same_run:
            ckpt.check_same_run(state, ckpt.run_keys(self.cfg, alternating=True), uri)
        self.supernet.load_state_dict(state["supernet"])
        self.simplex.load_state_dict(state["simplex"])
        self.opt.load_state_dict(state["optimizer"])
        self.simplex_opt.load_state_dict(state["simplex_optimizer"])
        # the simplex-net's lr is constant: the config's, also when the checkpoint is a warmup
        # shared by runs of different simplex_lr (its optimiser state carries the lr it was made at)
        for group in self.simplex_opt.param_groups:
            group["lr"] = self.cfg.simplex_lr
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch_sums = {k: list(v) for k, v in state["epoch_sums"].items()}

    # ------------------------------------------------------------------ sampling and data
    def paths_for_step(self, step: int, count: int) -> list[Path]:
        """The path(s) of iteration ``step``: the same on every rank and on every resume."""
        rng = seeds.rng(self.cfg.seed, step, seeds.PATHS)
        return [self.space.sample(rng)] if count == 1 else self.space.sample_group(rng, count)

    def batch_for_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return training_batch(
            self.data,
            seed=self.cfg.seed,
            step=step,
            steps_per_epoch=self.steps_per_epoch,
            batch_size=self.cfg.batch_size,
            augment=self.cfg.augment,
            device=self.device,
        )

    # ------------------------------------------------------------------ the two kinds of step
    def _loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        paths: Sequence[Path],
        lams: torch.Tensor,
        arch_codes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, correct predictions) of the batch in groups, group i through ``paths[i]``; the
        compiled step reads the paths' one-hot codes (``arch_codes`` when already made)."""
        with autocast(self.cfg, self.device):
            if self.compiled is None:
                return grouped_loss(self.supernet, x, y, paths, lams)
            if arch_codes is None:
                arch_codes = self.space.codes(paths, self.device)[0]
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            return self.compiled(x, y, arch_codes, lams)

    def supernet_step(
        self, x: torch.Tensor, y: torch.Tensor, choice: Path, lam: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update Θ on one path with a fixed λ (Eq. 9); returns (loss, accuracy) as device
        scalars."""
        self.supernet.train()
        loss, correct = self._loss(x, y, [choice], lam.detach()[None])
        self.opt.zero_grad(set_to_none=True)  # unsampled slots keep grad None: SGD skips them
        loss.backward()
        if self.compiled is not None:
            self.supernet.drop_off_path_gradients(choice)
        dist.all_reduce_kshot_gradients(self.supernet.parameters(), lam)
        self.opt.step()
        # copies: a CUDA-graphed step's outputs are overwritten by its next replay
        return loss.detach().clone(), 100.0 * correct.double() / len(y)  # % as retraining's

    def simplex_step(
        self, x: torch.Tensor, y: torch.Tensor, choices: list[Path]
    ) -> dict[str, torch.Tensor]:
        """Update σ on m paths, one per group of b/m images, with Θ frozen (Eq. 8); with width
        search the loss adds α · r_c over the m paths (Eq. 17). Under DDP each rank runs the
        groups of its share of the batch (:func:`kshot.train.groups.simplex_groups`) and computes all m λ for r_c."""
        self.supernet.train()
        arch_codes, width_codes = self.space.codes(choices, self.device)
        lams = self.simplex(arch_codes, width_codes)
        mine = slice(self.groups.start, self.groups.stop)
        with frozen(self.supernet):
            loss, _ = self._loss(x, y, choices[mine], lams[mine], arch_codes[mine])
            out = {"simplex_loss": dist.all_reduce_mean(loss)}  # over all m groups
            if self.space.has_widths:
                reg = width_regularizer(self.cfg, self.space, choices, lams)
                out["channel_reg"] = reg.detach()
                loss = loss + self.cfg.alpha * reg
            self.simplex_opt.zero_grad(set_to_none=True)
            loss.backward()
        dist.all_reduce_gradients(self.simplex.parameters())
        self.simplex_opt.step()
        return out

    def lam_for(self, choice: Path, warmup: bool) -> torch.Tensor:
        """λ of the path of a supernet step: 1/K in warmup, else by ``cfg.lambda_mode``."""
        if warmup:
            return uniform_lambda(self.cfg.k, self.device)
        return self.code(choice)

    def kind_of(self, step: int) -> tuple[bool, int]:
        """(whether iteration ``step`` updates Θ, the index of its batch and paths)."""
        if step < self.warmup_steps or not self.simplex_steps:
            return True, step
        after = step - self.warmup_steps
        if not self.equal_theta:
            return after % 2 == 0, step
        if after % 2 == 0:
            return True, self.warmup_steps + after // 2
        return False, self.total_steps + after // 2

    def iterations_until(self, epoch: int) -> int:
        """Iterations that complete ``epoch`` epochs (in supernet_steps budget, epochs of Θ
        updates: each one after warmup takes twice the iterations)."""
        theta = epoch * self.steps_per_epoch
        if not self.equal_theta or theta <= self.warmup_steps:
            return theta
        return self.warmup_steps + 2 * (theta - self.warmup_steps)

    def epochs_done(self) -> int:
        """Epochs completed at the current iteration."""
        epoch = 0
        while self.iterations_until(epoch + 1) <= self.step:
            epoch += 1
        return epoch

    def train_step(self) -> dict[str, torch.Tensor]:
        """One iteration of Algorithm 1 (warmup) or 2 (alternating), chosen by the counter; returns
        its losses (and accuracy) as device scalars.

        Without a simplex-net to learn (``lambda_mode`` fixed or random, or K = 1 where λ = [1]
        always: SPOS) every iteration is a supernet step.
        """
        step = self.step
        theta, index = self.kind_of(step)
        x, y = self.batch_for_step(index)
        if theta:
            (choice,) = self.paths_for_step(index, 1)
            lam = self.lam_for(choice, warmup=step < self.warmup_steps)
            loss, acc = self.supernet_step(x, y, choice, lam)
            out = {"supernet_loss": loss, "supernet_acc": acc}
        else:
            out = self.simplex_step(x, y, self.paths_for_step(index, self.cfg.m))
        if theta or not self.equal_theta:
            self.scheduler.step()
        self.step += 1
        for key, value in out.items():
            self.epoch_sums.setdefault(key, []).append(value)
        return out

    # ------------------------------------------------------------------ epochs
    def fit(
        self,
        until_epoch: int,
        checkpoint_folder: str | None = None,
        on_checkpoint: Callable[[str], None] | None = None,
        progress: bool = True,
    ) -> None:
        """Train until ``until_epoch`` epochs are complete, checkpointing on rank 0."""
        end = self.iterations_until(until_epoch)
        bar = progress_bar(
            total=until_epoch,
            initial=self.epochs_done(),
            unit="epoch",
            desc="supernet",
            disable=not (progress and dist.is_main()),
        )
        while self.step < end:
            self.train_step()
            every = self.cfg.checkpoint_every_steps
            epoch_done = self.step == self.iterations_until(self.epochs_done())
            if epoch_done:
                self._log_epoch(self.epoch_sums)
                self.epoch_sums = {}
                bar.update(1)
                bar.set_postfix(
                    {
                        k: f"{v[-1]:.3f}"
                        for k, v in self.history.items()
                        if k.endswith("loss") and v and not math.isnan(v[-1])
                    }
                )
            if checkpoint_folder and (epoch_done or (every and self.step % every == 0)):
                self.save(checkpoint_folder, on_checkpoint)
        bar.close()

    def _log_epoch(self, sums: dict[str, list[torch.Tensor | float]]) -> None:
        self.history["epoch"].append(self.epochs_done())
        self.history["lr"].append(self.opt.param_groups[0]["lr"])
        warmup = self.step <= self.warmup_steps
        stats = code_statistics(torch.stack([self.lam_for(path, warmup) for path in self.probe]))[
            "mean"
        ]
        for key in self.history.keys() - {"epoch", "lr"}:
            if key.startswith("lam_"):
                self.history[key].append(stats[key.removeprefix("lam_")])
                continue
            values = _floats(sums.get(key, []))
            self.history[key].append(float(np.mean(values)) if values else float("nan"))

    def save(self, folder: str, on_checkpoint: Callable[[str], None] | None = None) -> None:
        if dist.is_main():
            # an input's checkpoints are never rotated out, whatever folder they are in
            rotate = folder not in self.input_folders
            uri = ckpt.save_checkpoint(folder, self.state_dict(), rotate=rotate)
            if on_checkpoint:
                on_checkpoint(uri)
        dist.barrier()

    def resume(self, output: str | None, *inputs: str) -> str | None:
        """Load the newest checkpoint of ``output`` (this run's own folder, resumed only by the
        same run; None: none), else of the first of ``inputs`` that has one; returns its URI."""
        self.input_folders = list(inputs)
        for folder in (*([output] if output else []), *inputs):
            state = ckpt.load_latest(folder, required=False)
            if state is not None:
                self.load_state_dict(state, state["uri"], same_run=folder == output)
                return state["uri"]
        return None


# Paths whose codes the curves follow, and the statistics followed (kshot.nn.simplex.code_statistics)
_PROBE_PATHS = 64
_CODE_CURVES = ("max", "sq_norm", "entropy", "tv", "cosine", "pairwise_tv")


def _floats(values: list[torch.Tensor | float]) -> list[float]:
    """Step values as floats, the device scalars among them read in one copy."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else [])
    return [next(read) if isinstance(v, torch.Tensor) else v for v in values]


def curves(history: dict[str, list[float]]) -> dict[str, list[float | None]]:
    """History with NaN (no such step in an epoch) as None, for JSON."""
    return {
        k: [None if isinstance(v, float) and math.isnan(v) else v for v in vs]
        for k, vs in history.items()
    }
