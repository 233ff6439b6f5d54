"""Operators: always feasible, deterministic given their rng, and shaped as the Diff-ES search needs."""

from __future__ import annotations

import random

import pytest
from search_problems import make_budget, random_genome

from diffes.search.genome import Budget, Genome
from diffes.search.joint import JointBudget
from diffes.search.operators import (
    SHAPES,
    crossover_repair,
    fill_budget,
    initial_population,
    mutate_front,
    mutate_transfer,
    repair,
    sensitivity_genome,
    shaped_genomes,
    spread_population,
)

BUDGETS = {
    "8x5 at 0.5": make_budget(8, 5, 0.5),
    "4x4 at 0.6": make_budget(4, 4, 0.6),
    "6x3 at the cheapest": make_budget(6, 3, 0.2 + 1e-12),
    "5x4 dense allowed": make_budget(5, 4, 1.0),
    "uneven costs": Budget((0.1, 0.2, 0.3, 0.4), (1.0, 0.9, 0.5, 0.45, 0.1), 0.55),
    "1 stage": Budget((1.0,), (1.0, 0.7, 0.4), 0.7),
}
SEEDS = range(150)


def _is_maximal(genome: Genome, budget: Budget) -> bool:
    """No single stage can get denser without breaking the budget."""
    return not any(
        level > 0 and budget.feasible((*genome[:s], level - 1, *genome[s + 1 :])) for s, level in enumerate(genome)
    )


@pytest.mark.parametrize("name", BUDGETS)
def test_every_operator_output_is_feasible(name: str) -> None:
    budget = BUDGETS[name]
    for seed in SEEDS:
        rng = random.Random(seed)
        a, b = random_genome(budget, rng), random_genome(budget, rng)
        fixed = repair(a, budget, rng)
        filled = fill_budget(a, budget, rng)
        children = crossover_repair(
            fixed, repair(b, budget, rng), budget, rng, method=rng.choice(["uniform", "one_point"])
        )
        mutants = [mutate_transfer(a, budget, rng, moves=m) for m in (1, 2, 3)]
        mutants += [
            mutate_front(a, budget, rng),
            *spread_population(3, budget, rng),
        ]
        for genome in (fixed, filled, *children, *mutants):
            assert budget.feasible(genome), (name, seed, genome)
            assert all(isinstance(level, int) for level in genome)
        assert _is_maximal(filled, budget)


@pytest.mark.parametrize("name", BUDGETS)
def test_repair_and_fill_move_levels_one_way(name: str) -> None:
    budget = BUDGETS[name]
    for seed in SEEDS:
        rng = random.Random(seed)
        genome = random_genome(budget, rng)
        fixed = repair(genome, budget, rng)
        assert all(f >= g for f, g in zip(fixed, genome))  # repair only sparsifies
        assert fixed == genome or not budget.feasible(genome)  # and leaves feasible genomes alone
        filled = fill_budget(fixed, budget, rng)
        assert all(f <= g for f, g in zip(filled, fixed))  # fill only densifies


def test_operators_are_deterministic_given_rng() -> None:
    budget = BUDGETS["8x5 at 0.5"]
    genome = (4, 4, 0, 1, 3, 2, 4, 0)

    def draw(seed: int) -> list[object]:
        rng = random.Random(seed)
        return [
            repair(genome, budget, rng),
            fill_budget(genome, budget, rng),
            mutate_transfer(genome, budget, rng, moves=2),
            crossover_repair(genome, genome[::-1], budget, rng),
            initial_population(20, budget, rng),
            mutate_front(genome, budget, rng),
            spread_population(20, budget, rng),
        ]

    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_operators_leave_the_global_random_module_alone() -> None:
    random.seed(1234)
    before = random.getstate()
    budget = BUDGETS["8x5 at 0.5"]
    rng = random.Random(0)
    population = initial_population(16, budget, rng)
    for a, b in zip(population, population[1:]):
        mutate_transfer(a, budget, rng)
        crossover_repair(a, b, budget, rng, method="one_point")
    assert random.getstate() == before


