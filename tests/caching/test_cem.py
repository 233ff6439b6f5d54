"""CEM: the error prior (from features, measured on a tiny pipeline, on disk), the schedule dynamic program
against brute force over every mask, and a planned schedule driving the step cache."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import tiny_dit_pipeline

from diffes.caching import apply_cache
from diffes.caching.cem import CacheSchedule, plan_computed_steps, schedule_error
from diffes.caching.error_prior import ErrorPrior, measure_error_prior
from diffes.errors import CheckpointError, ConfigError
from diffes.models.adapters import Guidance, adapter_for

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
INF = float("inf")


def random_prior(rng: random.Random, n: int, max_gap: int) -> ErrorPrior:
    err = torch.full((n, max_gap + 1), INF, dtype=torch.float64)
    err[:, 0] = 0
    for t in range(n):
        for c in range(1, min(max_gap, n - 1 - t) + 1):
            err[t, c] = rng.choice([0.0, 0.1, 0.25, rng.random(), rng.random() * 3])
    return ErrorPrior(n, err, max_gap)


def mask_error(prior: ErrorPrior, mask: tuple[bool, ...], weights: list[float]) -> float:
    """Written apart from the library's schedule_error: each reused step looks back for its source."""
    total = 0.0
    for i, computed in enumerate(mask):
        if not computed:
            j = max(k for k in range(i) if mask[k])
            if i - j > prior.max_gap:
                return INF
            total += weights[i] * float(prior.err[j, i - j])
    return total


def brute_force(prior: ErrorPrior, weights: list[float], max_steps: int, costs: list[float], budget: float) -> float:
    n, best = prior.num_steps, INF
    for middle in itertools.product([False, True], repeat=n - 2):
        mask = (True, *middle, True)
        if sum(mask) <= max_steps and sum(c for c, m in zip(costs, mask) if m) <= budget:
            best = min(best, mask_error(prior, mask, weights))
    return best


def check_valid(schedule: CacheSchedule, prior: ErrorPrior, weights: list[float], best: float) -> None:
    mask = schedule.computed
    assert mask[0] and mask[-1] and len(mask) == prior.num_steps
    achieved = mask_error(prior, mask, weights)  # finite: no gap over max_gap
    assert achieved == pytest.approx(best, abs=1e-9) and schedule.expected_error == pytest.approx(best, abs=1e-9)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), max_gap=st.integers(1, 4), weighted=st.booleans())
def test_step_budget_finds_the_brute_force_optimum(seed: int, n: int, max_gap: int, weighted: bool) -> None:
    rng = random.Random(seed)
    prior = random_prior(rng, n, max_gap)
    weights = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(n)] if weighted else [1.0] * n
    least = math.ceil((n - 1) / (max_gap + 1)) + 1
    previous = INF
    for budget in range(least, n + 1):
        best = brute_force(prior, weights, budget, [0.0] * n, 0.0)
        schedule = plan_computed_steps(prior, budget, weights=weights if weighted else None)
        check_valid(schedule, prior, weights, best)
        assert len(schedule.computed_steps) <= budget
        assert schedule.expected_error <= previous + 1e-12, "a bigger budget must never hurt"
        previous = schedule.expected_error
    if least > 2:
        with pytest.raises(ConfigError, match=rf"budget_steps={least - 1}: with max_gap={max_gap}"):
            plan_computed_steps(prior, least - 1)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), max_gap=st.integers(1, 4), with_steps=st.booleans())
def test_cost_budget_finds_the_brute_force_optimum(seed: int, n: int, max_gap: int, with_steps: bool) -> None:
    rng = random.Random(seed)
    prior = random_prior(rng, n, max_gap)
    costs = [rng.choice([0.25, 0.5, 1.0]) for _ in range(n)]  # binary fractions: sums are exact
    max_steps = rng.randint(2, n) if with_steps else n
    ends = costs[0] + costs[-1]
    for budget in [ends + 0.25 * k for k in range(-1, int((sum(costs) - ends) / 0.25) + 1)]:  # every cost level
        best = brute_force(prior, [1.0] * n, max_steps, costs, budget)
        steps = max_steps if with_steps else None
        if best == INF:  # no mask within the gaps fits
            with pytest.raises(ConfigError, match=r"budget_steps|budget_cost"):
                plan_computed_steps(prior, steps, step_costs=costs, budget_cost=budget)
            continue
        schedule = plan_computed_steps(prior, steps, step_costs=costs, budget_cost=budget)
        check_valid(schedule, prior, [1.0] * n, best)
        assert sum(c for c, m in zip(costs, schedule.computed) if m) <= budget
        assert len(schedule.computed_steps) <= max_steps


