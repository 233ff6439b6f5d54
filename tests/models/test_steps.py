from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, HeunDiscreteScheduler
from tiny import run_tiny, tiny_dit_pipeline, tiny_pixart_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_unet2d

from diffes.errors import UnsupportedModelError
from diffes.models.pipeline import ZooPipeline
from diffes.models.steps import StepInfo, attach_step_hook, find_denoiser


def record_steps(pipe: Any) -> tuple[list[StepInfo], Any]:
    seen: list[StepInfo] = []
    return seen, attach_step_hook(pipe, seen.append, "record")


@pytest.mark.parametrize("build", [tiny_dit_pipeline, tiny_pixart_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_each_denoiser_call_maps_to_its_step(build: Any, guidance: float) -> None:
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    seen, handle = record_steps(pipe)
    run_tiny(pipe, steps=4, guidance=guidance)
    # guidance batches both branches into one call, so exactly one call per step
    assert [s.step for s in seen] == [0, 1, 2, 3]
    assert [s.timestep for s in seen] == [float(t) for t in pipe.scheduler.timesteps]
    assert all(s.num_steps == 4 for s in seen)
    handle.remove()
    seen.clear()
    run_tiny(pipe, steps=2, guidance=guidance)
    assert seen == []  # detached: nothing recorded and the scheduler is its own again
    assert "step" not in pipe.scheduler.__dict__


@pytest.mark.parametrize("random_zoo_pipe", ["dit-digits", "unet-digits"], indirect=True)
def test_zoo_pipeline_steps_and_second_call_restarts(random_zoo_pipe: ZooPipeline) -> None:
    seen, handle = record_steps(random_zoo_pipe)
    random_zoo_pipe([1, 2], num_inference_steps=3, output_type="pt")
    random_zoo_pipe([1, 2], num_inference_steps=5, output_type="pt")
    assert [s.step for s in seen] == [0, 1, 2, 0, 1, 2, 3, 4]
    handle.remove()


class SequentialGuidancePipeline(DiffusionPipeline):  # type: ignore[misc]
    """Calls the denoiser twice per step (conditional, then unconditional), as some pipelines do."""

    def __init__(self, unet: torch.nn.Module, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, steps: int) -> torch.Tensor:
        x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        self.scheduler.set_timesteps(steps)
        for t in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(x, t)
            cond = self.unet(model_in, t).sample
            uncond = self.unet(model_in, t).sample
            x = self.scheduler.step(uncond + 2 * (cond - uncond), t, x).prev_sample
        return x


def test_sequential_guidance_calls_share_a_step() -> None:
    pipe = SequentialGuidancePipeline(tiny_unet2d(), EulerDiscreteScheduler())
    seen, handle = record_steps(pipe)
    pipe(3)
    assert [s.step for s in seen] == [0, 0, 1, 1, 2, 2]
    handle.remove()


def test_second_order_scheduler_and_swapped_scheduler() -> None:
    pipe = SequentialGuidancePipeline(tiny_unet2d(), EulerDiscreteScheduler())
    seen, handle = record_steps(pipe)
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)  # swapped after attaching
    pipe(3)
    n = len(pipe.scheduler.timesteps)  # Heun evaluates twice per step: 2 * 3 - 1 entries
    assert n == 5
    assert [s.step for s in seen] == [i for i in range(n) for _ in range(2)]
    assert [s.timestep for s in seen[::2]] == [float(t) for t in pipe.scheduler.timesteps]
    handle.remove()


def test_two_hooks_share_one_tracker_and_detach_independently() -> None:
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    first, h1 = record_steps(pipe)
    second: list[StepInfo] = []
    h2 = attach_step_hook(pipe, second.append, "second")
    run_tiny(pipe, steps=2)
    h1.remove()
    run_tiny(pipe, steps=3)
    assert [s.step for s in first] == [0, 1]
    assert [s.step for s in second] == [0, 1, 0, 1, 2]
    h2.remove()


def test_pipeline_without_denoiser_is_rejected() -> None:
    with pytest.raises(UnsupportedModelError, match="no denoiser found"):
        find_denoiser(object())


def test_same_hook_name_twice_is_rejected() -> None:
    pipe = tiny_dit_pipeline()
    handle = attach_step_hook(pipe, lambda s: None, "dup")
    with pytest.raises(UnsupportedModelError, match="already attached"):
        attach_step_hook(pipe, lambda s: None, "dup")
    handle.remove()


def test_hooks_keep_set_timesteps_signature_for_sigmas() -> None:
    """FluxPipeline always passes sigmas= (and mu=); retrieve_timesteps inspects set_timesteps' signature, which a
    bare (*args, **kwargs) wrapper hides. With a diffes hook attached the pipeline must still run."""
    from tiny import full_flux_pipeline

    pipe = full_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen, handle = record_steps(pipe)
    try:
        pipe("a 3", num_inference_steps=3, height=8, width=8, output_type="latent")
    finally:
        handle.remove()
    assert [s.step for s in seen] == [0, 1, 2]
    assert [s.timestep for s in seen] == [float(t) for t in pipe.scheduler.timesteps]
