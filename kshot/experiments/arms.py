"""The arms of the ranking experiment: does a K-shot supernet rank NAS-Bench-201 paths better than
one-shot?

Arms (:data:`ARMS`), each run on every seed with the same split, the same seeded set of ranked paths
(its SHA-256 recorded and checked) and the same BN-recalibration images
(:mod:`kshot.experiments.ranking`):

* ``A``: one-shot, K = 1 (SPOS).
* ``A-lr``: one-shot at the fixed-1/K arm's effective hyper-parameters (lr / K, lr_min / K, weight
  decay × K): λ = 1/K moves the merged weight exactly so (``B``'s lead over ``A``, if any, is then a
  hyper-parameter effect).
* ``B``: K slots, λ fixed at 1/K (Table 6).
* ``C``: K-shot, λ learned by the simplex-net, as many supernet (Θ) updates as ``A``.
* ``C-iter`` (C′): K-shot, the paper's Algorithm 2 at equal iterations (half the Θ updates).
* ``D``: K slots, one random code per path drawn once (Table 6).

Each arm is a change of the base configuration (:func:`arm_config`) and names the warmup it shares
with the seed's other arms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kshot.config import Config

__all__ = ["Arm", "ARMS", "arm_config"]


@dataclass(frozen=True)
class Arm:
    """One arm: its label, what it is, and its config changes for ``k`` slots."""

    label: str
    what: str
    changes: Callable[[Config, int], dict[str, Any]]
    warmup: Callable[[int], str]  # the warmup it shares with the seed's other arms


ARMS: dict[str, Arm] = {
    "A": Arm(
        "A (K = 1)",
        "one-shot (SPOS)",
        lambda base, k: {"k": 1, "lambda_mode": "learned", "budget": "supernet_steps"},
        lambda k: "warmup-k1",
    ),
    "A-lr": Arm(
        "A-lr (K = 1, lr / K)",
        "one-shot at the fixed-1/K arm's effective lr / K, lr_min / K and weight decay × K",
        lambda base, k: {
            "k": 1,
            "lambda_mode": "learned",
            "budget": "supernet_steps",
            "lr": base.lr / k,
            "lr_min": base.lr_min / k,
            "weight_decay": base.weight_decay * k,
        },
        lambda k: f"warmup-k1-lr-over-{k}",
    ),
    "B": Arm(
        "B (fixed 1/K)",
        "K slots, λ = 1/K (Table 6)",
        lambda base, k: {"k": k, "lambda_mode": "fixed", "budget": "supernet_steps"},
        lambda k: f"warmup-k{k}",
    ),
    "C": Arm(
        "C (learned, equal Θ)",
        "K-shot, λ = π(a) learned, as many Θ updates as K = 1",
        lambda base, k: {"k": k, "lambda_mode": "learned", "budget": "supernet_steps"},
        lambda k: f"warmup-k{k}",
    ),
    "C-iter": Arm(
        "C′ (learned, equal iterations)",
        "K-shot, λ = π(a) learned, the paper's Algorithm 2 at equal iterations",
        lambda base, k: {"k": k, "lambda_mode": "learned", "budget": "iterations"},
        lambda k: f"warmup-k{k}",
    ),
    "D": Arm(
        "D (random)",
        "K slots, one random code per path drawn once (Table 6)",
        lambda base, k: {"k": k, "lambda_mode": "random", "budget": "supernet_steps"},
        lambda k: f"warmup-k{k}",
    ),
}


def arm_config(base: Config, arm: str, k: int = 8) -> Config:
    """The configuration of ``arm`` (a key of :data:`ARMS`) with ``k`` slots where it has K."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: choose from {', '.join(ARMS)}")
    return base.replace(**ARMS[arm].changes(base, k))