def test_the_plan_follows_the_prior_and_respects_forbidden_gaps() -> None:
    # reusing step 0 is costly, reusing step 1 nearly free
    rows = [[0, 9, 9, 9], [0, 0.1, 0.1, 0.1], [0, 1, 1, 1], [0, 1, 1, INF], [0, 1, INF, INF], [0, INF, INF, INF]]
    prior = ErrorPrior(6, torch.tensor(rows, dtype=torch.float64), max_gap=3)
    schedule = plan_computed_steps(prior, 3)
    assert schedule.computed == (True, True, False, False, False, True)
    assert schedule.expected_error == pytest.approx(0.3) and schedule.reuse_steps == frozenset({2, 3, 4})
    narrow = ErrorPrior(6, prior.err[:, :2].clone(), max_gap=1)  # a reused step must follow a computed one
    assert schedule_error(narrow, schedule.computed) == INF
    with pytest.raises(ConfigError, match=r"budget_steps=3: with max_gap=1, 6 steps need >= 4 computed"):
        plan_computed_steps(narrow, 3)
    planned = plan_computed_steps(narrow, 4)
    assert planned.computed == (True, True, False, True, False, True) and planned.expected_error == pytest.approx(1.1)


def test_bad_plans_are_refused_with_the_field() -> None:
    prior = random_prior(random.Random(0), 5, 9)
    for budget in (1, 6):
        with pytest.raises(ConfigError, match=rf"budget_steps={budget}: use 2 to 5"):
            plan_computed_steps(prior, budget)
    with pytest.raises(ConfigError, match=r"budget_cost=1.5: computing the first and last step alone costs 2"):
        plan_computed_steps(prior, step_costs=[1.0] * 5, budget_cost=1.5)
    with pytest.raises(ConfigError, match=r"num_steps=6: the error prior was measured for 5 steps"):
        plan_computed_steps(prior, 3, num_steps=6)
    with pytest.raises(ConfigError, match=r"weights='4 values'"):
        plan_computed_steps(prior, 3, weights=[1.0] * 4)
    with pytest.raises(ConfigError, match=r"budget_steps=None: give budget_steps"):
        plan_computed_steps(prior)
    with pytest.raises(ConfigError, match=r"budget_cost=None: give step_costs and budget_cost together"):
        plan_computed_steps(prior, 3, step_costs=[1.0] * 5)


def test_schedule_dict_round_trip_and_checks() -> None:
    schedule = CacheSchedule((True, False, True, False, True), 0.5)
    assert schedule.to_dict() == {"computed": [1, 0, 1, 0, 1], "expected_error": 0.5}
    assert CacheSchedule.from_dict(schedule.to_dict()) == schedule
    assert schedule.reuse_steps == frozenset({1, 3}) and schedule.computed_steps == (0, 2, 4)
    with pytest.raises(ConfigError, match=r"computed='0111': the first and the last step must compute"):
        CacheSchedule.from_dict({"computed": [0, 1, 1, 1]})
    with pytest.raises(ConfigError, match=r"computed=\[1, 2, 1\]"):
        CacheSchedule.from_dict({"computed": [1, 2, 1]})


def test_from_features_identical_gives_zero_and_orthogonal_gives_one() -> None:
    e1, e2 = torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    prior = ErrorPrior.from_features([e1, e2, e1, e1 * 7], max_gap=2, model="m")
    assert prior.err.shape == (4, 3) and prior.err.dtype == torch.float64 and prior.probes == 2
    assert prior.err.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, INF], [0, INF, INF]]
    half = ErrorPrior.from_features([e1, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.zeros(2, 2)], max_gap=1)
    assert half.err[0, 1] == 0.5 and half.err[1, 1] == 1.0, "cond row kept, uncond row orthogonal; zero vs not: 1"
    assert ErrorPrior.from_features([torch.zeros(1, 3)] * 2, max_gap=1).err[0, 1] == 0
    with pytest.raises(ConfigError, match="features"):
        ErrorPrior.from_features([e1, e1[:1]])
    with pytest.raises(ConfigError, match=r"err=.*must be floats of shape \(4, 3\)"):
        ErrorPrior(4, torch.zeros(4, 2), max_gap=2)


def test_a_prior_for_another_run_is_refused() -> None:
    prior = ErrorPrior.from_features([torch.ones(1, 2)] * 3, max_gap=2, model="DiT", guidance=Guidance("cfg", 4.0))
    prior.check_compatible(model="DiT", num_steps=3, guidance=Guidance("cfg", 4.0))
    with pytest.raises(ConfigError, match=r"model='UNet': the error prior was measured on 'DiT'"):
        prior.check_compatible(model="UNet")
    with pytest.raises(ConfigError, match=r"num_steps=4: "):
        prior.check_compatible(num_steps=4)
    with pytest.raises(ConfigError, match=r"guidance=Guidance\(kind='none'"):
        prior.check_compatible(guidance=Guidance("none", 1.0))


