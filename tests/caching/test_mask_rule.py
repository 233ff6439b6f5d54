"""Mask caching on real tiny diffusers pipelines: which steps compute, what the reused steps return."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from tiny import run_tiny, tiny_dit, tiny_dit_pipeline, tiny_unet2d_pipeline

from diffes.caching import MaskRule, apply_cache
from diffes.errors import ConfigError
from diffes.models.steps import attach_step_hook, find_denoiser


def record_outputs(pipe: Any) -> list[Any]:
    """Every output the denoiser hands back to the pipeline (cached or computed), in call order."""
    _, denoiser = find_denoiser(pipe)
    seen: list[Any] = []
    denoiser.register_forward_hook(lambda m, args, out: seen.append(out))
    return seen


def count_computations(pipe: Any) -> list[int]:
    """Forwards that really ran the network (its first layer saw an input)."""
    _, denoiser = find_denoiser(pipe)
    count = [0]
    first = next(m for m in denoiser.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    first.register_forward_pre_hook(lambda m, args: count.__setitem__(0, count[0] + 1))
    return count


def test_no_reuse_changes_nothing() -> None:
    pipe = tiny_unet2d_pipeline()
    dense = run_tiny(pipe, steps=5)
    handle = apply_cache(pipe, MaskRule.reusing([], 5))
    assert np.array_equal(run_tiny(pipe, steps=5), dense)
    assert (handle.summary.computed, handle.summary.reused) == (5, 0)


def test_reused_steps_return_the_last_computed_output_and_skip_the_network() -> None:
    pipe = tiny_unet2d_pipeline()
    dense = run_tiny(pipe, steps=6)
    outputs, computed = record_outputs(pipe), count_computations(pipe)
    handle = apply_cache(pipe, MaskRule.reusing([2, 3, 5], 6))
    cached = run_tiny(pipe, steps=6)
    assert computed[0] == 3 and (handle.summary.computed, handle.summary.reused) == (3, 3)
    assert outputs[2] is outputs[1] and outputs[3] is outputs[1] and outputs[5] is outputs[4]
    assert outputs[4] is not outputs[1]
    assert not np.array_equal(cached, dense) and np.abs(cached - dense).max() < 0.5


def test_batched_guidance_pipeline_is_cached_per_step() -> None:
    pipe = tiny_dit_pipeline()
    outputs, computed = record_outputs(pipe), count_computations(pipe)
    handle = apply_cache(pipe, MaskRule.reusing([1, 3], 4))
    run_tiny(pipe, steps=4)
    assert computed[0] == 2 and outputs[1] is outputs[0] and outputs[3] is outputs[2]
    handle.remove()
    run_tiny(pipe, steps=4)
    assert computed[0] == 6, "remove() must give back a model that computes every step"


def test_two_calls_per_step_reuse_their_own_branch() -> None:
    # guidance made as two denoiser calls per step: a reused step must answer each call with its own branch
    model = tiny_dit()
    pipe = SimpleNamespace(transformer=model, scheduler=DDIMScheduler(clip_sample=False))
    handle = apply_cache(pipe, MaskRule.reusing([1], 3))
    pipe.scheduler.set_timesteps(3)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    per_step = []
    for t in pipe.scheduler.timesteps:
        ts = t.expand(1)
        cond = model(x, timestep=ts, class_labels=torch.tensor([3])).sample
        uncond = model(x, timestep=ts, class_labels=torch.tensor([1000])).sample
        per_step.append((cond, uncond))
        guided = uncond + 2.0 * (cond - uncond)
        x = pipe.scheduler.step(guided[:, : x.shape[1]], t, x).prev_sample  # (the tiny DiT also predicts sigma)
    assert per_step[1][0] is per_step[0][0] and per_step[1][1] is per_step[0][1]
    assert not torch.equal(per_step[0][0], per_step[0][1])
    assert (handle.summary.computed, handle.summary.reused) == (2, 1)  # counted in steps, not calls


def test_every_pipe_call_starts_afresh() -> None:
    pipe = tiny_unet2d_pipeline()
    handle = apply_cache(pipe, MaskRule.reusing([1, 2], 4))
    first = run_tiny(pipe, steps=4)
    second = run_tiny(pipe, steps=4)
    assert np.array_equal(first, second)
    assert (handle.summary.computed, handle.summary.reused) == (2, 2), "state covers the latest call only"


def test_shares_the_step_tracker_with_other_hooks_and_detaches_cleanly() -> None:
    pipe = tiny_unet2d_pipeline()
    steps_seen: list[int] = []
    other = attach_step_hook(pipe, lambda info: steps_seen.append(info.step), "observer")
    cache = apply_cache(pipe, MaskRule.reusing([1], 3))
    assert pipe.__dict__["_diffes_step_tracker"].users == 2
    run_tiny(pipe, steps=3)
    # the cache, attached last, is the outer hook: a reused step skips the forward and the hooks inside it
    assert steps_seen == [0, 2] and cache.summary.reused == 1
    cache.remove()
    other.remove()
    assert "_diffes_step_tracker" not in pipe.__dict__ and "step" not in pipe.scheduler.__dict__


@pytest.mark.parametrize("steps", [[0], [-1], [1, 0]])
def test_step_zero_or_negative_is_refused(steps: list[int]) -> None:
    with pytest.raises(ConfigError, match=r"reuse=.*step 0 has no earlier output"):
        MaskRule.reusing(steps, 4)