def test_transfer_moves_one_level_between_two_stages() -> None:
    budget = BUDGETS["8x5 at 0.5"]
    for seed in SEEDS:
        rng = random.Random(seed)
        genome = fill_budget(random_genome(budget, rng), budget, rng)  # at the budget edge
        mutant = mutate_transfer(genome, budget, rng, fill=False)
        deltas = sorted(m - g for m, g in zip(mutant, genome) if m != g)
        assert deltas in ([-1, 1], [1]), (genome, mutant)  # a transfer, or the sparser-neighbour fallback


@pytest.mark.parametrize("name", BUDGETS)
def test_filled_mutants_and_children_sit_on_the_budget_edge(name: str) -> None:
    budget = BUDGETS[name]
    for seed in SEEDS:
        rng = random.Random(seed)
        a, b = random_genome(budget, rng), random_genome(budget, rng)
        assert _is_maximal(mutate_transfer(a, budget, rng, moves=rng.randint(1, 3)), budget)
        assert all(_is_maximal(child, budget) for child in crossover_repair(a, b, budget, rng))


def test_transfer_uses_the_slack_before_asking_a_stage_to_pay() -> None:
    budget = BUDGETS["8x5 at 0.5"]
    genome = (4,) * 8  # far under budget: any one stage can get denser for free
    for seed in range(20):
        mutant = mutate_transfer(genome, budget, random.Random(seed), fill=False)
        assert sorted(m - g for m, g in zip(mutant, genome) if m != g) == [-1]


def test_transfer_draws_gainer_and_payer_among_the_feasible_ones() -> None:
    # At the budget edge: stage 0 getting denser costs 0.1 and stage 1 or stage 2 can pay for it;
    # stage 2 getting denser costs 0.2 and only stage 1 can pay; stage 1 is already dense.
    budget = Budget((0.2, 0.4, 0.4), (1.0, 0.5, 0.2), 0.7)
    genome = (1, 0, 1)
    assert budget.cost(genome) == pytest.approx(0.7)
    mutants = {mutate_transfer(genome, budget, random.Random(seed), fill=False) for seed in range(60)}
    assert mutants == {(0, 1, 1), (0, 0, 2), (1, 1, 0)}
    # (0, 0, 2) leaves 0.02 unused and (1, 1, 0) 0.1, but nothing fits in either: fill keeps them as they are.
    assert {mutate_transfer(genome, budget, random.Random(seed)) for seed in range(60)} == mutants


def test_transfer_falls_back_when_no_transfer_fits() -> None:
    dense = Budget((0.5, 0.5), (1.0, 0.5), 1.0)
    assert mutate_transfer((0, 0), dense, random.Random(0), fill=False) in {(0, 1), (1, 0)}  # nothing gets denser
    assert mutate_transfer((0, 0), dense, random.Random(0)) == (0, 0)  # ... and fill undoes the sparser neighbour
    tight = Budget((0.5, 0.5), (1.0, 0.5), 0.5)
    assert mutate_transfer((1, 1), tight, random.Random(0)) == (1, 1)  # the only feasible genome


def test_crossover_rejects_unknown_method() -> None:
    budget = BUDGETS["4x4 at 0.6"]
    with pytest.raises(ValueError, match="one_point"):
        crossover_repair((1, 1, 1, 1), (2, 2, 2, 2), budget, random.Random(0), method="two_point")


def test_one_point_crossover_children_come_from_parents_before_repair() -> None:
    budget = BUDGETS["5x4 dense allowed"]  # everything is feasible, so repair and fill change nothing here
    a, b = (0, 0, 0, 0, 0), (3, 3, 3, 3, 3)
    x, y = crossover_repair(a, b, budget, random.Random(0), method="one_point", fill=False)
    cut = x.index(3)
    assert x == a[:cut] + b[cut:] and y == b[:cut] + a[cut:] and 0 < cut < 5


def test_shapes_are_feasible_and_look_like_their_names() -> None:
    budget = BUDGETS["8x5 at 0.5"]
    shapes = shaped_genomes(budget)
    assert list(shapes) == ["uniform", *SHAPES]
    assert all(budget.feasible(g) for g in shapes.values())
    level = shapes["uniform"][0]
    assert set(shapes["uniform"]) == {level} and not budget.feasible((level - 1,) * 8)  # densest uniform
    front, back, middle = shapes["front_heavy"], shapes["back_heavy"], shapes["middle_heavy"]
    assert max(front[:3]) < min(front[3:]) and max(back[-3:]) < min(back[:-3])
    assert max(middle[2:5]) < min(middle[:2] + middle[5:])
    up, down = shapes["ramp_up"], shapes["ramp_down"]
    assert list(up) == sorted(up) and up[0] < up[-1]
    assert list(down) == sorted(down, reverse=True) and down[0] > down[-1]


