"""Honest baselines: what the dense model scores at the same cost by simply sampling with fewer steps.

A schedule at 50% of the dense MACs over N steps costs what the dense model costs over N/2 steps. These
functions sample the teacher's own probes (same conditions, same initial noise, same step-noise generator seed
as the evaluator) with the dense model at ``k`` steps, on the pipeline's own sampler or on DPM-Solver++, and
score them against the teacher's images with the run's metric, so they sit on the search's cost axis
(``k / N``) and distance axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from diffes.fitness.base import Metric
from diffes.fitness.teacher import Teacher, sample_dense
from diffes.models.adapters import SamplingAdapter
from diffes.models.steps import clone_scheduler
from diffes.routing.router import Router

__all__ = [
    "DPM_SOLVER",
    "StepsPoint",
    "dense_model",
    "dpm_solver_baseline",
    "dpm_solver_scheduler",
    "equal_cost_baselines",
    "equal_cost_steps",
    "fewer_steps_baseline",
    "sample_steps",
    "sampler_name",
    "steps_curve",
    "why_no_dpm_solver",
]

DPM_SOLVER = "DPM-Solver++"


def equal_cost_steps(num_steps: int, cost_fraction: float) -> int:
    """The most steps ``k`` whose cost ``k / num_steps`` is at most ``cost_fraction`` (at least 1)."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: use at least 1 step")
    # the tolerance keeps 0.29 * 100 (28.999999999999996 in floating point) at 29 steps
    return max(1, min(num_steps, math.floor(cost_fraction * num_steps + 1e-9)))


@contextmanager
def dense_model(router: Router | None) -> Iterator[None]:
    """The denoiser computes the dense model inside the block; the router's plan is restored after it."""
    if router is None:
        yield
        return
    was = router.current
    router.reset()
    try:
        yield
    finally:
        if was is not None:
            router.set_level(*was)


def _noise_scale(adapter: SamplingAdapter, scheduler: Any, steps: int) -> float:
    """The factor a pipeline multiplies unit noise by before sampling ``steps`` steps on ``scheduler``."""
    s = clone_scheduler(scheduler)
    adapter.set_timesteps(s, steps)
    return float(getattr(s, "init_noise_sigma", 1.0))


@torch.no_grad()
def sample_steps(
    adapter: SamplingAdapter, teacher: Teacher, steps: int, scheduler: Any = None, router: Router | None = None
) -> torch.Tensor:
    """Images in [0, 1] of the dense model sampling the teacher's probes (same conditions, noise and step-noise
    seed as the evaluator) with ``steps`` steps on ``scheduler`` (default: the pipeline's own sampler, so
    ``steps == teacher.steps`` gives the teacher's images back). ``router``, if the denoiser has one, is dense
    while sampling and restored after.

    Another scheduler gets the same unit noise, rescaled from the pipeline's scheduler's initial sigma to its own.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: use at least 1 step")
    probes = teacher.probes
    if scheduler is not None:
        ratio = _noise_scale(adapter, scheduler, steps) / _noise_scale(adapter, adapter.pipe.scheduler, teacher.steps)
        if ratio != 1.0:
            probes = replace(probes, latents=probes.latents * ratio)
    with dense_model(router):
        return sample_dense(adapter, probes, steps, teacher.guidance, scheduler)


def fewer_steps_baseline(
    adapter: SamplingAdapter,
    teacher: Teacher,
    metric: Metric,
    steps: int,
    scheduler: Any = None,
    router: Router | None = None,
) -> torch.Tensor:
    """Per-probe distances to ``teacher.images`` of ``sample_steps``: the dense model with ``steps`` steps on
    ``scheduler`` (default: the pipeline's own; ``steps == teacher.steps`` then scores 0)."""
    return metric(sample_steps(adapter, teacher, steps, scheduler, router), teacher.images)


def why_no_dpm_solver(scheduler: Any) -> str | None:
    """Why DPM-Solver++ built from ``scheduler``'s config would not be a fair baseline (None: it would be)."""
    name, config = type(scheduler).__name__, scheduler.config
    flow = "FlowMatch" in name or config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction"
    if flow:
        return f"{name} samples a flow-matching model; DPM-Solver++ from its config would read the flow as noise"
    if "beta_schedule" not in config:
        return f"{name} has no beta schedule for DPM-Solver++ to take over"
    if name == "DPMSolverMultistepScheduler" and config.get("algorithm_type") == "dpmsolver++":
        return f"the pipeline's own sampler is already {DPM_SOLVER}"
    return None


def dpm_solver_scheduler(scheduler: Any) -> Any | None:
    """``DPMSolverMultistepScheduler.from_config(scheduler.config)`` (DPM-Solver++) with the pipeline's own
    timestep spacing, or None where it does not apply (see ``why_no_dpm_solver``).

    The spacing is passed on explicitly: ``from_config`` drops values that were the source's defaults (DDIM's
    ``leading``), and DPM-Solver++'s own ``linspace`` starts at t=999, where a cosine schedule's alpha is 2e-9
    and the first data prediction diverges (classifier distance 9.9 at every step count on the zoo DiT).
    """
    if why_no_dpm_solver(scheduler) is not None:
        return None
    from diffusers import DPMSolverMultistepScheduler

    spacing = scheduler.config.get("timestep_spacing") or "linspace"
    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", timestep_spacing=spacing
    )


