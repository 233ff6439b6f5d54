"""The generation loop: quality on problems with a known answer, the evaluation seam, NSGA-II and islands."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest
from search_problems import CountingEvaluate, brute_force, make_budget, random_search

from diffes.search.algorithms import (
    Individual,
    best,
    init_search,
    logbook,
    make_toolbox,
    next_generation,
    pareto_front,
    run_search,
)
from diffes.search.config import SearchConfig
from diffes.search.genome import Budget
from diffes.search.state import SearchState


def _run(config: SearchConfig, budget: Budget, evaluate: CountingEvaluate | None = None) -> SearchState:
    return run_search(config, budget, make_toolbox(config, budget, evaluate or CountingEvaluate()))


@pytest.mark.parametrize("algorithm", ["ga", "nsga2", "islands"])
def test_finds_the_brute_force_optimum_of_a_small_instance(algorithm: str) -> None:
    budget = make_budget(4, 4, 0.5)
    optimum, genome = brute_force(budget)
    for seed in range(3):
        config = SearchConfig(algorithm, population=8, offspring=8, generations=10, budget=0.5, seed=seed, islands=2)
        found, distance, cost = best(_run(config, budget))
        assert (found, distance) == (genome, optimum) and cost <= 0.5 + 1e-9


def test_ga_beats_random_sampling_with_the_same_number_of_evaluations() -> None:
    budget = make_budget(10, 5, 0.5)
    ga, rand = [], []
    for seed in range(5):
        state = _run(SearchConfig(generations=15, budget=0.5, seed=seed), budget)
        ga.append(best(state)[1])
        rand.append(random_search(budget, len(state.cache), seed))
    assert statistics.mean(ga) < 0.8 * statistics.mean(rand)
    assert all(g < r for g, r in zip(ga, rand))


@pytest.mark.parametrize("algorithm", ["ga", "nsga2", "islands"])
def test_one_map_call_per_generation_and_no_genome_evaluated_twice(algorithm: str) -> None:
    budget = make_budget(6, 4, 0.5)
    config = SearchConfig(algorithm, population=6, offspring=6, generations=8, budget=0.5, islands=3)
    evaluate, calls = CountingEvaluate(), []

    def spy_map(fn: CountingEvaluate, genomes: list[tuple[int, ...]]) -> list[float]:
        calls.append(len(genomes))
        return fn(list(genomes))

    state = run_search(config, budget, make_toolbox(config, budget, evaluate, spy_map))
    evaluated = evaluate.evaluated
    assert len(evaluated) == len(set(evaluated)) == len(state.cache)
    assert len(calls) <= config.generations + 1 and all(n > 0 for n in calls)
    assert [r["nevals"] for r in state.logbook if r["nevals"]] == calls
    assert all(budget.feasible(g) for g in state.cache)


def test_state_shapes_and_logbook() -> None:
    budget = make_budget(6, 4, 0.5)
    config = SearchConfig("islands", population=5, offspring=4, generations=3, budget=0.5, islands=3, hall_of_fame=4)
    state = _run(config, budget)
    assert state.generation == 3 and [len(p) for p in state.populations] == [5, 5, 5]
    assert len(state.hall_of_fame) == 4 and len(set(state.hall_of_fame)) == 4
    distances = [state.cache[g] for g in state.hall_of_fame]
    assert distances == sorted(distances) and distances[0] == min(state.cache.values())
    assert [r["gen"] for r in state.logbook] == [0, 1, 2, 3]
    assert state.logbook[0]["nevals"] == 15 and state.logbook[-1]["evals"] == len(state.cache)
    assert state.logbook[-1]["best"] == list(best(state)[0])
    assert "best_cost" in str(logbook(state))


def test_ga_population_is_elitist() -> None:
    budget = make_budget(8, 5, 0.5)
    config = SearchConfig(population=6, offspring=6, generations=1, budget=0.5)
    toolbox = make_toolbox(config, budget, CountingEvaluate())
    state = init_search(config, budget, toolbox)
    for _ in range(6):
        previous, state = state, next_generation(state, toolbox)
        assert min(state.cache[g] for g in state.populations[0]) <= min(
            previous.cache[g] for g in previous.populations[0]
        )


def test_nsga2_front_is_feasible_and_mutually_non_dominated() -> None:
    budget = make_budget(8, 5, 0.5)
    state = _run(SearchConfig("nsga2", generations=8, budget=0.5), budget)
    front = pareto_front(state)
    assert len(front) >= 3
    assert [c for _, _, c in front] == sorted(c for _, _, c in front)
    for genome, distance, cost in front:
        assert budget.feasible(genome) and cost == budget.cost(genome) and distance == state.cache[genome]
    for _, d1, c1 in front:
        for _, d2, c2 in front:
            assert not (d1 <= d2 and c1 <= c2 and (d1 < d2 or c1 < c2))
    for genome, distance in state.cache.items():  # nothing evaluated dominates a front point
        assert not any(distance < d and budget.cost(genome) <= c for _, d, c in front)
    assert best(state)[0] in [g for g, _, _ in front]


def test_nsga2_front_reaches_the_cheap_end_of_the_budget() -> None:
    # one run serves several budgets only if its front holds points well below the one it was given
    # (the final population, not only the cache: selection must keep the cheap points alive)
    budget = make_budget(10, 8, 0.7)
    state = _run(SearchConfig("nsga2", generations=6, budget=0.7), budget)
    costs = sorted(budget.cost(g) for island in state.populations for g in island)
    assert costs[0] <= 0.4 and costs[-1] > 0.6
    assert max(b - a for a, b in zip(costs, costs[1:])) < 0.15


def test_islands_migrate_the_best_to_the_next_island() -> None:
    budget = make_budget(6, 4, 0.5)
    config = SearchConfig(
        "islands", population=4, offspring=4, generations=3, budget=0.5, islands=3, migration_interval=2
    )
    toolbox = make_toolbox(config, budget, CountingEvaluate())
    state = next_generation(init_search(config, budget, toolbox), toolbox)  # generation 1: no migration yet
    star = next(g for g in state.cache if g not in {m for island in state.populations for m in island})
    # Inject an unbeatable genome into island 0 (its fake distance is cached, so it is never re-evaluated).
    islands = ((*state.populations[0][:-1], star), *state.populations[1:])
    state = dataclasses.replace(state, populations=islands, cache={**state.cache, star: -1.0})
    migrated = next_generation(state, toolbox)  # generation 2: ring migration 0 -> 1 -> 2 -> 0
    assert star in migrated.populations[0] and star in migrated.populations[1]
    assert star not in migrated.populations[2]
    assert all(len(island) == 4 for island in migrated.populations)


def test_migration_sends_the_best_and_replaces_the_worst() -> None:
    budget = make_budget(2, 3, 1.0)
    config = SearchConfig("islands", population=3, budget=1.0, islands=2, migration_size=1)
    toolbox = make_toolbox(config, budget, CountingEvaluate())
    islands = [[Individual((0, 0), (d, 1.0)) for d in distances] for distances in ([1.0, 5.0, 3.0], [2.0, 9.0, 4.0])]
    toolbox.migrate(islands)
    assert [[ind.fitness.values[0] for ind in island] for island in islands] == [[1.0, 2.0, 3.0], [2.0, 1.0, 4.0]]


def test_evaluate_must_return_one_finite_distance_per_genome() -> None:
    budget = make_budget(4, 4, 0.5)
    config = SearchConfig(population=4, offspring=4, budget=0.5)
    with pytest.raises(ValueError, match="distances must be finite"):
        init_search(config, budget, make_toolbox(config, budget, CountingEvaluate(lambda g: float("nan"))))
    with pytest.raises(ValueError, match="returned 1 distances for 4 genomes"):
        init_search(config, budget, make_toolbox(config, budget, lambda genomes: [0.0]))


def test_budget_must_match_the_config() -> None:
    budget = make_budget(4, 4, 0.6)
    config = SearchConfig(budget=0.5)
    with pytest.raises(ValueError, match=r"SearchConfig\.budget=0\.5"):
        init_search(config, budget, make_toolbox(config, budget, CountingEvaluate()))


def test_a_run_leaves_the_global_random_module_alone() -> None:
    random.seed(99)
    before = random.getstate()
    _run(
        SearchConfig("islands", population=4, offspring=4, generations=5, budget=0.5, islands=2), make_budget(6, 4, 0.5)
    )
    _run(SearchConfig("nsga2", population=4, offspring=4, generations=5, budget=0.5), make_budget(6, 4, 0.5))
    assert random.getstate() == before
