"""Training a stand-alone network from scratch (retraining the found path, and ground truth).

Two recipes (config key ``retrain_recipe``):

* ``nb201``, NAS-Bench-201's (Dong & Yang, ICLR 2020, §3): SGD with Nesterov momentum 0.9, learning
  rate cosine-annealed per iteration from ``retrain_lr`` (0.1), weight decay 5e-4, batch 256.
* ``imagenet``, the paper's for ImageNet (after MnasNet / EfficientNet): RMSProp with momentum 0.9 (decay
  0.9; the reference's eps 1e-3 sits inside the square root, so PyTorch's RMSprop, which adds it
  outside, gets √1e-3, which approximates it while the squared-gradient average is ≪ 1e-3), batch
  1024, lr warmed up linearly from 0 to ``retrain_lr`` (0.128) over ``retrain_warmup_epochs`` (5),
  then multiplied by ``retrain_lr_decay`` (0.97) every ``retrain_decay_epochs`` (2.4) epochs
  counted from the start (staircase, as the reference implementation's ``exponential_decay``),
  weight decay on every parameter but BN's (as the reference's L2 term, which skips
  ``batch_normalization`` variables), and an exponential moving average of the weights and BN
  statistics with decay ``retrain_ema_decay`` (0.9999), which is what is evaluated and returned.
  As TensorFlow's ``ExponentialMovingAverage(num_updates=global_step)`` of the reference, the decay
  of update t is ``min(decay, (1 + t) / (10 + t))``, so the average forgets the initial weights
  early on instead of keeping 0.9999 of them per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from kshot import distributed as dist
from kshot.config import Config
from kshot.data.stream import StreamedPart
from kshot.progress import progress_bar
from kshot.train.builders import autocast, cosine_lambda, space_of
from kshot.train.run_data import TrainData, training_batch

__all__ = [
    "train_standalone",
    "evaluate",
    "imagenet_lambda",
    "retrain_schedule",
    "tf_ema_update",
]


_RMSPROP_EPS = 1e-3**0.5  # approximates TensorFlow's eps 1e-3 inside sqrt(v + eps) while v ≪ 1e-3


def imagenet_lambda(
    steps_per_epoch: int, warmup_epochs: float, decay: float, decay_epochs: float
) -> Callable[[int], float]:
    """The paper's retraining lr factor at iteration ``step`` (a LambdaLR factor of the peak lr):
    ``step / warmup_steps`` during warmup, then ``decay ** floor(step / decay_steps)``."""
    warmup_steps = warmup_epochs * steps_per_epoch
    decay_steps = decay_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return decay ** math.floor(step / decay_steps)

    return factor


def tf_ema_update(decay: float) -> Callable[[list, list, torch.Tensor | int], None]:
    """An ``AveragedModel`` ``multi_avg_fn``: the EMA with TensorFlow's ``num_updates`` warm-up,
    decay ``min(decay, (1 + t) / (10 + t))`` at update t."""

    def update(averaged: list, current: list, num_averaged: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # BN's batch counters: the model's own
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
            return
        t = int(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + t) / (10 + t)))

    return update


def retrain_schedule(
    cfg: Config, model: nn.Module, steps_per_epoch: int, epochs: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser and per-iteration lr schedule of ``cfg.retrain_recipe``."""
    if cfg.retrain_recipe == "imagenet":
        bn = {
            id(p)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)
        }
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in bn]},
            {"params": [p for p in model.parameters() if id(p) in bn], "weight_decay": 0.0},
        ]
        opt: torch.optim.Optimizer = torch.optim.RMSprop(
            groups,
            lr=cfg.retrain_lr,
            alpha=0.9,
            eps=_RMSPROP_EPS,
            momentum=0.9,
            weight_decay=cfg.retrain_weight_decay,
        )
        factor = imagenet_lambda(
            steps_per_epoch,
            cfg.retrain_warmup_epochs,
            cfg.retrain_lr_decay,
            cfg.retrain_decay_epochs,
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(),
            lr=cfg.retrain_lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.retrain_weight_decay,
        )
        factor = cosine_lambda(steps_per_epoch * epochs)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor | StreamedPart,
    labels: torch.Tensor,
    data: TrainData,
    batch_size: int,
    device: torch.device,
    shard: bool = False,
) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on uint8 ``images``; with ``shard`` the ranks
    take the batches round robin and add up their counts (every rank gets the result)."""
    model.eval()
    rank, world = (dist.rank(), dist.world_size()) if shard else (0, 1)
    if isinstance(images, StreamedPart):
        pairs = images.batches(batch_size, rank=rank, world=world)
    else:
        batches = zip(images.split(batch_size), labels.split(batch_size), strict=True)
        pairs = (pair for i, pair in enumerate(batches) if i % world == rank)
    correct = 0
    for x, y in pairs:
        correct += int((model(data.prepare(x, device)).argmax(1) == y.to(device)).sum())
    if world > 1:
        correct = sum(dist.gather_lists([correct]))
    return 100.0 * correct / len(labels)


def train_standalone(
    arch: str | Sequence[int],
    cfg: Config,
    data: TrainData,
    device: torch.device,
    epochs: int,
    seed: int,
    *,
    data_parallel: bool,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train ``arch``'s stand-alone network for ``epochs`` and evaluate it on the test split.

    Args:
        arch: the path.
        cfg: the network shape, the retraining recipe and its hyper-parameters, augmentation.
        data: the split's images (``test_images`` must be present).
        device: where to train.
        epochs: training epochs.
        seed: seeds the initial weights, the batches and the augmentation.
        data_parallel: split each batch over the ranks and average gradients (retraining one
            network on many workers); False trains on this process alone (one of many paths).
        progress: show a progress bar.

    Returns:
        The trained network (the EMA of its weights under the imagenet recipe) and its per-epoch
        curves (``loss``, ``train_acc``, ``test_acc``, ``lr``).
    """
    space = space_of(cfg, data)
    torch.manual_seed(seed)
    model = space.build(arch).to(device)
    batch = min(cfg.retrain_batch_size, len(data.train_labels))
    world = dist.world_size() if data_parallel else 1
    batch -= batch % world
    steps_per_epoch = len(data.train_labels) // batch
    opt, sched = retrain_schedule(cfg, model, steps_per_epoch, epochs)
    ema = None
    if cfg.retrain_recipe == "imagenet" and cfg.retrain_ema_decay > 0:
        ema = AveragedModel(
            model, multi_avg_fn=tf_ema_update(cfg.retrain_ema_decay), use_buffers=True
        )
    history: dict[str, list[float]] = {
        "epoch": [],
        "loss": [],
        "train_acc": [],
        "test_acc": [],
        "lr": [],
    }
    show = progress and (dist.is_main() or not data_parallel)
    for epoch in progress_bar(
        range(epochs), desc=space.format(arch)[:40], unit="epoch", disable=not show
    ):
        model.train()
        losses, accs = [], []
        for pos in range(steps_per_epoch):
            x, y = training_batch(
                data,
                seed=seed,
                step=epoch * steps_per_epoch + pos,
                steps_per_epoch=steps_per_epoch,
                batch_size=batch,
                augment=cfg.augment,
                device=device,
                shard=data_parallel,
            )
            with autocast(cfg, device):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if data_parallel:
                dist.all_reduce_gradients(model.parameters())
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            # read once per epoch, not per step: a step does not wait for the device's loss
            losses.append(loss.detach())
            accs.append((logits.argmax(1) == y).float().mean())
        epoch_losses = torch.stack(losses).tolist()
        epoch_accs = [100 * acc for acc in torch.stack(accs).tolist()]
        history["epoch"].append(epoch + 1)
        history["loss"].append(sum(epoch_losses) / len(epoch_losses))
        history["train_acc"].append(sum(epoch_accs) / len(epoch_accs))
        history["lr"].append(opt.param_groups[0]["lr"])
        final = model if ema is None else ema.module
        if data_parallel:  # one model on every rank: rank 0's BN statistics, which it saves
            dist.broadcast_buffers(final)
        history["test_acc"].append(
            evaluate(
                final,
                data.test_images,
                data.test_labels,
                data,
                cfg.eval_batch_size,
                device,
                shard=data_parallel,
            )
        )
    return (model if ema is None else ema.module), history
