"""NSGA-II search under a hard FLOPs budget (Deb et al., 2002; the paper's search).

Objectives: maximise the supernet accuracy of a path (after BN recalibration) and minimise its FLOPs.
The first population is sampled inside the budget. Each generation the ``parents`` most accurate
paths of the population breed ``population`` children, half by mutation and half by crossover, all
inside the budget and none evaluated before (random in-budget paths fill in when the parents'
neighbourhood has no new ones left, as in SPOS); the next population is the NSGA-II survival (rank by
non-dominated sorting, then crowding distance) of parents and children. Non-dominated sorting and
crowding distance are pymoo's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from kshot import seeds
from kshot.progress import progress_bar

__all__ = [
    "SearchSpace",
    "SearchResult",
    "nsga2_search",
    "nsga2_survival",
    "pareto_front",
    "BudgetError",
]

Arch = tuple[int, ...]


class BudgetError(ValueError):
    """No path of the space fits the FLOPs budget, or sampling inside it failed."""


class SearchSpace(Protocol):
    def sample(self, rng: np.random.Generator) -> Arch: ...
    def mutate(self, arch: Sequence[int], rng: np.random.Generator, prob: float = ...) -> Arch: ...
    def crossover(self, a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Arch: ...


@dataclass
class SearchResult:
    """Every evaluated path, the Pareto front among them and the most accurate path in budget."""

    evaluated: list[dict[str, Any]]
    front: list[dict[str, Any]]
    best: dict[str, Any]


def _objectives(records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[-r["accuracy"], r["flops"]] for r in records], dtype=float)


def nsga2_survival(records: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` records NSGA-II keeps: whole fronts in rank order, the last cut by crowding."""
    objectives = _objectives(records)
    survivors: list[int] = []
    for front in NonDominatedSorting().do(objectives, n_stop_if_ranked=n):
        front = list(front)
        if len(survivors) + len(front) <= n:
            survivors += front
            continue
        crowding = calc_crowding_distance(objectives[front])
        order = np.argsort(-crowding, kind="stable")
        survivors += [front[i] for i in order[: n - len(survivors)]]
        break
    return [records[i] for i in survivors]


def pareto_front(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated records (max accuracy, min FLOPs), sorted by FLOPs."""
    if not records:
        return []
    first = NonDominatedSorting().do(_objectives(records), only_non_dominated_front=True)
    return sorted((records[i] for i in first), key=lambda r: r["flops"])


def nsga2_search(
    space: SearchSpace,
    evaluate: Callable[[list[Arch]], list[dict[str, Any]]],
    flops: Callable[[Arch], float],
    *,
    budget: float | None,
    population: int = 50,
    generations: int = 20,
    parents: int = 20,
    mutation_prob: float = 0.1,
    seed: int = 0,
    max_tries: int = 100_000,
    progress: bool = True,
) -> SearchResult:
    """Run NSGA-II and return every evaluated path.

    Args:
        space: the search space (sampling, mutation, crossover over choice indices).
        evaluate: scores a list of paths; returns one dict per path with at least ``accuracy``
            (the search adds ``choice``, ``flops`` and ``generation``).
        flops: MFLOPs of a path (the hard constraint and the second objective).
        budget: the FLOPs budget in MFLOPs (``None``: unconstrained).
        population: paths per generation (paper: 50).
        generations: generations, the first one included (paper: 20).
        parents: most accurate paths that breed (paper: 20).
        mutation_prob: per-choice mutation probability.
        seed: seeds every random choice.
        max_tries: attempts to draw new in-budget paths before giving up.
        progress: show a progress bar.

    Raises:
        BudgetError: when new paths inside the budget cannot be found.
    """
    rng = seeds.rng(seed, seeds.SEARCH)
    fits = (lambda a: True) if budget is None else (lambda a: flops(a) <= budget)
    seen: set[Arch] = set()

    def draw(make: Callable[[], Arch], count: int, tries: int) -> list[Arch]:
        """Up to ``count`` new in-budget paths from ``make`` within ``tries`` attempts."""
        out: list[Arch] = []
        for _ in range(tries):
            if len(out) == count:
                break
            arch = make()
            if arch not in seen and fits(arch):
                seen.add(arch)
                out.append(arch)
        return out

    def sample_new(count: int) -> list[Arch]:
        out = draw(lambda: space.sample(rng), count, max_tries)
        if len(out) < count:
            raise BudgetError(
                f"found only {len(out)} of {count} new paths within the FLOPs "
                f"budget {budget} MFLOPs after {max_tries} random draws"
            )
        return out

    def scored(archs: list[Arch], generation: int) -> list[dict[str, Any]]:
        records = evaluate(archs)
        for arch, rec in zip(archs, records, strict=True):
            rec["choice"] = arch
            rec["flops"] = flops(arch)
            rec["generation"] = generation
        return records

    bar = progress_bar(total=generations, unit="gen", desc="NSGA-II", disable=not progress)
    pop = scored(sample_new(population), 0)
    evaluated = list(pop)
    bar.update(1)
    for gen in range(1, generations):
        top = sorted(pop, key=lambda r: -r["accuracy"])[:parents]
        parent_archs = [r["choice"] for r in top]
        n_mut = population // 2

        def mutant(parents: list[Arch] = parent_archs) -> Arch:
            return space.mutate(parents[rng.integers(len(parents))], rng, mutation_prob)

        def child(parents: list[Arch] = parent_archs) -> Arch:
            i, j = rng.choice(len(parents), size=2, replace=False)
            return space.crossover(parents[i], parents[j], rng)

        children = draw(mutant, n_mut, 100 * n_mut)
        children += draw(child, population - n_mut, 100 * (population - n_mut))
        # as SPOS does, random paths fill in when the parents' neighbourhood runs dry
        try:
            children += sample_new(population - len(children))
        except BudgetError as e:  # the whole in-budget space is exhausted (small spaces)
            warnings.warn(f"NSGA-II stopped after generation {gen - 1}: {e}", stacklevel=2)
            break
        offspring = scored(children, gen)
        evaluated += offspring
        pop = nsga2_survival(pop + offspring, population)
        bar.update(1)
        bar.set_postfix(best=f"{max(r['accuracy'] for r in evaluated):.2f}")
    bar.close()
    best = max(evaluated, key=lambda r: (r["accuracy"], -r["flops"]))
    return SearchResult(evaluated=evaluated, front=pareto_front(evaluated), best=best)