def test_save_load_round_trip_and_corrupt_files(tmp_path: Path) -> None:
    features = [torch.randn(2, 5, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    prior = ErrorPrior.from_features(features, max_gap=3, model="DiT", guidance=Guidance("cfg", 2.5), probes=1)
    path = tmp_path / "prior.safetensors"
    prior.save(path)
    loaded = ErrorPrior.load(path)
    assert torch.equal(loaded.err, prior.err) and loaded.metadata() == prior.metadata()
    assert (loaded.model, loaded.guidance, loaded.probes, loaded.max_gap) == ("DiT", Guidance("cfg", 2.5), 1, 3)

    path.write_bytes(b"\x07not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ErrorPrior.load(path)
    prior.save(path)
    other = ErrorPrior.from_features(features[::-1], max_gap=3, model="DiT", guidance=Guidance("cfg", 2.5))
    from diffes.io import write_tensors

    write_tensors(path, {"err": other.err})  # a pair torn between two saves
    with pytest.raises(CheckpointError, match="does not match the digest"):
        ErrorPrior.load(path)
    write_tensors(path, {"err": prior.err[:, :2]})
    with pytest.raises(CheckpointError, match=r"prior.safetensors: err=.*shape \(4, 4\)"):
        ErrorPrior.load(path)
    path.with_suffix(".json").write_text('{"format": 1, "num_steps": "many"}')
    with pytest.raises(CheckpointError, match="num_steps"):
        ErrorPrior.load(path)


@pytest.fixture()
def dit() -> tuple[Any, dict[str, torch.Tensor], torch.Tensor, Guidance]:
    pipe = tiny_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    adapter, guidance = adapter_for(pipe), Guidance("cfg", 3.0)
    cond = adapter.encode([1, 2], guidance)
    latents = adapter.initial_latents(2, torch.Generator().manual_seed(0))
    return adapter, cond, latents, guidance


def test_measured_prior_on_a_tiny_dit_is_finite_and_deterministic(dit: tuple) -> None:
    adapter, cond, latents, guidance = dit
    timesteps = adapter.pipe.scheduler.timesteps
    first = measure_error_prior(adapter, cond, latents, 5, guidance, max_gap=3)
    second = measure_error_prior(adapter, cond, latents, 5, guidance, max_gap=3)
    assert first.err.shape == (5, 4) and torch.equal(first.err, second.err)
    defined = torch.tensor([[t + c < 5 and c > 0 for c in range(4)] for t in range(5)])
    assert torch.isfinite(first.err[defined]).all() and (first.err[defined] > 0).all()
    past = torch.tensor([[t + c >= 5 for c in range(4)] for t in range(5)])
    assert torch.isinf(first.err[past]).all() and (first.err[:, 0] == 0).all()
    assert (first.model, first.probes, first.guidance) == ("DiTTransformer2DModel", 2, guidance)
    assert adapter.pipe.scheduler.timesteps is timesteps, "measured on a copy of the scheduler"


def test_two_calls_per_step_are_stacked_row_wise() -> None:
    outputs = {0: ([[1.0, 0.0]], [[0.0, 1.0]]), 1: ([[1.0, 0.0]], [[1.0, 0.0]])}  # step -> (cond, uncond) rows

    class Denoiser(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def sample(cond: Any, latents: Any, num_steps: int, guidance: Any, generator: Any, scheduler: Any, on_step: Any):
        for step in range(num_steps):
            for rows in outputs[step]:
                adapter.denoiser(torch.tensor(rows))
            on_step()

    adapter = SimpleNamespace(denoiser=Denoiser(), pipe=SimpleNamespace(scheduler=SimpleNamespace()), sample=sample)
    prior = measure_error_prior(adapter, {}, torch.zeros(1, 2), 2, Guidance("cfg"), max_gap=1)  # type: ignore[arg-type]
    assert prior.err[0, 1] == 0.5, "the cond rows agree, the uncond rows are orthogonal"


def test_a_planned_schedule_drives_the_step_cache(dit: tuple) -> None:
    adapter, cond, latents, guidance = dit
    schedule = plan_computed_steps(measure_error_prior(adapter, cond, latents, 6, guidance, max_gap=3), 3)
    assert len(schedule.computed_steps) == 3 and schedule.computed_steps[0] == 0
    handle = apply_cache(adapter.pipe, schedule.rule())
    step, ran = [0], []
    first_layer = next(m for m in adapter.denoiser.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    first_layer.register_forward_pre_hook(lambda module, args: ran.append(step[0]))
    on_step = lambda: step.__setitem__(0, step[0] + 1)  # noqa: E731
    adapter.sample(cond, latents, 6, guidance, torch.Generator().manual_seed(1), on_step=on_step)
    assert tuple(ran) == schedule.computed_steps
    assert (handle.summary.computed, handle.summary.reused) == (3, 3)  # one batched (cond + uncond) call per step
    handle.remove()