def dpm_solver_baseline(
    adapter: SamplingAdapter, teacher: Teacher, metric: Metric, steps: int, router: Router | None = None
) -> tuple[torch.Tensor | None, str | None]:
    """``fewer_steps_baseline`` on DPM-Solver++: (distances, None), or (None, the reason it is skipped)."""
    scheduler = dpm_solver_scheduler(adapter.pipe.scheduler)
    if scheduler is None:
        return None, why_no_dpm_solver(adapter.pipe.scheduler)
    return fewer_steps_baseline(adapter, teacher, metric, steps, scheduler, router), None


def sampler_name(scheduler: Any) -> str:
    """A short name for a scheduler: DDIMScheduler -> DDIM."""
    name = type(scheduler).__name__
    return name.removesuffix("Scheduler") or name


@dataclass(frozen=True)
class StepsPoint:
    """The dense model at ``steps`` of the run's ``num_steps`` steps, on ``sampler``: cost ``steps / num_steps``."""

    sampler: str
    steps: int
    num_steps: int
    distances: torch.Tensor

    @property
    def cost(self) -> float:
        return self.steps / self.num_steps

    @property
    def distance(self) -> float:
        return float(self.distances.mean())

    @property
    def distance_se(self) -> float:
        n = self.distances.numel()
        return float(self.distances.std() / n**0.5) if n > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "num_steps": self.num_steps,
            "cost": self.cost,
            "distance": self.distance,
            "distance_se": self.distance_se,
        }


def steps_curve(
    adapter: SamplingAdapter,
    teacher: Teacher,
    metric: Metric,
    num_steps: int,
    steps: Sequence[int],
    router: Router | None = None,
) -> tuple[list[StepsPoint], str | None]:
    """The dense model at each of ``steps`` on the pipeline's sampler, then on DPM-Solver++ where it applies;
    the second item says why DPM-Solver++ was skipped (None: it was not)."""
    own = sampler_name(adapter.pipe.scheduler)
    points = [
        StepsPoint(own, k, num_steps, fewer_steps_baseline(adapter, teacher, metric, k, router=router)) for k in steps
    ]
    dpm = dpm_solver_scheduler(adapter.pipe.scheduler)
    if dpm is None:
        return points, why_no_dpm_solver(adapter.pipe.scheduler)
    for k in steps:
        points.append(
            StepsPoint(DPM_SOLVER, k, num_steps, fewer_steps_baseline(adapter, teacher, metric, k, dpm, router))
        )
    return points, None


def equal_cost_baselines(
    adapter: SamplingAdapter,
    teacher: Teacher,
    metric: Metric,
    num_steps: int,
    cost_fraction: float,
    router: Router | None = None,
) -> dict[str, Any]:
    """best.json's entries: ``fewer_steps`` (the pipeline's sampler with the most steps that cost at most
    ``cost_fraction`` of ``num_steps``) and ``fewer_steps_dpm_solver`` (the same on DPM-Solver++, or
    ``{"skipped": why}``). One trajectory of the probes per sampler."""
    k = equal_cost_steps(num_steps, cost_fraction)
    points, skipped = steps_curve(adapter, teacher, metric, num_steps, [k], router)
    dpm = points[1].to_dict() if skipped is None else {"skipped": skipped}
    return {"fewer_steps": points[0].to_dict(), "fewer_steps_dpm_solver": dpm}
