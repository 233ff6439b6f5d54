"""The generation loop: (mu + lambda) GA, NSGA-II and island GA on one DEAP toolbox.

The loop only calls ``toolbox.*``: ``population``, ``mate``, ``mutate``, ``select``, ``migrate``, ``cost``,
``evaluate`` and ``map``. A generation evaluates all its new genomes with ONE ``toolbox.map(toolbox.evaluate,
genomes)`` call, which is where a distributed executor plugs in. All randomness comes from the state's
``random.Random``, so ``init_search`` + k x ``next_generation`` gives the same state whether or not the state
went through JSON in between.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from deap import base, tools

from diffes.search.config import SearchConfig
from diffes.search.genome import Genome
from diffes.search.joint import AnyBudget
from diffes.search.operators import (
    crossover_repair,
    initial_population,
    mutate_front,
    mutate_transfer,
    spread_population,
)
from diffes.search.state import SearchState

__all__ = [
    "Evaluate",
    "Fitness",
    "Individual",
    "MapFn",
    "SearchConfig",
    "SearchState",
    "best",
    "init_search",
    "local_map",
    "logbook",
    "make_toolbox",
    "next_generation",
    "pareto_front",
    "run_search",
    "vary",
]

Evaluate = Callable[[list[Genome]], Sequence[float]]
MapFn = Callable[[Evaluate, Iterable[Genome]], Sequence[float]]


class Fitness(base.Fitness):
    """(distance, cost), both minimised. Lexicographic for GA/islands: among equal distances, cheaper wins."""

    weights = (-1.0, -1.0)


class Individual:
    """A genome with its fitness. Equality is identity, which ``tools.migRing`` relies on to find its slots."""

    __slots__ = ("fitness", "genome")

    def __init__(self, genome: Genome, values: tuple[float, float]) -> None:
        self.genome = genome
        self.fitness = Fitness(values)


def local_map(evaluate: Evaluate, genomes: Iterable[Genome]) -> list[float]:
    """In-process evaluation: the whole batch in one call, so the evaluator can share trajectory prefixes."""
    return list(evaluate(list(genomes)))


def make_toolbox(
    config: SearchConfig, budget: AnyBudget, evaluate: Evaluate, map_fn: MapFn = local_map
) -> base.Toolbox:
    """Register the operators of ``config`` on a fresh toolbox; override any registration to customise."""
    toolbox = base.Toolbox()
    toolbox.register("evaluate", evaluate)
    toolbox.register("map", map_fn)
    toolbox.register("cost", budget.cost)
    # A single-objective search wants every schedule on the budget edge; NSGA-II wants every cost up to it.
    pareto = config.algorithm == "nsga2"
    toolbox.register("population", spread_population if pareto else initial_population, budget=budget)
    toolbox.register("mate", crossover_repair, budget=budget, fill=not pareto)
    if pareto:
        toolbox.register("mutate", mutate_front, budget=budget, moves=config.mutation_moves)
    else:
        toolbox.register("mutate", mutate_transfer, budget=budget, moves=config.mutation_moves)
    toolbox.register("select", tools.selNSGA2 if config.algorithm == "nsga2" else tools.selBest)
    toolbox.register(
        "migrate", tools.migRing, k=config.migration_size, selection=tools.selBest, replacement=tools.selWorst
    )
    return toolbox


def vary(
    parents: Sequence[Genome], toolbox: base.Toolbox, lambda_: int, cxpb: float, mutpb: float, rng: random.Random
) -> list[Genome]:
    """DEAP's varOr on genomes with an explicit rng: each child is a crossover, a mutant or a copy."""
    children = []
    for _ in range(lambda_):
        draw = rng.random()
        if draw < cxpb:
            a, b = rng.sample(list(parents), 2)
            children.append(toolbox.mate(a, b, rng=rng)[0])
        elif draw < cxpb + mutpb:
            children.append(toolbox.mutate(rng.choice(parents), rng=rng))
        else:
            children.append(rng.choice(parents))
    return children


def init_search(config: SearchConfig, budget: AnyBudget, toolbox: base.Toolbox) -> SearchState:
    """Generation 0: draw the initial population (dealt round-robin to the islands) and evaluate it."""
    if budget.fraction != config.budget:
        raise ValueError(f"Budget.fraction={budget.fraction} differs from SearchConfig.budget={config.budget}")
    rng = random.Random(config.seed)
    k = config.num_islands
    genomes = toolbox.population(config.population * k, rng=rng)
    cache = _evaluate_new(genomes, {}, toolbox)
    islands = [[_individual(g, cache, toolbox) for g in genomes[i::k]] for i in range(k)]
    hof = tools.HallOfFame(config.hall_of_fame, similar=_same_genome)
    hof.update([ind for island in islands for ind in island])
    record = _record(0, len(cache), islands, hof, cache, toolbox)
    return _state(config, budget, 0, islands, cache, hof, (record,), rng)


def next_generation(state: SearchState, toolbox: base.Toolbox) -> SearchState:
    """One generation; ``state`` is not modified.

    Build ``toolbox`` with ``make_toolbox(state.config, state.budget, ...)``, also after a resume.
    """
    # Rebuild everything (rng, individuals, hall of fame) from the state's plain data even when it never left
    # memory: an uninterrupted run then takes the same path as a resumed one, and exact resume only needs an
    # exact JSON round trip.
    config, gen = state.config, state.generation + 1
    rng = random.Random()
    rng.setstate(state.rng_state)
    parents = [[_individual(g, state.cache, toolbox) for g in island] for island in state.populations]
    children = [vary(island, toolbox, config.offspring, config.cxpb, config.mutpb, rng) for island in state.populations]
    cache = _evaluate_new([g for island in children for g in island], state.cache, toolbox)
    offspring = [[_individual(g, cache, toolbox) for g in island] for island in children]
    islands = [_survivors(p + o, config.population, toolbox) for p, o in zip(parents, offspring)]
    if config.algorithm == "islands" and gen % config.migration_interval == 0:
        toolbox.migrate(islands)
    hof = _restore_hof(state, toolbox)
    hof.update([ind for island in offspring for ind in island])
    record = _record(gen, len(cache) - len(state.cache), islands, hof, cache, toolbox)
    return _state(config, state.budget, gen, islands, cache, hof, (*state.logbook, record), rng)


