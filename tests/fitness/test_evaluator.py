from __future__ import annotations

import random

import pytest
import torch
from tiny import zoo_pipeline

from diffes.fitness import get_metric
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.adapters import Guidance, adapter_for
from diffes.pruning import PruningConfig, build_library
from diffes.routing import Router

STEPS, STAGES = 8, 4


@pytest.fixture(scope="module")
def setup() -> tuple:
    pipe = zoo_pipeline("dit-digits", trained=True)
    library = build_library(pipe, PruningConfig(stages=STAGES, steps=STEPS, calibration_samples=10), progress=False)
    adapter, guidance = adapter_for(pipe), Guidance("cfg", 2.0)
    # five of the ten classes: a batch of 5 probes (10 rows with CFG) halves every denoiser call's time, and no
    # assertion here depends on the batch size (exact equalities, call counts, ratios, a size relative to a probe)
    teacher = Teacher.compute(adapter, make_probes(adapter, [0, 2, 4, 6, 8], 1, 7, guidance), STEPS, guidance)
    router = Router(adapter.denoiser, library)
    return adapter, library, teacher, router


def make(setup: tuple, **kw: object) -> Evaluator:
    adapter, library, teacher, router = setup
    return Evaluator(adapter, router, teacher, get_metric("mse"), library.schedule, **kw)  # type: ignore[arg-type]


def population(seed: int, n: int = 12) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    elite = tuple(rng.randrange(8) for _ in range(STAGES))
    mutants = [elite[:k] + tuple(rng.randrange(8) for _ in range(STAGES - k)) for k in range(STAGES) for _ in range(2)]
    return [elite, *mutants, *[tuple(rng.randrange(8) for _ in range(STAGES)) for _ in range(n - 1 - len(mutants))]]


def test_prefix_sharing_gives_identical_scores_with_fewer_calls(setup: tuple) -> None:
    shared, naive = make(setup), make(setup, share_prefixes=False)
    for generation in range(3):
        genomes = population(generation)
        assert shared.evaluate(genomes) == naive.evaluate(genomes)  # exact equality, not approximate
    assert shared.stats.denoiser_calls < 0.7 * naive.stats.denoiser_calls
    assert shared.stats.prefix_hits > 0
    assert naive.stats.denoiser_calls == naive.stats.genomes * STEPS


def test_dense_genome_reproduces_the_teacher(setup: tuple) -> None:
    evaluator = make(setup)
    assert evaluator.evaluate([(0,) * STAGES]) == [0.0]
    pruned = evaluator.evaluate([(7,) * STAGES])[0]
    assert pruned > 0.0


def test_memo_and_order_independence(setup: tuple) -> None:
    evaluator = make(setup)
    genomes = population(5)
    first = evaluator.evaluate(genomes)
    calls = evaluator.stats.denoiser_calls
    again = evaluator.evaluate(list(reversed(genomes)))
    assert again == list(reversed(first))
    assert evaluator.stats.denoiser_calls == calls  # all memoized
    fresh = make(setup)
    assert fresh.evaluate(list(reversed(genomes))) == again


def test_cache_is_bounded(setup: tuple) -> None:
    teacher = setup[2]
    one_entry_mb = teacher.probes.latents.numel() * 4 / 2**20
    evaluator = make(setup, prefix_cache_mb=2.5 * one_entry_mb)
    evaluator.evaluate(population(3))
    assert evaluator.cached_prefixes() <= 2


def test_teacher_round_trip(tmp_path: object, setup: tuple) -> None:
    _, _, teacher, _ = setup
    path = tmp_path / "teacher.safetensors"  # type: ignore[operator]
    teacher.save(path)
    loaded = Teacher.load(path)
    assert torch.equal(loaded.images, teacher.images) and torch.equal(loaded.probes.latents, teacher.probes.latents)
    assert (loaded.steps, loaded.guidance, loaded.probes.seed) == (teacher.steps, teacher.guidance, 7)
    assert loaded.probes.conditions == teacher.probes.conditions
    assert loaded.probes.cond.keys() == teacher.probes.cond.keys()
    assert all(torch.equal(loaded.probes.cond[k], v) for k, v in teacher.probes.cond.items())
