"""Search hyper-parameters, validated once so that a bad value fails before any model is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from diffes.caching.kinds import StepServe
from diffes.errors import ConfigError
from diffes.fields import Bool, Int, Number, Text, option
from diffes.search.genome import Budget

__all__ = ["ALGORITHMS", "Algorithm", "Cost", "SearchConfig"]

Algorithm = Literal["ga", "nsga2", "islands"]
Cost = Literal["macs", "latency"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)


@dataclass(frozen=True)
class SearchConfig:
    """How to search. ``population`` (mu) and ``offspring`` (lambda) are per island in ``islands`` mode.

    Each generation makes ``offspring`` children per island like DEAP's varOr: crossover with probability
    ``cxpb``, else mutation with probability ``mutpb``, else a copy of a parent; mu survivors are then
    selected among parents + children (elitist). ``budget`` is the cost fraction every schedule must meet.
    """

    algorithm: Algorithm = option("ga", "ga, nsga2 (Pareto front over budgets) or islands")
    population: Int = option(16, "survivors per generation (mu), per island")
    offspring: Int = option(16, "children per generation (lambda), per island")
    generations: Int = option(20, "generations after the initial population")
    cxpb: Number = option(0.3, "probability that a child comes from crossover")
    mutpb: Number = option(0.7, "probability that a child comes from mutation")
    mutation_moves: Int = option(1)
    islands: Int = option(4, "populations in islands mode (ring migration)")
    migration_interval: Int = option(5, "generations between migrations (islands mode)")
    migration_size: Int = option(1)
    budget: Number = option(0.5, "mean cost per step as a fraction of dense (e.g. 0.5)")
    cost: Cost = option("macs", "budget measure: macs, or latency (measured per level on this device)")
    joint: Bool = option(False, "search step count, per-stage caching and pruning together (teacher: reference_steps)")
    steps_grid: Text = option("auto", "joint: step counts to choose, e.g. 50,25,10 (auto: 6 to 100 pct of reference)")
    cache_serve: StepServe = option("extrapolate1", "joint: a skipped step reuses (reuse) or extrapolates the outputs")
    cache_every: Int = option(3, "joint: largest per-stage cache interval (computes every 1..N-th step; 1: no caching)")
    seed: Int = option(0, "seed of every random draw of the run")
    hall_of_fame: Int = option(5, "best schedules kept in the hall of fame")

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("algorithm", self.algorithm, f"use one of {', '.join(ALGORITHMS)}")
        if self.cache_serve not in get_args(StepServe):
            raise ConfigError("cache_serve", self.cache_serve, f"use one of {', '.join(get_args(StepServe))}")
        if self.cost not in get_args(Cost):
            raise ConfigError("cost", self.cost, f"use one of {', '.join(get_args(Cost))}")
        _check_int("population", self.population, 2)
        _check_int("offspring", self.offspring, 1)
        _check_int("generations", self.generations, 0)
        _check_int("mutation_moves", self.mutation_moves, 1)
        _check_int("islands", self.islands, 2 if self.algorithm == "islands" else 1)
        _check_int("migration_interval", self.migration_interval, 1)
        _check_int("migration_size", self.migration_size, 1)
        _check_int("seed", self.seed, 0)
        if self.seed >= 2**63:  # torch and numpy take seeds below 2**63
            raise ConfigError("seed", self.seed, "use a seed in [0, 2**63)")
        _check_int("hall_of_fame", self.hall_of_fame, 1)
        _check_int("cache_every", self.cache_every, 1)
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
