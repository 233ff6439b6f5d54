"""The dense model with fewer steps: the equal-cost step count, the teacher back at full steps, DPM-Solver++."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from valid_files import tiny_library

from diffes.fitness import get_metric
from diffes.fitness.baselines import (
    dpm_solver_baseline,
    dpm_solver_scheduler,
    equal_cost_baselines,
    equal_cost_steps,
    fewer_steps_baseline,
    why_no_dpm_solver,
)
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.adapters import Guidance, adapter_for
from diffes.routing import Router

STEPS = 4


def test_equal_cost_steps_is_the_most_steps_within_the_cost() -> None:
    assert equal_cost_steps(10, 0.5) == 5
    assert equal_cost_steps(10, 0.69) == 6
    assert equal_cost_steps(10, 0.7) == 7  # 0.7 * 10 is 7.000000000000001 in floating point
    assert equal_cost_steps(100, 0.29) == 29  # and 0.29 * 100 is 28.999999999999996
    assert equal_cost_steps(6, 1.0) == 6 and equal_cost_steps(6, 1.5) == 6
    assert equal_cost_steps(10, 0.05) == 1 and equal_cost_steps(10, 0.0) == 1  # never below one step
    with pytest.raises(ValueError, match="num_steps=0"):
        equal_cost_steps(0, 0.5)


def test_the_dense_model_at_full_steps_is_the_teacher_and_the_router_is_left_as_found() -> None:
    pipe, library = tiny_library()  # a random-weight zoo DiT, 2 stages over 4 steps
    adapter, guidance = adapter_for(pipe), Guidance("cfg", 2.0)
    teacher = Teacher.compute(adapter, make_probes(adapter, [0, 1, 2], 1, 5, guidance), STEPS, guidance)
    metric = get_metric("mse")
    router = Router(adapter.denoiser, library)
    router.set_level(1, library.num_levels - 1)  # as the evaluator may leave it: the sparsest plan routed
    assert torch.equal(fewer_steps_baseline(adapter, teacher, metric, STEPS, router=router), torch.zeros(3))
    assert router.current == (1, library.num_levels - 1)
    fewer = fewer_steps_baseline(adapter, teacher, metric, 2, router=router)
    assert fewer.shape == (3,) and bool((fewer > 0).all())
    dpm, why = dpm_solver_baseline(adapter, teacher, metric, 2, router=router)
    assert why is None and dpm is not None and bool((dpm > 0).all())
    summary = equal_cost_baselines(adapter, teacher, metric, STEPS, 0.6, router=router)
    assert summary["fewer_steps"]["steps"] == 2 and summary["fewer_steps"]["cost"] == 0.5
    assert summary["fewer_steps"]["distance"] == pytest.approx(float(fewer.mean()))
    assert summary["fewer_steps_dpm_solver"]["distance"] == pytest.approx(float(dpm.mean()))
    assert router.current == (1, library.num_levels - 1)


def test_dpm_solver_is_skipped_where_it_does_not_apply() -> None:
    flow = FlowMatchEulerDiscreteScheduler()
    assert dpm_solver_scheduler(flow) is None and "flow-matching" in str(why_no_dpm_solver(flow))
    already = DPMSolverMultistepScheduler()
    assert dpm_solver_scheduler(already) is None and "already" in str(why_no_dpm_solver(already))
    from diffes.models.zoo import sampling_scheduler

    dpm = dpm_solver_scheduler(sampling_scheduler())
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.timestep_spacing == "leading"
