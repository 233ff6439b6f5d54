"""The evaluator on joint genomes (step count, per-stage caching, per-stage level): equal to the plain evaluator
where the joint genome is a plain schedule, prefix sharing exact, and equal to the exported pipeline's run."""

from __future__ import annotations

import pytest
import torch
from tiny import zoo_pipeline

from diffes.caching import StageIntervalRule, apply_cache
from diffes.fitness import get_metric
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.adapters import Guidance, adapter_for
from diffes.pruning import PruningConfig, build_library
from diffes.routing import Router, RoutingSchedule, apply
from diffes.search.joint import JointBudget
from diffes.stages import stage_lengths

STEPS, STAGES, REFERENCE, GRID = 6, 2, 12, (6, 4, 3)
GUIDANCE = Guidance("cfg", 2.0)


@pytest.fixture(scope="module")
def setup() -> tuple:
    pipe = zoo_pipeline("dit-digits", trained=True)
    library = build_library(pipe, PruningConfig(stages=STAGES, steps=STEPS, calibration_samples=4), progress=False)
    adapter = adapter_for(pipe)
    teacher = Teacher.compute(adapter, make_probes(adapter, [1, 4, 7], 1, 7, GUIDANCE), REFERENCE, GUIDANCE)
    edges = library.schedule.timestep_boundaries([float(t) for t in adapter.timesteps(STEPS)])
    lengths = [stage_lengths([float(t) for t in adapter.timesteps(n)], edges) for n in GRID]
    costs = [library.stage_cost([lv] * STAGES) for lv in range(library.num_levels)]
    budget = JointBudget(GRID, lengths, costs, 3, REFERENCE, 1.0)
    return adapter, library, teacher, budget, edges, Router(adapter.denoiser, library)


def make(setup: tuple, joint: bool = True, **kw: object) -> Evaluator:
    adapter, library, teacher, budget, _, router = setup
    space = budget if joint else None
    return Evaluator(adapter, router, teacher, get_metric("mse"), library.schedule, joint=space, **kw)  # type: ignore[arg-type]


def test_a_joint_genome_without_caching_at_the_library_steps_is_the_plain_schedule(setup: tuple) -> None:
    budget = setup[3]
    joint, plain = make(setup), make(setup, joint=False)
    for levels in [(0, 0), (2, 5), (7, 1)]:
        assert joint.evaluate([budget.encode(STEPS, (1, 1), levels)]) == plain.evaluate([levels])


def test_prefix_sharing_is_exact_on_joint_genomes(setup: tuple) -> None:
    budget = setup[3]
    genomes = [budget.encode(n, e, lv) for n in GRID for e in [(1, 1), (2, 1), (1, 3)] for lv in [(0, 0), (0, 4)]]
    shared, naive = make(setup), make(setup, share_prefixes=False)
    assert shared.evaluate(genomes) == naive.evaluate(genomes)
    assert shared.stats.prefix_hits > 0 and shared.stats.denoiser_calls < naive.stats.denoiser_calls
    # fewer steps and cached steps cost fewer denoiser calls: 4 steps at (2, 1) computes 1 + 2 or 2 + 1 of 4
    fresh = make(setup, share_prefixes=False)
    fresh.evaluate([budget.encode(4, (2, 1), (0, 0))])
    assert fresh.stats.denoiser_calls == sum(budget.computed_steps(budget.encode(4, (2, 1), (0, 0))))


@pytest.mark.parametrize(("every", "levels"), [((2, 3), (1, 5)), ((2, 3), (0, 0)), ((3, 2), (0, 4))])
def test_the_exported_pipeline_computes_what_the_search_scored(
    setup: tuple, every: tuple[int, int], levels: tuple[int, int]
) -> None:
    _, library, teacher, budget, edges, _ = setup
    genome = budget.encode(6, every, levels)
    evaluator = make(setup)
    scored = evaluator.sample(genome)
    pipe = zoo_pipeline("dit-digits", trained=True)  # the user's pipeline: routed and cached through hooks
    routed = apply(pipe, library, RoutingSchedule(levels, tuple(edges)))
    rule = StageIntervalRule(every, tuple(edges), segments=StageIntervalRule.segments_of(levels))
    cache = apply_cache(pipe, rule, routed)
    other = adapter_for(pipe)
    probes = teacher.probes
    latents = other.sample(probes.cond, probes.latents, 6, GUIDANCE, torch.Generator().manual_seed(probes.seed + 1))
    assert torch.equal(other.decode(latents), scored)
    assert cache.summary.computed == sum(budget.computed_steps(genome))
    # dense stages share their weights and the cache runs on across them; a pruned stage starts afresh
    assert cache.summary.invalidations == (0 if levels == (0, 0) else 1)
    cache.remove()
    routed.remove()
