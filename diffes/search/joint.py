"""The joint search space: how many sampling steps, and per stage how often to compute and how sparse.

A joint genome is ``(s, c_0 .. c_{S-1}, l_0 .. l_{S-1})``: ``steps_grid[s]`` sampling steps; stage ``i``
computes every ``c_i + 1``-th of its steps (the others reuse the stage's last output) at pruning level
``l_i``. Every gene is "higher is cheaper", as a pruning level is, so the same operators search both spaces.
Stages are fixed in timestep units (the library's stage edges), so the steps of any count fall into them:
``stage_lengths[s][i]`` is how many of the ``steps_grid[s]`` steps stage ``i`` holds.

The cost is denoiser MACs per image as a fraction of the dense reference run (``reference_steps`` steps):
fewer steps, reused steps and pruned width all count on that one axis. The first step of every stage
computes when the weights change there (a plan switch drops the cache; consecutive dense stages share the
dense weights, so their count runs on), as ``StageIntervalRule`` counts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from diffes.errors import ConfigError
from diffes.search.genome import COST_TOLERANCE, Budget, Genome

__all__ = ["AnyBudget", "JointBudget", "JointGenome", "parse_steps_grid"]


@dataclass(frozen=True)
class JointGenome:
    steps: int
    every: tuple[int, ...]  # per stage: compute every n-th step (1: every step)
    levels: tuple[int, ...]


@dataclass(frozen=True)
class JointBudget:
    steps_grid: tuple[int, ...]  # decreasing
    stage_lengths: tuple[tuple[int, ...], ...]  # per steps_grid entry, steps per stage
    level_costs: tuple[float, ...]
    max_every: int
    reference_steps: int
    fraction: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps_grid", tuple(int(s) for s in self.steps_grid))
        object.__setattr__(self, "stage_lengths", tuple(tuple(int(n) for n in row) for row in self.stage_lengths))
        object.__setattr__(self, "level_costs", tuple(float(c) for c in self.level_costs))
        object.__setattr__(self, "fraction", float(self.fraction))
        grid = self.steps_grid
        if not grid or any(a <= b for a, b in zip(grid, grid[1:])) or grid[-1] < 1:
            raise ConfigError("steps_grid", list(grid), "give distinct step counts >= 1")
        if len(self.stage_lengths) != len(grid) or any(sum(r) != n for r, n in zip(self.stage_lengths, grid)):
            raise ConfigError("stage_lengths", [list(r) for r in self.stage_lengths], "one row per step count")
        if self.max_every < 1:
            raise ConfigError("cache_every", self.max_every, "use a whole number >= 1 (1: no caching)")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("budget", self.fraction, "use a fraction of the reference cost in (0, 1]")
        if self.fraction + COST_TOLERANCE < self.cheapest:
            advice = math.ceil(self.cheapest * 1e4) / 1e4
            raise ConfigError("budget", self.fraction, f"the cheapest joint schedule costs {advice}; use >= {advice}")

    @property
    def num_stages(self) -> int:
        return len(self.stage_lengths[0])

    @property
    def upper(self) -> tuple[int, ...]:
        """The largest value of each gene."""
        s = self.num_stages
        return (len(self.steps_grid) - 1, *(self.max_every - 1,) * s, *(len(self.level_costs) - 1,) * s)

    @property
    def cheapest(self) -> float:
        return self.cost(self.upper)

    def decode(self, genome: Sequence[int]) -> JointGenome:
        g, s = tuple(int(x) for x in genome), self.num_stages
        if len(g) != 1 + 2 * s or any(not 0 <= x <= top for x, top in zip(g, self.upper)):
            raise ValueError(f"joint genome {g} needs 1 + 2 x {s} genes within {self.upper}")
        return JointGenome(self.steps_grid[g[0]], tuple(e + 1 for e in g[1 : 1 + s]), g[1 + s :])

    def encode(self, steps: int, every: Sequence[int], levels: Sequence[int]) -> Genome:
        return (self.steps_grid.index(steps), *(e - 1 for e in every), *levels)

    def computed_steps(self, genome: Sequence[int]) -> tuple[int, ...]:
        """Per stage, the steps that run the denoiser: as the cache rule counts them, every ``every``-th step from
        the start of a segment (consecutive dense stages are one segment: they share the dense weights)."""
        j = self.decode(genome)
        lengths = self.stage_lengths[int(genome[0])]
        out, count, segment = [], 0, None
        for stage, (n, every, level) in enumerate(zip(lengths, j.every, j.levels)):
            if n and (-1 if level == 0 else stage) != segment:  # a stage without steps switches nothing
                count, segment = 0, (-1 if level == 0 else stage)
            out.append(sum(1 for i in range(n) if (count + i) % every == 0))
            count += n
        return tuple(out)

    def cost(self, genome: Sequence[int]) -> float:
        j = self.decode(genome)
        computed = self.computed_steps(genome)
        return math.fsum(n * self.level_costs[lv] for n, lv in zip(computed, j.levels)) / self.reference_steps

    def feasible(self, genome: Sequence[int]) -> bool:
        return self.cost(genome) <= self.fraction + COST_TOLERANCE

    def slack(self, genome: Sequence[int]) -> float:
        return self.fraction - self.cost(genome)

    def with_fraction(self, fraction: float) -> JointBudget:
        return replace(self, fraction=fraction)

    def named_genomes(self) -> dict[str, Genome]:
        """The best pure point of each method that fits: fewer steps alone, caching alone (every stage at one
        interval), pruning alone (every stage at one level); each the one spending the most budget."""
        s = self.num_stages
        pure = {
            "fewer_steps": [self.encode(n, (1,) * s, (0,) * s) for n in self.steps_grid],
            "caching": [
                self.encode(n, (e,) * s, (0,) * s) for n in self.steps_grid for e in range(2, self.max_every + 1)
            ],
            "pruning": [
                self.encode(n, (1,) * s, (lv,) * s) for n in self.steps_grid for lv in range(1, len(self.level_costs))
            ],
        }
        named = {}
        for name, genomes in pure.items():
            fits = [g for g in genomes if self.feasible(g)]
            if fits:
                named[name] = max(fits, key=lambda g: round(self.cost(g), 12))
        return named

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps_grid": list(self.steps_grid),
            "stage_lengths": [list(r) for r in self.stage_lengths],
            "level_costs": list(self.level_costs),
            "max_every": self.max_every,
            "reference_steps": self.reference_steps,
            "fraction": self.fraction,
        }


def parse_steps_grid(text: str, reference_steps: int) -> tuple[int, ...]:
    """``"auto"`` or a comma list of step counts, largest first, none above the reference's."""
    if text == "auto":
        fractions = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.16, 0.12, 0.1, 0.08, 0.06)
        counts = {max(1, round(reference_steps * f)) for f in fractions}
        return tuple(sorted(counts, reverse=True))
    try:
        counts = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ConfigError("steps_grid", text, "give auto or step counts separated by commas, e.g. 50,25,10") from None
    if not counts or min(counts) < 1 or max(counts) > reference_steps:
        raise ConfigError("steps_grid", text, f"use step counts in 1..reference_steps={reference_steps}")
    return tuple(sorted(counts, reverse=True))


AnyBudget = Budget | JointBudget
"""Both kinds: per-gene bounds (``upper``), higher is cheaper, ``cost``, ``feasible``, ``with_fraction``."""