@pytest.mark.parametrize("name", BUDGETS)
def test_initial_population_is_exact_feasible_unique_and_deterministic(name: str) -> None:
    budget = BUDGETS[name]
    for n in (2, 5, 16, 40):
        population = initial_population(n, budget, random.Random(7))
        assert len(population) == n
        assert all(budget.feasible(g) for g in population)
        assert population == initial_population(n, budget, random.Random(7))
        if name == "8x5 at 0.5":
            assert len(set(population)) == n


def test_initial_population_starts_with_the_named_shapes() -> None:
    budget = BUDGETS["8x5 at 0.5"]
    shapes = list(shaped_genomes(budget).values())
    population = initial_population(16, budget, random.Random(0))
    assert population[: len(shapes)] == shapes
    assert initial_population(3, budget, random.Random(0)) == shapes[:3]
    assert population != initial_population(16, budget, random.Random(1))  # the random part follows the seed


def test_sensitivity_seeds_join_the_initial_population_repaired() -> None:
    budget = BUDGETS["8x5 at 0.5"]
    seed = sensitivity_genome([1.0, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01], budget)  # late stages tolerate pruning
    assert budget.feasible(seed) and list(seed) == sorted(seed) and seed[0] < seed[-1]
    shapes = list(shaped_genomes(budget).values())
    assert initial_population(16, budget, random.Random(0), [seed])[: len(shapes) + 1] == [*shapes, seed]
    assert initial_population(4, budget, random.Random(0), [seed]) == [*shapes[:3], seed]  # it displaces a shape
    assert seed in spread_population(6, budget, random.Random(0), [seed])
    repaired = initial_population(4, budget, random.Random(0), [(0,) * 8])[3]  # dense: over the budget
    assert budget.feasible(repaired) and repaired not in shapes
    # joint: every step computed, at the most steps where the allotted levels fit (8 steps cannot: 0.4 > 0.39)
    joint = JointBudget((8, 6, 4), ((4, 4), (3, 3), (2, 2)), (1.0, 0.8, 0.6, 0.4), 2, 8, 0.39)
    assert sensitivity_genome([1.0, 0.01], joint) == joint.encode(6, (1, 1), (2, 3))


def test_initial_population_pads_a_tiny_space_with_repeats() -> None:
    budget = Budget((0.5, 0.5), (1.0, 0.5), 0.5)  # only (1, 1) fits
    assert initial_population(4, budget, random.Random(0)) == [(1, 1)] * 4


def test_spread_population_covers_every_cost_up_to_the_budget() -> None:
    budget = make_budget(10, 8, 0.7)
    costs = sorted(budget.cost(g) for g in spread_population(16, budget, random.Random(0)))
    assert costs[0] < budget.fraction - 0.3 and costs[-1] > budget.fraction - 0.05
    assert max(b - a for a, b in zip(costs, costs[1:])) < 0.1  # no gap: every part of the cost axis is seeded
    filled = [budget.cost(g) for g in initial_population(16, budget, random.Random(0))]
    assert min(filled) > budget.fraction - 0.1  # the single-objective start, for contrast


def test_front_mutation_changes_cost_both_ways_but_stays_feasible() -> None:
    budget = make_budget(8, 5, 0.6)
    rng = random.Random(0)
    genome = (3, 3, 3, 3, 2, 2, 3, 3)  # below the budget: room to go denser as well as sparser
    deltas = {round(budget.cost(mutate_front(genome, budget, rng)) - budget.cost(genome), 6) for _ in range(200)}
    assert any(d < 0 for d in deltas) and any(d > 0 for d in deltas)
    edge = fill_budget(genome, budget, rng)  # a filling transfer could only stay here; a front mutant must leave
    assert any(budget.cost(mutate_front(edge, budget, rng)) < budget.cost(edge) - 0.01 for _ in range(50))
