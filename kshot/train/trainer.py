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
uninterrupted run would. The supernet optimiser is SGD with Nesterov momentum and a per-iteration
cosine schedule from ``lr`` to ``lr_min`` spanning warmup and alternating training (the paper's
recipe); the simplex-net's is Adam (see :class:`kshot.config.Config`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kshot import distributed as dist
from kshot import seeds
from kshot.config import Config, result_keys
from kshot.data.stream import StreamedPart
from kshot.data.transforms import normalize, random_crop_flip
from kshot.nn.simplex import SimplexNet, channel_regularizer, code_statistics, width_positives
from kshot.nn.supernets import build_supernet
from kshot.progress import progress_bar
from kshot.spaces import Path, Space, space_class, space_from_config
from kshot.train import checkpoint as ckpt
from kshot.train.groups import check_processes, simplex_groups

__all__ = [
    "TrainData",
    "KShotTrainer",
    "build_simplex",
    "identity_of",
    "run_keys",
    "uniform_lambda",
    "frozen",
    "curves",
    "space_of",
    "autocast",
    "training_batch",
    "cosine_lambda",
    "random_code",
    "code_of",
    "simplex_groups",
    "check_processes",
    "grouped_loss",
    "compile_grouped_loss",
]


@dataclass
class TrainData:
    """Images of a run's split as uint8 (normalised per batch): held in memory, or the training
    part streamed from a class-folder tree (config key ``data_loading``)."""

    train_images: torch.Tensor | StreamedPart
    train_labels: torch.Tensor
    valid_images: torch.Tensor | StreamedPart
    valid_labels: torch.Tensor
    mean: list[float]
    std: list[float]
    num_classes: int
    test_images: torch.Tensor | StreamedPart | None = None
    test_labels: torch.Tensor | None = None
    # Digests of the split file's content and of the dataset's training part (stream: its list of
    # files): checkpoints record them, so that a supernet is never scored on another split, whose
    # validation images it may have trained on.
    split_digest: str = ""
    dataset_digest: str = ""

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.train_images.shape[-1])

    def prepare(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 images → normalised float32 on ``device``, channels-last (faster convolutions and
        pooling on CPU and GPU alike)."""
        x = normalize(images.to(device), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last)


def identity_of(cfg: Config, data: TrainData) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed or scored under ``cfg``: the space, K, the
    network's shape and (mbv2) whether widths are searched, the simplex-net's size and inputs, the
    image resolution, the split and the dataset. Keyed by config key where there is one, so that
    a mismatch names the key to change."""
    return {
        "search_space": cfg.search_space,
        "k": cfg.k,
        **space_class(cfg.search_space).identity(cfg),
        "simplex_hidden": cfg.simplex_hidden,
        "resolution": data.resolution,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "split": data.split_digest,
        "dataset": data.dataset_digest,
    }


def run_keys(cfg: Config, alternating: bool) -> dict[str, Any]:
    """The config keys a checkpoint's weights follow from (:func:`kshot.config.result_keys`): the
    warmup stage's, and once alternating training has begun (``alternating``) the train stage's
    too. A checkpoint folder is resumed only by a run equal in all of them."""
    values = cfg.to_dict()
    stages = ("warmup", "train") if alternating else ("warmup",)
    return {key: values[key] for key in result_keys(*stages)}


def space_of(cfg: Config, data: TrainData | None = None) -> Space:
    """The run's search space; with ``data``, at its network shape (``space.shape``: the supernet's
    and the space's ``build`` / ``flops`` / ``params`` arguments) and image resolution (what
    FLOPs and networks need; parsing and encoding paths need neither)."""
    if data is None:
        return space_from_config(cfg)
    return space_from_config(
        cfg,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        resolution=data.resolution,
    )


def build_simplex(cfg: Config, space: Space) -> SimplexNet:
    """The simplex-net over ``space``'s path codes."""
    return SimplexNet(space.arch_dim, cfg.k, hidden=cfg.simplex_hidden, width_dim=space.width_dim)


def autocast(cfg: Config, device: torch.device) -> torch.autocast:
    """The forward passes' autocast context for config key ``precision`` on ``device`` (auto: bf16
    on GPUs with native bf16, compute capability 8.0 and up; fp32 elsewhere)."""
    native_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def uniform_lambda(k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.full((k,), 1.0 / k, device=device)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Θ frozen: gradients flow through the module to its inputs (λ) but not to its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def cosine_lambda(total_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """Per-step cosine annealing from 1 to ``floor`` over ``total_steps`` (a LambdaLR factor;
    ``floor`` = lr_min / lr)."""
    return lambda it: (
        floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(it, total_steps) / total_steps))
    )


def random_code(space: Space, seed: int, path: Path, k: int) -> np.ndarray:
    """The code of ``path`` under lambda_mode random (paper Table 6): drawn once from the uniform
    distribution on the K-simplex (Dirichlet(1, …, 1)), keyed by the seed and the path's string,
    so every step and the scoring see the same code."""
    key = int.from_bytes(hashlib.sha256(space.format(path).encode()).digest()[:8], "big")
    return seeds.rng(seed, seeds.RANDOM_LAMBDA, key).dirichlet(np.ones(k))


def code_of(
    cfg: Config, space: Space, simplex: SimplexNet, device: torch.device
) -> Callable[[Path], torch.Tensor]:
    """λ of a path after warmup, by config key ``lambda_mode``: π(a) of the simplex-net
    (learned), 1/K (fixed, and K = 1 where λ = [1]), or the path's fixed random code."""
    if cfg.k == 1 or cfg.lambda_mode == "fixed":
        return lambda path: uniform_lambda(cfg.k, device)
    if cfg.lambda_mode == "random":
        return lambda path: torch.as_tensor(
            random_code(space, cfg.seed, path, cfg.k), dtype=torch.float32, device=device
        )

    @torch.no_grad()
    def learned(path: Path) -> torch.Tensor:
        return simplex(*space.codes([path], device))[0]

    return learned


def training_batch(
    data: TrainData,
    *,
    seed: int,
    step: int,
    steps_per_epoch: int,
    batch_size: int,
    augment: bool,
    device: torch.device,
    shard: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of iteration ``step`` (this rank's share of it when ``shard``), normalised.

    The epoch's order comes from ``(seed, epoch)`` and the augmentation from ``(seed, step)``; both
    are drawn for the global batch and then sliced, so the split over ranks changes nothing. A
    streamed training part follows the same contract with ImageNet's augmentation
    (:mod:`kshot.data.stream`).
    """
    if isinstance(data.train_images, StreamedPart):
        sharded = shard and dist.world_size() > 1
        images, labels = data.train_images.batch(
            seed=seed,
            step=step,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            augment=augment,
            rank=dist.rank() if sharded else 0,
            world=dist.world_size() if sharded else 1,
        )
        return data.prepare(images, device), labels.to(device)
    epoch, pos = divmod(step, steps_per_epoch)
    order = seeds.rng(seed, epoch, seeds.EPOCH_ORDER).permutation(len(data.train_labels))
    idx = torch.from_numpy(order[pos * batch_size : (pos + 1) * batch_size])
    x = data.prepare(data.train_images[idx], device)
    if augment:  # on the device, drawn on the CPU: the same crops and flips wherever it runs
        gen = torch.Generator().manual_seed(
            int(seeds.rng(seed, step, seeds.AUGMENT).integers(2**62))
        )
        x = random_crop_flip(
            x, gen, pad=4 if data.resolution >= 16 else 1, flip=data.in_channels == 3
        ).contiguous(memory_format=torch.channels_last)
    y = data.train_labels[idx].to(device)
    if not shard or dist.world_size() == 1:
        return x, y
    share = batch_size // dist.world_size()
    mine = slice(dist.rank() * share, (dist.rank() + 1) * share)
    return x[mine], y[mine]


def compile_grouped_loss(supernet: nn.Module, device: torch.device) -> Callable[..., Any]:
    """:func:`grouped_loss` through ``supernet.forward_masked``, whose graph is the same for every
    path, under ``torch.compile`` (on CUDA in mode "reduce-overhead": CUDA graphs). Call it with
    the paths' one-hot codes (:meth:`Space.codes`) where :func:`grouped_loss` takes paths."""
    return torch.compile(
        functools.partial(grouped_loss, supernet.forward_masked),
        mode="reduce-overhead" if device.type == "cuda" else None,
        dynamic=False,
    )


def grouped_loss(
    forward: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    paths: Sequence[Any],
    lams: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over groups of the cross-entropy, correct predictions): the batch in ``len(paths)``
    equal groups, group i through ``forward(x_i, paths[i], lams[i])``."""
    losses, correct = [], torch.zeros((), dtype=torch.long, device=x.device)
    for xg, yg, path, lam in zip(
        x.chunk(len(paths)), y.chunk(len(paths)), paths, lams, strict=True
    ):
        logits = forward(xg, path, lam)
        losses.append(F.cross_entropy(logits, yg))
        correct = correct + (logits.argmax(1) == yg).sum()
    return torch.stack(losses).mean(), correct


class KShotTrainer:
    """Owns the supernet, the simplex-net, their optimisers and the iteration counter.

    Args:
        cfg: the run configuration.
        data: the split's images.
        device: where to train.
        space: the run's space at the data's shape (:func:`space_of`; built when not given).
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
        self.opt = torch.optim.SGD(
            self.supernet.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
        self.simplex_opt = torch.optim.Adam(self.simplex.parameters(), lr=cfg.simplex_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.opt, cosine_lambda(self.total_steps, cfg.lr_min / cfg.lr)
        )
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
            "identity": identity_of(self.cfg, self.data),
            "run": run_keys(self.cfg, alternating=self.step > self.warmup_steps),
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
        ckpt.check_identity(state, identity_of(self.cfg, self.data), uri)
        if same_run:
            ckpt.check_same_run(state, run_keys(self.cfg, alternating=True), uri)
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
        groups of its share of the batch (:func:`simplex_groups`) and computes all m λ for r_c."""
        self.supernet.train()
        arch_codes, width_codes = self.space.codes(choices, self.device)
        lams = self.simplex(arch_codes, width_codes)
        mine = slice(self.groups.start, self.groups.stop)
        with frozen(self.supernet):
            loss, _ = self._loss(x, y, choices[mine], lams[mine], arch_codes[mine])
            out = {"simplex_loss": dist.all_reduce_mean(loss)}  # over all m groups
            if self.space.has_widths:
                widths = torch.tensor(
                    [self.space.width_factors(c) for c in choices], dtype=torch.float64
                )
                positives = width_positives(
                    [self.space.ops(c) for c in choices], widths, self.cfg.rc_threshold
                )
                reg = channel_regularizer(lams, positives, self.cfg.tau)
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
