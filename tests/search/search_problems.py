"""Synthetic search problems with a known structure: pruning early (noisy) stages hurts most."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

from diffes.search.genome import Budget, Genome


def make_budget(num_stages: int, num_levels: int, fraction: float) -> Budget:
    """Slightly uneven stages (later ones longer) and a linear level grid from 1.0 down to 0.2."""
    raw = [1.0 + 0.1 * s for s in range(num_stages)]
    weights = [r / sum(raw) for r in raw]
    costs = [1.0 - 0.8 * level / (num_levels - 1) for level in range(num_levels)] if num_levels > 1 else [1.0]
    return Budget(tuple(weights), tuple(costs), fraction)


def distance(genome: Sequence[int]) -> float:
    """Per-stage penalty, heavier for early stages, plus a small cost for level jumps between stages."""
    n = len(genome)
    stage_penalty = sum((n - s) ** 2 * level**1.5 for s, level in enumerate(genome))
    jumps = sum(abs(a - b) for a, b in zip(genome, genome[1:]))
    return stage_penalty + 0.5 * jumps


class CountingEvaluate:
    """A batch evaluate that records every batch it receives."""

    def __init__(self, fn: Callable[[Sequence[int]], float] = distance) -> None:
        self.fn = fn
        self.batches: list[list[Genome]] = []

    def __call__(self, genomes: list[Genome]) -> list[float]:
        self.batches.append(list(genomes))
        return [self.fn(g) for g in genomes]

    @property
    def evaluated(self) -> list[Genome]:
        return [g for batch in self.batches for g in batch]


def brute_force(budget: Budget, fn: Callable[[Sequence[int]], float] = distance) -> tuple[float, Genome]:
    feasible = (g for g in itertools.product(range(budget.num_levels), repeat=budget.num_stages) if budget.feasible(g))
    return min((fn(g), g) for g in feasible)


def random_search(
    budget: Budget, evaluations: int, seed: int, fn: Callable[[Sequence[int]], float] = distance
) -> float:
    """Best distance among ``evaluations`` distinct uniformly drawn feasible genomes (rejection sampling)."""
    rng = random.Random(seed)
    seen: set[Genome] = set()
    while len(seen) < evaluations:
        g = tuple(rng.randrange(budget.num_levels) for _ in range(budget.num_stages))
        if budget.feasible(g):
            seen.add(g)
    return min(fn(g) for g in seen)


def random_genome(budget: Budget, rng: random.Random) -> Genome:
    """Any genome, feasible or not."""
    return tuple(rng.randrange(budget.num_levels) for _ in range(budget.num_stages))
