"""Budget math and the one-line errors for bad budgets and search settings."""

from __future__ import annotations

import pytest

from diffes.errors import ConfigError
from diffes.search.config import SearchConfig
from diffes.search.genome import Budget


def test_cost_is_step_weighted_mean_of_level_costs() -> None:
    budget = Budget((0.5, 0.25, 0.25), (1.0, 0.5, 0.25), 0.7)
    assert budget.cost((0, 1, 2)) == pytest.approx(0.5 + 0.125 + 0.0625)
    assert budget.cost((0, 0, 0)) == 1.0
    assert budget.cheapest == 0.25
    assert budget.feasible((0, 1, 2)) and not budget.feasible((0, 0, 2))
    assert budget.slack((2, 2, 2)) == pytest.approx(0.45)


def test_feasible_tolerates_rounding_at_the_boundary() -> None:
    budget = Budget((0.2,) * 5, (1.0, 0.45), 0.45)  # the budget is exactly the cheapest schedule
    assert budget.cost((1,) * 5) > 0.45  # but five float products 0.2 * 0.45 sum to a hair more
    assert budget.feasible((1,) * 5)


def test_accepts_lists_and_stores_tuples() -> None:
    budget = Budget([0.5, 0.5], [1.0, 0.5], 0.75)  # type: ignore[arg-type]
    assert budget.stage_weights == (0.5, 0.5) and budget.level_costs == (1.0, 0.5)
    assert hash(budget) == hash(Budget((0.5, 0.5), (1.0, 0.5), 0.75))


@pytest.mark.parametrize("genome", [(0, 1), (0, 1, 3), (0, -1, 0)])
def test_cost_rejects_malformed_genomes(genome: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="needs 3 levels"):
        Budget((0.5, 0.25, 0.25), (1.0, 0.5, 0.25), 0.7).cost(genome)


def test_budget_below_the_cheapest_schedule_names_the_minimum() -> None:
    with pytest.raises(ConfigError) as info:
        Budget((0.5, 0.5), (1.0, 0.6, 1 / 3), 0.2)
    message = str(info.value)
    assert "\n" not in message and message.startswith("budget=0.2:")
    assert "costs 0.3334" in message and "use a budget >= 0.3334" in message
    Budget((0.5, 0.5), (1.0, 0.6, 1 / 3), 0.3334)  # the advice, rounded up, is itself a valid budget


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_budget_fraction_outside_unit_interval(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"^budget=.*\(0, 1\]"):
        Budget((1.0,), (1.0, 0.5), fraction)


@pytest.mark.parametrize(
    ("weights", "costs", "field"),
    [
        ((0.5, 0.6), (1.0, 0.5), "stage_weights"),
        ((), (1.0, 0.5), "stage_weights"),
        ((1.5, -0.5), (1.0, 0.5), "stage_weights"),
        ((1.0,), (0.9, 0.5), "level_costs"),
        ((1.0,), (1.0, 0.5, 0.5), "level_costs"),
        ((1.0,), (1.0, 0.5, 0.0), "level_costs"),
    ],
)
def test_bad_weights_or_costs(weights: tuple[float, ...], costs: tuple[float, ...], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}="):
        Budget(weights, costs, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"algorithm": "pso"}, "algorithm"),
        ({"population": 1}, "population"),
        ({"population": True}, "population"),
        ({"offspring": 0}, "offspring"),
        ({"generations": -1}, "generations"),
        ({"cxpb": 1.2}, "cxpb"),
        ({"cxpb": 0.6, "mutpb": 0.6}, "mutpb"),
        ({"mutation_moves": 0}, "mutation_moves"),
        ({"algorithm": "islands", "islands": 1}, "islands"),
        ({"migration_interval": 0}, "migration_interval"),
        ({"migration_size": 16}, "migration_size"),
        ({"budget": 0.0}, "budget"),
        ({"seed": 1.5}, "seed"),
        ({"hall_of_fame": 0}, "hall_of_fame"),
    ],
)
def test_search_config_rejects_bad_values_in_one_line(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}=") as info:
        SearchConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_search_config_defaults_and_budget() -> None:
    config = SearchConfig()
    assert (config.algorithm, config.population, config.offspring, config.generations) == ("ga", 16, 16, 20)
    assert config.num_islands == 1 and SearchConfig(algorithm="islands").num_islands == 4
    assert config.make_budget([0.5, 0.5], [1.0, 0.4]) == Budget((0.5, 0.5), (1.0, 0.4), 0.5)