def run_search(
    config: SearchConfig,
    budget: AnyBudget,
    toolbox: base.Toolbox,
    state: SearchState | None = None,
    on_generation: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """Run (or continue ``state``) up to ``config.generations``, calling ``on_generation`` after each one."""
    if state is None:
        state = init_search(config, budget, toolbox)
        if on_generation is not None:
            on_generation(state)
    while state.generation < config.generations:
        state = next_generation(state, toolbox)
        if on_generation is not None:
            on_generation(state)
    return state


def best(state: SearchState) -> tuple[Genome, float, float]:
    """(genome, distance, cost) of the best schedule ever evaluated: lowest distance, then lowest cost."""
    genome = state.hall_of_fame[0]
    return genome, state.cache[genome], state.budget.cost(genome)


def pareto_front(state: SearchState) -> list[tuple[Genome, float, float]]:
    """Non-dominated (genome, distance, cost) over every genome evaluated so far, cheapest first.

    All are within the budget, since operators only make feasible genomes.
    """
    inds = [Individual(g, (d, state.budget.cost(g))) for g, d in state.cache.items()]
    front = tools.sortNondominated(inds, len(inds), first_front_only=True)[0]
    points = [(ind.genome, *ind.fitness.values) for ind in front]
    return sorted(points, key=lambda p: (p[2], p[1], p[0]))


def logbook(state: SearchState) -> tools.Logbook:
    """The records as a DEAP Logbook (for printing with its header)."""
    book = tools.Logbook()
    book.header = ["gen", "nevals", "evals", "min", "avg", "max", "best_cost"]
    for record in state.logbook:
        book.record(**record)
    return book


def _evaluate_new(genomes: Iterable[Genome], cache: dict[Genome, float], toolbox: base.Toolbox) -> dict[Genome, float]:
    """A new cache with every un-cached genome evaluated, in one ``toolbox.map`` call."""
    new = list(dict.fromkeys(g for g in genomes if g not in cache))
    if not new:
        return dict(cache)
    distances = list(toolbox.map(toolbox.evaluate, new))
    if len(distances) != len(new):
        raise ValueError(f"evaluate returned {len(distances)} distances for {len(new)} genomes")
    for genome, distance in zip(new, distances):
        if not math.isfinite(distance):
            raise ValueError(f"evaluate returned distance {distance} for genome {genome}; distances must be finite")
    return {**cache, **{g: float(d) for g, d in zip(new, distances)}}


def _individual(genome: Genome, cache: dict[Genome, float], toolbox: base.Toolbox) -> Individual:
    return Individual(genome, (cache[genome], toolbox.cost(genome)))


def _same_genome(a: Individual, b: Individual) -> bool:
    return a.genome == b.genome


def _survivors(pool: list[Individual], mu: int, toolbox: base.Toolbox) -> list[Individual]:
    """Select mu among distinct genomes first: a clone adds no information, only lost diversity."""
    seen: set[Genome] = set()
    unique: list[Individual] = []
    clones: list[Individual] = []
    for ind in pool:
        (clones if ind.genome in seen else unique).append(ind)
        seen.add(ind.genome)
    chosen = toolbox.select(unique, min(mu, len(unique)))
    if len(chosen) < mu:  # a tiny feasible space: pad with the best clones
        chosen += toolbox.select(clones, mu - len(chosen))
    return chosen


def _restore_hof(state: SearchState, toolbox: base.Toolbox) -> tools.HallOfFame:
    hof = tools.HallOfFame(state.config.hall_of_fame, similar=_same_genome)
    # HallOfFame.insert puts an item before equal ones, so inserting worst-first rebuilds the exact tie order.
    for genome in reversed(state.hall_of_fame):
        hof.insert(_individual(genome, state.cache, toolbox))
    return hof


def _record(
    gen: int,
    nevals: int,
    islands: list[list[Individual]],
    hof: tools.HallOfFame,
    cache: dict[Genome, float],
    toolbox: base.Toolbox,
) -> dict[str, Any]:
    stats = tools.Statistics(key=lambda ind: ind.fitness.values[0])
    stats.register("min", min)
    stats.register("avg", lambda xs: math.fsum(xs) / len(xs))
    stats.register("max", max)
    top = hof[0].genome
    summary = stats.compile([ind for island in islands for ind in island])
    return {
        "gen": gen,
        "nevals": nevals,
        "evals": len(cache),
        **summary,
        "best": list(top),
        "best_cost": toolbox.cost(top),
    }


def _state(
    config: SearchConfig,
    budget: AnyBudget,
    gen: int,
    islands: list[list[Individual]],
    cache: dict[Genome, float],
    hof: tools.HallOfFame,
    records: tuple[dict[str, Any], ...],
    rng: random.Random,
) -> SearchState:
    return SearchState(
        config=config,
        budget=budget,
        generation=gen,
        populations=tuple(tuple(ind.genome for ind in island) for island in islands),
        cache=cache,
        hall_of_fame=tuple(ind.genome for ind in hof),
        logbook=records,
        rng_state=rng.getstate(),
    )
