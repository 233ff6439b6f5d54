"""Routed sampling through an unmodified pipe(...) call equals switching between separate pruned copies."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from tiny import PIPELINES, run_tiny, runner_for

from diffes.models.steps import StepAwareHook, attach_hook, find_denoiser
from diffes.pruning import PruningConfig, build_library
from diffes.routing import RoutingSchedule, apply

STEPS = 6


class SwitchCopies(StepAwareHook):
    """The MosaicDiff way: one pruned copy per stage, the call forwarded to the copy of its stage."""

    def __init__(self, copies: list[torch.nn.Module], schedule: RoutingSchedule) -> None:
        super().__init__()
        self.copies, self.schedule = copies, schedule

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.copies[self.schedule.stage_at(self.step_info().timestep)](*args, **kwargs)


def sample(pipe: Any) -> torch.Tensor:
    run = runner_for(pipe)
    if run is None:
        gen = torch.Generator().manual_seed(3)
        return pipe([0, 5, 9], num_inference_steps=STEPS, generator=gen, output_type="pt").images
    return torch.as_tensor(run_tiny(pipe, STEPS))


# both orders on the zoo DiT, each other model once (the suite has a time limit)
SAMPLED = [("dit-digits", False), ("dit-digits", True), ("unet-digits", True), ("DiTTransformer2DModel", False)]
SAMPLED += [("PixArtTransformer2DModel", True), ("UNet2DConditionModel", False)]


@pytest.mark.parametrize(("model_class", "nested"), SAMPLED)
def test_routed_run_equals_stitched_copies(model_class: str, nested: bool) -> None:
    pipe = PIPELINES[model_class]()
    config = PruningConfig(importance="taylor", nested=nested, stages=3, steps=STEPS, calibration_samples=2)
    library = build_library(pipe, config, run=runner_for(pipe), progress=False)
    _, denoiser = find_denoiser(pipe)
    original = copy.deepcopy(denoiser)
    dense = sample(pipe)
    pipe.scheduler.set_timesteps(STEPS)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, [6, 2, 4])

    handle = apply(pipe, library, schedule)
    routed = sample(pipe)
    copies = [handle.router.reference(original, library.plan(s, lv)) for s, lv in enumerate(schedule.levels)]
    handle.remove()

    stitched_hook = attach_hook(pipe, SwitchCopies(copies, schedule), "stitched")
    stitched = sample(pipe)
    stitched_hook.remove()

    assert torch.equal(routed, stitched)
    assert not torch.equal(routed, dense)
    assert torch.equal(sample(pipe), dense)  # removed: the pipeline is dense again


def test_stage_map_follows_timesteps_at_other_step_counts() -> None:
    pipe = PIPELINES["dit-digits"]()
    library = build_library(pipe, PruningConfig(stages=4, steps=8, calibration_samples=2), progress=False)
    pipe.scheduler.set_timesteps(8)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, [1, 2, 3, 4])
    assert [schedule.stage_at(float(t)) for t in pipe.scheduler.timesteps] == library.schedule.step_stages()
    seen: list[tuple[int, int] | None] = []
    spy = _Spy(seen)
    spy_handle = attach_hook(pipe, spy, "spy")  # registered first, so it runs after routing and sees its state
    handle = apply(pipe, library, schedule)
    spy.router = handle.router
    pipe([1], num_inference_steps=16)
    spy_handle.remove()
    handle.remove()
    stages = [s[0] for s in seen if s is not None]
    assert len(stages) == 16 and stages == sorted(stages) and set(stages) == {0, 1, 2, 3}
    assert [stages.count(s) for s in range(4)] == [4, 4, 4, 4]


class _Spy(StepAwareHook):
    def __init__(self, seen: list) -> None:
        super().__init__()
        self.router: Any = None
        self.seen = seen

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.seen.append(self.router.current)
        return args, kwargs
