"""Variation operators on genomes: pure functions of (genome, budget, rng) that always return feasible genomes.

Every random draw comes from the explicit ``rng`` argument, so a search is reproducible from a seed and
resumable from a checkpointed ``rng.getstate()``. Operators never need the model: only the budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from diffes.search.genome import Budget, Genome
from diffes.search.joint import AnyBudget, JointBudget

__all__ = [
    "SHAPES",
    "crossover_repair",
    "fill_budget",
    "initial_population",
    "mutate_front",
    "mutate_transfer",
    "spread_population",
    "repair",
    "sensitivity_genome",
    "sensitivity_levels",
    "shaped_genomes",
]


def _with(genome: Genome, stage: int, level: int) -> Genome:
    return (*genome[:stage], level, *genome[stage + 1 :])


def repair(genome: Sequence[int], budget: AnyBudget, rng: random.Random) -> Genome:
    """Make ``genome`` feasible by sparsifying random stages one level at a time.

    Always terminates: every gene at its maximum is the cheapest schedule, and a budget is never below it.
    """
    g = tuple(int(x) for x in genome)
    while not budget.feasible(g):
        stage = rng.choice([s for s, level in enumerate(g) if level < budget.upper[s]])
        g = _with(g, stage, g[stage] + 1)
    return g


def fill_budget(genome: Sequence[int], budget: AnyBudget, rng: random.Random) -> Genome:
    """Densify random stages one level at a time while the schedule still fits.

    Spending unused budget on accuracy rarely hurts, so a filled genome is usually at least as good.
    """
    g = repair(genome, budget, rng)
    while True:
        denser = [s for s, level in enumerate(g) if level > 0 and budget.feasible(_with(g, s, level - 1))]
        if not denser:
            return g
        stage = rng.choice(denser)
        g = _with(g, stage, g[stage] - 1)


def mutate_transfer(
    genome: Sequence[int], budget: AnyBudget, rng: random.Random, moves: int = 1, fill: bool = True
) -> Genome:
    """Diff-ES level transfer, ``moves`` times: one stage gets denser, another pays for it by getting sparser.

    The stage that gains is drawn at random; if the unused budget pays for it, no stage pays, else a random
    stage that can pay does. With ``fill`` the leftover slack is then spent (``fill_budget``), so the mutant
    sits on the budget edge, where the best schedules are. Without a possible transfer, a random stage gets
    sparser instead.

    Always paying with the stage that leaves the least slack was tried instead of fill: with uneven stage
    weights that makes the payer nearly always the same stage, and the GA found clearly worse schedules on
    the synthetic problems of tests/search.
    """
    g = repair(genome, budget, rng)
    for _ in range(moves):
        g = _transfer_once(g, budget, rng)
    return fill_budget(g, budget, rng) if fill else g


def _transfer_once(g: Genome, budget: AnyBudget, rng: random.Random) -> Genome:
    gainers = [s for s, level in enumerate(g) if level > 0]
    rng.shuffle(gainers)
    for gainer in gainers:
        denser = _with(g, gainer, g[gainer] - 1)
        if budget.feasible(denser):
            return denser
        payers = [
            _with(denser, s, level + 1) for s, level in enumerate(denser) if s != gainer and level < budget.upper[s]
        ]
        payers = [p for p in payers if budget.feasible(p)]
        if payers:
            return rng.choice(payers)
    return _sparser_neighbour(g, budget, rng)


def mutate_front(genome: Sequence[int], budget: AnyBudget, rng: random.Random, moves: int = 1) -> Genome:
    """For a Pareto search: a level transfer (same cost, other shape) or one stage one level denser or sparser
    (other cost), each half the time.

    Transfers alone keep every child near its parent's cost, so an NSGA-II front never left the cost of its
    initial population: on the zoo DiT at budget 0.7 it held no schedule at or below 0.5.
    """
    if rng.random() < 0.5:
        return mutate_transfer(genome, budget, rng, moves, fill=False)
    g = repair(genome, budget, rng)
    stage = rng.randrange(len(g))
    step = rng.choice([s for s in (-1, 1) if 0 <= g[stage] + s <= budget.upper[stage]] or [0])
    return repair(_with(g, stage, g[stage] + step), budget, rng)


def _sparser_neighbour(g: Genome, budget: AnyBudget, rng: random.Random) -> Genome:
    stages = [s for s, level in enumerate(g) if level < budget.upper[s]]
    if not stages:
        return g
    stage = rng.choice(stages)
    return _with(g, stage, g[stage] + 1)


def crossover_repair(
    a: Sequence[int],
    b: Sequence[int],
    budget: AnyBudget,
    rng: random.Random,
    method: str = "uniform",
    fill: bool = True,
) -> tuple[Genome, Genome]:
    """Uniform (per-stage coin) or one-point crossover, then repair each child (and fill its unused budget)."""
    x, y = list(a), list(b)
    if method == "uniform":
        for s in range(len(x)):
            if rng.random() < 0.5:
                x[s], y[s] = y[s], x[s]
    elif method == "one_point":
        if len(x) > 1:
            cut = rng.randint(1, len(x) - 1)
            x[cut:], y[cut:] = y[cut:], x[cut:]
    else:
        raise ValueError(f"crossover method {method!r}: use 'uniform' or 'one_point'")
    finish = fill_budget if fill else repair
    return finish(x, budget, rng), finish(y, budget, rng)


# A shape maps (stages, dense level a, sparse level b) to a genome that is dense (a) where the shape says so.
_Shape = Callable[[int, int, int], Genome]


def _block(where: str) -> _Shape:
    def shape(n: int, a: int, b: int) -> Genome:
        k = math.ceil(n / 3)
        start = {"front": 0, "middle": (n - k) // 2, "back": n - k}[where]
        return tuple(a if start <= s < start + k else b for s in range(n))

    return shape


def _ramp(rising: bool) -> _Shape:
    def shape(n: int, a: int, b: int) -> Genome:
        steps = [s / (n - 1) if n > 1 else 0.0 for s in range(n)]
        levels = tuple(a + math.floor((b - a) * t + 0.5) for t in steps)
        return levels if rising else levels[::-1]

    return shape


# Order matters: when the population is smaller than the number of shapes, the first ones are kept.
SHAPES: dict[str, _Shape] = {
    "front_heavy": _block("front"),
    "back_heavy": _block("back"),
    "middle_heavy": _block("middle"),
    "ramp_up": _ramp(rising=True),
    "ramp_down": _ramp(rising=False),
}


def _uniform(budget: Budget) -> Genome:
    level = next(lv for lv in range(budget.num_levels) if budget.feasible((lv,) * budget.num_stages))
    return (level,) * budget.num_stages


def _fit_shape(shape: _Shape, budget: Budget) -> Genome | None:
    """The feasible instance of ``shape`` (dense level a < sparse level b) that spends the most budget."""
    n, top = budget.num_stages, budget.max_level
    instances = [shape(n, a, b) for a in range(top + 1) for b in range(a + 1, top + 1)]
    feasible = [g for g in instances if budget.feasible(g)]
    if not feasible:
        return None
    # Prefer spending the budget, then the more pronounced shape; max() keeps the first of exact ties.
    return max(feasible, key=lambda g: (round(budget.cost(g), 12), max(g) - min(g)))


def shaped_genomes(budget: AnyBudget) -> dict[str, Genome]:
    """The named, deterministic members of the initial population: ``uniform`` plus every feasible shape, or
    for a joint search the best pure point of each method (fewer steps, caching, pruning)."""
    if isinstance(budget, JointBudget):
        return budget.named_genomes()
    named = {"uniform": _uniform(budget)}
    for name, shape in SHAPES.items():
        genome = _fit_shape(shape, budget)
        if genome is not None:
            named[name] = genome
    return named


def _random_genome(budget: AnyBudget, rng: random.Random) -> list[int]:
    return [rng.randrange(top + 1) for top in budget.upper]


def initial_population(
    n: int, budget: AnyBudget, rng: random.Random, seeds: Sequence[Sequence[int]] = ()
) -> list[Genome]:
    """Exactly ``n`` feasible genomes: the uniform schedule, the named shapes, the ``seeds`` (each repaired into
    the budget; they displace the last named shapes when ``n`` is too small for all), then random filled
    schedules.

    Duplicates are avoided while the feasible space allows it; a tiny space is padded with repeats.
    """
    population: list[Genome] = []
    for genome in shaped_genomes(budget).values():
        if genome not in population:
            population.append(genome)
    extra = [g for g in dict.fromkeys(repair(s, budget, rng) for s in seeds) if g not in population]
    population = (population[: max(n - len(extra), 0)] + extra)[:n]
    seen = set(population)
    attempts = 0
    while len(population) < n and attempts < 50 * n:
        attempts += 1
        genome = fill_budget(_random_genome(budget, rng), budget, rng)
        if genome not in seen:
            seen.add(genome)
            population.append(genome)
    while len(population) < n:
        population.append(rng.choice(population))
    return population


def spread_population(
    n: int, budget: AnyBudget, rng: random.Random, seeds: Sequence[Sequence[int]] = ()
) -> list[Genome]:
    """Exactly ``n`` feasible genomes: half of ``initial_population`` (on the budget edge, where the best
    schedule at the full budget is), half with costs spread evenly from the cheapest schedule up to the budget.

    The start of a Pareto search: ``initial_population`` alone fills every genome up to the budget, which
    leaves the cheap end of the front empty.
    """
    population = initial_population((n + 1) // 2, budget, rng, seeds)
    cheap = n - len(population)
    for i in range(cheap):
        target = budget.cheapest + (budget.fraction - budget.cheapest) * i / cheap
        at_target = budget.with_fraction(target)
        for _ in range(20):  # a few draws to avoid repeats; a tiny space keeps the last one
            genome = fill_budget(_random_genome(at_target, rng), at_target, rng)
            if genome not in population:
                break
        population.append(genome)
    return population


def sensitivity_levels(
    sensitivity: Sequence[float], weights: Sequence[float], level_costs: Sequence[float], fraction: float
) -> tuple[int, ...]:
    """Levels per stage that fit ``sum_s weights[s] * level_costs[level_s] <= fraction``, sparsifying first where
    pruning hurts least per unit of cost saved (greedy: one level at a time, lowest ``sensitivity x level
    fraction / cost saved`` first). Every stage at its sparsest level when even that does not fit."""
    levels = [0] * len(weights)

    def cost() -> float:
        return math.fsum(w * level_costs[lv] for w, lv in zip(weights, levels))

    while cost() > fraction + 1e-9:
        options = [(_price(sensitivity[s], weights[s], level_costs, levels[s]), s) for s in range(len(levels))]
        options = [o for o in options if o[0] < math.inf]
        if not options:
            break
        levels[min(options)[1]] += 1
    return tuple(levels)


def _price(sensitivity: float, weight: float, level_costs: Sequence[float], level: int) -> float:
    """Damage per cost saved of one more level in a stage: its sensitivity grows with the pruned fraction.
    Infinite at the sparsest level, and in a stage that saves nothing (no steps there)."""
    if level + 1 >= len(level_costs):
        return math.inf
    saved = weight * (level_costs[level] - level_costs[level + 1])
    return sensitivity * (level + 1) / saved if saved > 0 else math.inf


def sensitivity_genome(stage_sensitivity: Sequence[float], budget: AnyBudget) -> Genome:
    """The SODA-style seed of an initial population: per stage, the level ``sensitivity_levels`` allots from
    the stages' measured sensitivity to pruning. A joint search takes the most steps at which those levels fit,
    every step computed (else the fewest steps, sparsest levels). Not always feasible: ``initial_population``
    repairs it."""
    if len(stage_sensitivity) != budget.num_stages:
        raise ValueError(f"{len(stage_sensitivity)} stage sensitivities for {budget.num_stages} stages")
    if isinstance(budget, Budget):
        return sensitivity_levels(stage_sensitivity, budget.stage_weights, budget.level_costs, budget.fraction)
    computed = (1,) * budget.num_stages
    for steps, lengths in zip(budget.steps_grid, budget.stage_lengths):
        weights = [n / budget.reference_steps for n in lengths]
        levels = sensitivity_levels(stage_sensitivity, weights, budget.level_costs, budget.fraction)
        genome = budget.encode(steps, computed, levels)
        if budget.feasible(genome):
            return genome
    return genome
