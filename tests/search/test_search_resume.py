"""Crash-resume: a run that goes through JSON after any generation ends bit-identical to one that did not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from search_problems import CountingEvaluate, make_budget

from diffes.errors import CheckpointError
from diffes.search.algorithms import init_search, make_toolbox, next_generation, run_search
from diffes.search.config import SearchConfig
from diffes.search.genome import Budget
from diffes.search.state import SearchState

GENERATIONS = 6
CONFIGS = {
    "ga": SearchConfig("ga", population=6, offspring=6, generations=GENERATIONS, budget=0.5, seed=3, hall_of_fame=4),
    "nsga2": SearchConfig("nsga2", population=6, offspring=8, generations=GENERATIONS, budget=0.5, seed=3),
    "islands": SearchConfig(
        "islands",
        population=4,
        offspring=4,
        generations=GENERATIONS,
        budget=0.5,
        seed=3,
        islands=3,
        migration_interval=2,
    ),
}
BUDGET = make_budget(7, 5, 0.5)


def _through_json(state: SearchState) -> SearchState:
    return SearchState.from_json(json.loads(json.dumps(state.to_json())))


def _is_json_typed(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_typed(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_json_typed(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def _advance(state: SearchState, toolbox: Any, until: int) -> SearchState:
    while state.generation < until:
        state = next_generation(state, toolbox)
    return state


@pytest.mark.parametrize("algorithm", CONFIGS)
def test_resume_after_any_generation_is_bit_identical(algorithm: str) -> None:
    config = CONFIGS[algorithm]
    reference = run_search(config, BUDGET, make_toolbox(config, BUDGET, CountingEvaluate()))
    for cut in range(GENERATIONS):
        first = CountingEvaluate()
        toolbox = make_toolbox(config, BUDGET, first)
        state = _through_json(_advance(init_search(config, BUDGET, toolbox), toolbox, cut))
        # As in a new process: only the JSON survived, and the toolbox is rebuilt from what the state says.
        second = CountingEvaluate()
        state = _advance(state, make_toolbox(state.config, state.budget, second), GENERATIONS)
        assert state == reference, f"{algorithm}: resumed after generation {cut} differs"
        assert json.dumps(state.to_json()) == json.dumps(reference.to_json())
        assert not set(first.evaluated) & set(second.evaluated)  # the cache survived the resume


def test_exact_ties_keep_their_order_across_generations_and_resumes() -> None:
    # Equal stages and a distance that only counts levels: many schedules tie on (distance, cost), so the
    # hall of fame order depends on insertion order. DEAP keeps older members ahead of equal newcomers.
    budget = Budget((0.2,) * 5, (1.0, 0.75, 0.5, 0.25), 0.5)
    config = SearchConfig(population=6, offspring=6, generations=4, budget=0.5, hall_of_fame=8)
    tied = CountingEvaluate(lambda g: float(sum(g)))
    toolbox = make_toolbox(config, budget, tied)
    states = [init_search(config, budget, toolbox)]
    while states[-1].generation < config.generations:
        states.append(next_generation(states[-1], toolbox))
    assert len({states[-1].cache[g] for g in states[-1].hall_of_fame}) < len(states[-1].hall_of_fame)
    for older, newer in zip(states, states[1:]):
        kept = [g for g in newer.hall_of_fame if g in older.hall_of_fame]
        assert kept == [g for g in older.hall_of_fame if g in kept]
    for cut in range(config.generations):
        assert _advance(_through_json(states[cut]), toolbox, config.generations) == states[-1]


@pytest.mark.parametrize("algorithm", CONFIGS)
def test_round_trip_is_exact_and_json_typed(algorithm: str) -> None:
    config = CONFIGS[algorithm]
    toolbox = make_toolbox(config, BUDGET, CountingEvaluate())
    state = next_generation(next_generation(init_search(config, BUDGET, toolbox), toolbox), toolbox)
    data = state.to_json()
    assert _is_json_typed(data)
    json.dumps(data, allow_nan=False)
    assert _through_json(state) == state
    assert _through_json(state).to_json() == data


def test_from_json_rejects_other_formats_and_corrupt_states() -> None:
    config = CONFIGS["ga"]
    data = init_search(config, BUDGET, make_toolbox(config, BUDGET, CountingEvaluate())).to_json()
    with pytest.raises(CheckpointError, match="format"):
        SearchState.from_json({**data, "format": "something/0"})
    with pytest.raises(CheckpointError, match="corrupt"):
        SearchState.from_json({k: v for k, v in data.items() if k != "cache"})
    with pytest.raises(CheckpointError, match="without a fitness"):
        SearchState.from_json({**data, "cache": data["cache"][1:]})
    with pytest.raises(CheckpointError, match="corrupt"):
        SearchState.from_json({**data, "config": {**data["config"], "population": 1}})
    for misfit in ([0] * 7, [9] * 7, [4] * 6):  # over budget, beyond the grid, wrong number of stages
        with pytest.raises(CheckpointError, match="does not fit its budget"):
            SearchState.from_json({**data, "cache": [*data["cache"], [misfit, 0.0]]})
