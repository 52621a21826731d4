"""Named random streams: everything random in a run derives from its seed and one of these keys.

``rng(seed, …, KEY)`` is ``numpy.random.default_rng([seed, …, KEY])``. Keying every draw by what it
is for (and by the iteration, epoch or image it belongs to) is what makes DDP ranks agree without
communication, resumed runs repeat the uninterrupted ones, and the number of data-loading workers
irrelevant.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "rng",
    "PATHS",
    "EPOCH_ORDER",
    "AUGMENT",
    "RANDOM_LAMBDA",
    "SEARCH",
    "BN_IMAGES",
    "STANDALONE_PATHS",
    "RANK_PATHS",
    "CHANNEL_STATS",
    "CODE_PROBE",
]

PATHS = 1  # (seed, step, PATHS): the path(s) an iteration samples
EPOCH_ORDER = 2  # (seed, epoch, EPOCH_ORDER): the order of the training images in an epoch
AUGMENT = 3  # (seed, step, AUGMENT[, image]): the augmentation of an iteration (of one image)
RANDOM_LAMBDA = 4  # (seed, RANDOM_LAMBDA, path key): a path's fixed code under lambda_mode "random"
SEARCH = 4  # (seed, SEARCH): NSGA-II's sampling, mutation and crossover
BN_IMAGES = 5  # (seed, BN_IMAGES): the training images of BN recalibration
STANDALONE_PATHS = 6  # (seed, STANDALONE_PATHS): the paths the standalone stage trains
RANK_PATHS = 7  # (seed, RANK_PATHS): the paths the rank stage scores
CHANNEL_STATS = 8  # (seed, CHANNEL_STATS): the streamed images that give mean and std
CODE_PROBE = 9  # (seed, CODE_PROBE): the paths whose codes are followed over training


def rng(*key: int) -> np.random.Generator:
    """The generator of one stream: ``rng(seed, step, PATHS)``."""
    return np.random.default_rng([int(k) for k in key])
