"""A schedule (one pruning level per stage) and the compute budget it must fit in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from diffes.errors import ConfigError

__all__ = ["Genome", "Budget", "COST_TOLERANCE"]

Genome = tuple[int, ...]
"""``genome[s]`` is the pruning level of stage ``s``: 0 is dense, higher is sparser and cheaper."""

# Costs are sums of float products; a schedule that meets the budget exactly must not be rejected by rounding.
COST_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    """Mean relative cost over sampling steps must stay at or below ``fraction`` of the dense cost.

    ``stage_weights[s]`` is the fraction of steps in stage ``s`` (sums to 1); ``level_costs[l]`` is the
    cost of level ``l`` relative to dense (``level_costs[0] == 1``, strictly decreasing).
    """

    stage_weights: tuple[float, ...]
    level_costs: tuple[float, ...]
    fraction: float

    def __post_init__(self) -> None:
        # Accept lists and numpy scalars but store plain tuples of floats: hashable and exact through JSON.
        object.__setattr__(self, "stage_weights", tuple(float(w) for w in self.stage_weights))
        object.__setattr__(self, "level_costs", tuple(float(c) for c in self.level_costs))
        object.__setattr__(self, "fraction", float(self.fraction))
        _check_weights(self.stage_weights)
        _check_costs(self.level_costs)
        _check_fraction(self.fraction, self.cheapest)

    @property
    def num_stages(self) -> int:
        return len(self.stage_weights)

    @property
    def num_levels(self) -> int:
        return len(self.level_costs)

    @property
    def max_level(self) -> int:
        return len(self.level_costs) - 1

    @property
    def upper(self) -> tuple[int, ...]:
        """The largest value of each gene (the sparsest level, in every stage)."""
        return (self.max_level,) * self.num_stages

    def with_fraction(self, fraction: float) -> Budget:
        return Budget(self.stage_weights, self.level_costs, fraction)

    def to_dict(self) -> dict[str, object]:
        return {
            "stage_weights": list(self.stage_weights),
            "level_costs": list(self.level_costs),
            "fraction": self.fraction,
        }

    @property
    def cheapest(self) -> float:
        """Cost of the sparsest schedule (every stage at the maximum level)."""
        return self.cost((self.max_level,) * self.num_stages)

    def cost(self, genome: Sequence[int]) -> float:
        """Mean relative cost over steps: ``sum_s w_s * level_costs[genome[s]]``."""
        if len(genome) != self.num_stages or not all(0 <= g <= self.max_level for g in genome):
            raise ValueError(f"genome {tuple(genome)} needs {self.num_stages} levels, each in 0..{self.max_level}")
        return math.fsum(w * self.level_costs[g] for w, g in zip(self.stage_weights, genome))

    def slack(self, genome: Sequence[int]) -> float:
        """Budget left unused by ``genome`` (negative when it does not fit)."""
        return self.fraction - self.cost(genome)

    def feasible(self, genome: Sequence[int]) -> bool:
        return self.cost(genome) <= self.fraction + COST_TOLERANCE


def _check_weights(weights: tuple[float, ...]) -> None:
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
        raise ConfigError("stage_weights", list(weights), "give one non-negative weight per stage")
    if abs(math.fsum(weights) - 1.0) > 1e-6:
        raise ConfigError("stage_weights", list(weights), "weights are fractions of steps and must sum to 1")


def _check_costs(costs: tuple[float, ...]) -> None:
    if not costs or abs(costs[0] - 1.0) > COST_TOLERANCE:
        raise ConfigError("level_costs", list(costs), "level 0 is dense: its relative cost must be 1.0")
    if any(not b < a for a, b in zip(costs, costs[1:])) or costs[-1] <= 0:
        raise ConfigError("level_costs", list(costs), "costs must decrease strictly with the level and stay > 0")


def _check_fraction(fraction: float, cheapest: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError("budget", fraction, "use a fraction of the dense cost in (0, 1]")
    if fraction + COST_TOLERANCE < cheapest:
        # Round the advice up, so that the number we print is itself a budget that works.
        advice = math.ceil(cheapest * 1e4) / 1e4
        raise ConfigError(
            "budget",
            fraction,
            f"the cheapest schedule (every stage at the sparsest level) costs {advice}; use a budget >= {advice}",
        )
