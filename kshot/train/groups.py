"""How training processes share a batch: which groups of a simplex-net step each runs, and the
check that a number of processes can share one, made before any process starts.

Imports no torch, so the pipeline's config check (which runs where only kfp is installed) can
make it.
"""

from __future__ import annotations

from kshot.config import Config

__all__ = ["simplex_groups", "check_processes"]


def simplex_groups(m: int, world: int, rank: int) -> range:
    """Which of a simplex-net step's ``m`` groups rank ``rank`` of ``world`` runs.

    Group ``i`` is the i-th of ``m`` equal chunks of the global batch, through path ``i``; a rank
    holds the ``world``-th share of the batch, so it runs the groups its share falls in: ``m /
    world`` whole groups each, or one group split over ``world / m`` ranks. Every image therefore
    goes through the same path as in one process, and averaging the ranks' losses gives the mean
    over the m paths (Eq. 8), however many processes there are.
    """
    if world % m and m % world:
        raise ValueError(f"m = {m} and {world} processes: one must divide the other")
    first = rank * m // world
    return range(first, first + max(m // world, 1))


def check_processes(
    cfg: Config, world: int, processes: str = "processes (workers × GPUs per worker)"
) -> None:
    """Refuse ``world`` training processes that cannot share a batch as :class:`kshot.train.trainer.KShotTrainer`
    splits it: each takes ``batch_size / world`` images, and in a simplex-net step runs whole
    groups of the ``m`` paths (or one group shared evenly), see :func:`simplex_groups`.

    Args:
        cfg: the run configuration.
        world: the number of processes.
        processes: what they are and where their number came from, for the message.

    Raises:
        ValueError: naming the config keys and the number of processes.
    """
    if cfg.batch_size % world:
        raise ValueError(
            f"config key 'batch_size' = {cfg.batch_size} must be divisible by the {world} "
            f"{processes} that share each batch"
        )
    if not (cfg.lambda_mode == "learned" and cfg.k > 1):
        return
    try:
        groups = simplex_groups(cfg.m, world, 0)
    except ValueError as e:
        raise ValueError(
            f"config key 'm' = {cfg.m} and {world} {processes}: one must divide the other, so "
            "that each process runs whole groups of a simplex-net step or one group shared evenly"
        ) from e
    if cfg.batch_size // world % len(groups):
        raise ValueError(
            f"config key 'batch_size' = {cfg.batch_size}: the share of {cfg.batch_size // world} "
            f"images of each of the {world} {processes} must split into its {len(groups)} groups "
            f"of a simplex-net step (m = {cfg.m})"
        )
