"""Process-group helpers for workers started by torchrun (or run alone).

Every rank samples the same path(s) at every step (seeds derive from ``(seed, step)``), so the same
parameters receive gradients on every rank. We therefore do not wrap the supernet in DDP (which would
either hang on unused K-shot slots or all-reduce the whole dictionary with ``find_unused_parameters``):
:func:`all_reduce_gradients` averages, in one coalesced all-reduce, exactly the gradients that exist.
A supernet's K-slot gradients need only 1/K of those bytes: :func:`all_reduce_kshot_gradients`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "init_from_env",
    "shutdown",
    "rank",
    "world_size",
    "is_main",
    "device_for_rank",
    "all_reduce_gradients",
    "all_reduce_kshot_gradients",
    "broadcast_buffers",
    "all_reduce_mean",
    "gather_lists",
    "broadcast_object",
    "barrier",
]

T = TypeVar("T")


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes (if any) and return this rank's device.

    NCCL on GPU, gloo on CPU. Without ``WORLD_SIZE`` > 1 nothing is initialised.
    """
    dev = device_for_rank(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return dev


def shutdown(*, completed: bool = True) -> None:
    """Leave the process group; every rank calls it once, when it needs no more collectives.

    A rank that ``completed`` its work first waits in a barrier, so that no rank destroys the group
    while a peer is still in a collective, and keeps that barrier's work object until the group is
    destroyed. Gloo's barrier work holds the collectives still in flight when it starts: torch
    before 2.8 destroys a gloo group holding the GIL and joins its worker threads, and a worker
    thread that drops the last reference to a collective's tensors needs the GIL to release them,
    so the rank hangs (pytorch/pytorch#154976). Held here, they are released by this thread after
    the join.
    A rank that failed (``completed=False``) skips the barrier: its peers may never reach it.
    """
    if not dist.is_initialized():
        return
    if not completed:
        dist.destroy_process_group()
        return
    in_flight = dist.barrier(async_op=True)
    in_flight.wait()
    dist.destroy_process_group()
    del in_flight  # the collectives' tensors are released here, by this thread, holding the GIL


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def device_for_rank(device: str = "auto") -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is wanted and present, else the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device' = 'cuda': no CUDA device is visible to this process")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients that exist across ranks, in one flat all-reduce."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for g, mean in zip(grads, _mean_over_ranks(grads), strict=True):
        g.copy_(mean)


def all_reduce_kshot_gradients(slots: Iterable[torch.nn.Parameter], lam: torch.Tensor) -> None:
    """:func:`all_reduce_gradients` for K-slot parameters merged by ``lam`` (shape ``(K,)``), with
    K times fewer bytes.

    The merged weight ``θ̃ = Σ_k λ_k θ_k`` is the only use of the slots, so slot k's gradient is
    ``λ_k g``, ``g`` being θ̃'s. The ranks share λ, so they average ``Σ_k λ_k g`` alone and every
    slot gets ``λ_k / Σ_k λ_k`` times the average: what averaging the slots' own gradients gives,
    to rounding, at the communication cost of a one-shot supernet.
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in slots if p.grad is not None]
    share = lam.detach() / lam.detach().sum()
    for g, mean in zip(grads, _mean_over_ranks([g.sum(0) for g in grads]), strict=True):
        torch.mul(share.to(g.dtype).view(-1, *[1] * mean.dim()), mean, out=g)


def _mean_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's mean over ranks, in one flat all-reduce (views into one buffer)."""
    if not tensors:
        return []
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= world_size()
    return list(_unflatten_dense_tensors(flat, tensors))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (e.g. BN running statistics, which each rank gathers from its own share
    of the batch) on every rank, so that every rank holds the model rank 0 saves."""
    if world_size() == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is left alone)."""
    out = values.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out)
        out /= world_size()
    return out


def gather_lists(items: list[T]) -> list[T]:
    """Concatenate every rank's list in rank order (all ranks get the result)."""
    if world_size() == 1:
        return list(items)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
