"""Search hyper-parameters, validated once so that a bad value fails before any model is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diffes.errors import ConfigError
from diffes.search.genome import Budget

__all__ = ["ALGORITHMS", "SearchConfig"]

ALGORITHMS = ("ga", "nsga2", "islands")


@dataclass(frozen=True)
class SearchConfig:
    """How to search. ``population`` (mu) and ``offspring`` (lambda) are per island in ``islands`` mode.

    Each generation makes ``offspring`` children per island like DEAP's varOr: crossover with probability
    ``cxpb``, else mutation with probability ``mutpb``, else a copy of a parent; mu survivors are then
    selected among parents + children (elitist). ``budget`` is the cost fraction every schedule must meet.
    """

    algorithm: str = "ga"
    population: int = 16
    offspring: int = 16
    generations: int = 20
    cxpb: float = 0.3
    mutpb: float = 0.7
    mutation_moves: int = 1
    islands: int = 4
    migration_interval: int = 5
    migration_size: int = 1
    budget: float = 0.5
    seed: int = 0
    hall_of_fame: int = 5

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("algorithm", self.algorithm, f"use one of {', '.join(ALGORITHMS)}")
        _check_int("population", self.population, 2)
        _check_int("offspring", self.offspring, 1)
        _check_int("generations", self.generations, 0)
        _check_int("mutation_moves", self.mutation_moves, 1)
        _check_int("islands", self.islands, 2 if self.algorithm == "islands" else 1)
        _check_int("migration_interval", self.migration_interval, 1)
        _check_int("migration_size", self.migration_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("hall_of_fame", self.hall_of_fame, 1)
        _check_probability("cxpb", self.cxpb)
        _check_probability("mutpb", self.mutpb)
        if self.cxpb + self.mutpb > 1.0:
            raise ConfigError("mutpb", self.mutpb, f"cxpb + mutpb must be <= 1 (cxpb={self.cxpb})")
        if self.migration_size >= self.population:
            raise ConfigError("migration_size", self.migration_size, f"migrate fewer than population={self.population}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int | float) or not 0 < self.budget <= 1:
            raise ConfigError("budget", self.budget, "use a fraction of the dense cost in (0, 1]")

    @property
    def num_islands(self) -> int:
        return self.islands if self.algorithm == "islands" else 1

    def make_budget(self, stage_weights: Sequence[float], level_costs: Sequence[float]) -> Budget:
        """The Budget of this search for a given stage split and level grid."""
        return Budget(tuple(stage_weights), tuple(level_costs), self.budget)


def _check_int(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field, value, f"use a whole number >= {minimum}")


def _check_probability(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(field, value, "use a probability in [0, 1]")
