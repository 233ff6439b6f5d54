"""Everything a search needs to continue, as plain data that round-trips through JSON exactly.

Fitness values are not stored next to the genomes: every genome in a population or the hall of fame is in
the cache, and its cost follows from the budget, so there is one source of truth per number.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypedDict

from diffes.errors import CheckpointError
from diffes.schema import NonNegative, Uint32, reading, validate
from diffes.search.config import SearchConfig
from diffes.search.genome import Budget, Genome
from diffes.search.joint import AnyBudget, JointBudget

__all__ = ["FORMAT", "SearchState"]

FORMAT = "diffes.search.state/1"

RngState = tuple[Any, ...]
"""What ``random.Random.getstate()`` returns: (version, 625 ints, gauss_next)."""

FIX = "the search state is corrupt; start a new run"


@dataclass(frozen=True)
class SearchState:
    """The search after ``generation`` generations (0: initial population evaluated).

    ``populations`` has one entry per island (one for ``ga``/``nsga2``); ``cache`` maps every genome ever
    evaluated to its distance, in evaluation order; ``hall_of_fame`` is best first; ``logbook`` has one
    JSON-typed record per generation; ``rng_state`` is the generator state to draw the next generation from.
    """

    config: SearchConfig
    budget: AnyBudget
    generation: int
    populations: tuple[tuple[Genome, ...], ...]
    cache: dict[Genome, float]
    hall_of_fame: tuple[Genome, ...]
    logbook: tuple[dict[str, Any], ...]
    rng_state: RngState

    def to_json(self) -> dict[str, Any]:
        """JSON types only (``json.dumps`` writes floats with repr, which reads back to the same float)."""
        version, internal, gauss_next = self.rng_state
        return {
            "format": FORMAT,
            "config": asdict(self.config),
            "budget": self.budget.to_dict(),
            "generation": self.generation,
            "populations": [[list(g) for g in island] for island in self.populations],
            "cache": [[list(g), d] for g, d in self.cache.items()],
            "hall_of_fame": [list(g) for g in self.hall_of_fame],
            "logbook": [dict(record) for record in self.logbook],
            "rng": [version, list(internal), gauss_next],
        }

    @classmethod
    def from_json(cls, data: object, source: str = "search state") -> SearchState:
        """The state ``to_json`` wrote; anything else (a number, a missing key, a budget no run could have)
        is a CheckpointError naming ``source`` and the key."""
        head = validate(_Format, data, source, FIX)
        if head["format"] != FORMAT:
            raise CheckpointError(f"{source}: format {head['format']!r} is not {FORMAT!r}; start a new run")
        d = validate(_StateJson, data, source, FIX)
        with reading(source, FIX):
            version, internal, gauss_next = d["rng"]
            state = cls(
                config=d["config"],
                budget=_budget(d["budget"]),
                generation=d["generation"],
                populations=tuple(tuple(_genome(g) for g in island) for island in d["populations"]),
                cache={_genome(g): dist for g, dist in d["cache"]},
                hall_of_fame=tuple(_genome(g) for g in d["hall_of_fame"]),
                logbook=tuple(d["logbook"]),
                rng_state=(version, tuple(internal), gauss_next),
            )
            random.Random().setstate(state.rng_state)  # the generator the next generation draws from
        _check_cached(state)
        return state


def _genome(levels: list[int]) -> Genome:
    return tuple(int(level) for level in levels)


# ---- the JSON schema of a state (diffes.schema) ----


class _Format(TypedDict):
    format: str


class _BudgetJson(TypedDict):
    stage_weights: list[float]
    level_costs: list[float]
    fraction: float


class _JointBudgetJson(TypedDict):
    steps_grid: list[int]
    stage_lengths: list[list[int]]
    level_costs: list[float]
    max_every: int
    reference_steps: int
    fraction: float


def _budget(d: dict[str, Any]) -> AnyBudget:
    return JointBudget(**d) if "steps_grid" in d else Budget(**d)


class _StateJson(TypedDict):
    format: str
    config: SearchConfig
    budget: _JointBudgetJson | _BudgetJson
    generation: NonNegative
    populations: list[list[list[int]]]
    cache: list[tuple[list[int], float]]
    hall_of_fame: list[list[int]]
    logbook: list[dict[str, Any]]
    rng: tuple[int, Annotated[list[Uint32], Field(min_length=625, max_length=625)], float | None]


def _check_cached(state: SearchState) -> None:
    members = [g for island in state.populations for g in island] + list(state.hall_of_fame)
    missing = [g for g in members if g not in state.cache]
    if missing:
        raise CheckpointError(f"search state lists genome {missing[0]} without a fitness; start a new run")
    # A budget edited by hand, or a library rebuilt with another grid, would otherwise fail generations later.
    misfits = [g for g in state.cache if not _fits(g, state.budget)]
    if misfits:
        raise CheckpointError(f"search state genome {misfits[0]} does not fit its budget; start a new run")


def _fits(genome: Genome, budget: AnyBudget) -> bool:
    levels_ok = len(genome) == len(budget.upper) and all(0 <= x <= top for x, top in zip(genome, budget.upper))
    return levels_ok and budget.feasible(genome)
