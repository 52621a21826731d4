"""Training a stand-alone network from scratch: NAS-Bench-201's recipe (retraining and ground truth).

SGD with Nesterov momentum 0.9, learning rate cosine-annealed per iteration from ``retrain_lr``
(0.1), weight decay 5e-4, batch 256, crop-and-flip augmentation (Dong & Yang, ICLR 2020, §3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kshot import distributed as dist
from kshot.config import Config
from kshot.spaces import nb201
from kshot.train.trainer import TrainData, cosine_lambda, network_shape, training_batch

__all__ = ["train_standalone", "evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    data: TrainData,
    batch_size: int,
    device: torch.device,
) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on uint8 ``images``."""
    model.eval()
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        correct += int((model(data.prepare(x, device)).argmax(1) == y.to(device)).sum())
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
        cfg: channels, cells, retraining hyper-parameters, augmentation.
        data: the split's images (``test_images`` must be present).
        device: where to train.
        epochs: training epochs.
        seed: seeds the initial weights, the batches and the augmentation.
        data_parallel: split each batch over the ranks and average gradients (retraining one
            network on many workers); False trains on this process alone (one of many paths).
        progress: show a progress bar.

    Returns:
        The trained network and its per-epoch curves (``loss``, ``train_acc``, ``test_acc``, ``lr``).
    """
    torch.manual_seed(seed)
    model = nb201.build(arch, **network_shape(cfg, data)).to(device)
    batch = min(cfg.retrain_batch_size, len(data.train_labels))
    world = dist.world_size() if data_parallel else 1
    batch -= batch % world
    steps_per_epoch = len(data.train_labels) // batch
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.retrain_lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=cfg.retrain_weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps_per_epoch * epochs))
    history: dict[str, list[float]] = {
        "epoch": [],
        "loss": [],
        "train_acc": [],
        "test_acc": [],
        "lr": [],
    }
    show = progress and (dist.is_main() or not data_parallel)
    for epoch in tqdm(
        range(epochs),
        desc=nb201.format_arch(arch)[:40],
        unit="epoch",
        leave=False,
        disable=not show,
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
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if data_parallel:
                dist.all_reduce_gradients(model.parameters())
            opt.step()
            sched.step()
            losses.append(loss.item())
            accs.append(float((logits.argmax(1) == y).float().mean()) * 100)
        history["epoch"].append(epoch + 1)
        history["loss"].append(sum(losses) / len(losses))
        history["train_acc"].append(sum(accs) / len(accs))
        history["lr"].append(opt.param_groups[0]["lr"])
        history["test_acc"].append(
            evaluate(model, data.test_images, data.test_labels, data, cfg.eval_batch_size, device)
        )
    return model, history
