"""SODA-style sensitivity: per step and block, the output change when one block is cached or skipped."""

from __future__ import annotations

import pytest
import torch
from tiny import zoo_pipeline

from diffes.caching.sensitivity import Sensitivity, measure_sensitivity, sensitivity_levels
from diffes.errors import ConfigError
from diffes.models.adapters import Guidance, adapter_for

GUIDANCE = Guidance("cfg", 2.0)


def _measure(pipe: object, steps: int = 4) -> Sensitivity:
    adapter = adapter_for(pipe)
    cond = adapter.encode([1, 7], GUIDANCE)
    latents = adapter.initial_latents(2, torch.Generator().manual_seed(0))
    return measure_sensitivity(adapter, cond, latents, steps, GUIDANCE, seed=1)


def test_sensitivity_is_deterministic_and_zero_for_a_block_that_does_nothing() -> None:
    pipe = zoo_pipeline("dit-digits")
    block = pipe.transformer.transformer_blocks[0]
    with torch.no_grad():  # the block's two residual branches write zeros: skipping or caching it changes nothing
        for linear in (block.attn1.to_out[0], block.ff.net[2]):
            linear.weight.zero_()
            linear.bias.zero_()
    first, second = _measure(pipe), _measure(pipe)
    assert torch.equal(first.cached, second.cached) and torch.equal(first.pruned, second.pruned)
    n = len(pipe.transformer.transformer_blocks)
    assert first.pruned.shape == first.cached.shape == (4, n) and first.blocks[0] == "transformer_blocks.0"
    assert torch.all(first.pruned[:, 0] == 0) and torch.all(first.cached[:, 0] == 0)
    assert (
        torch.all(first.pruned[:, 1:] > 0) and torch.all(first.cached[0] == 0) and torch.all(first.cached[1:, 1:] > 0)
    )
    assert sum(first.step_weights()) == pytest.approx(4.0)
    assert Sensitivity.from_dict(first.to_dict()).blocks == first.blocks


def test_levels_go_sparse_where_pruning_hurts_least() -> None:
    costs = (1.0, 0.75, 0.5, 0.25)
    levels = sensitivity_levels([1.0, 0.01], [0.5, 0.5], costs, 0.6)
    assert levels[1] > levels[0] and 0.5 * costs[levels[0]] + 0.5 * costs[levels[1]] <= 0.6
    assert sensitivity_levels([0.01, 1.0], [0.5, 0.5], costs, 0.6) == levels[::-1]
    assert sensitivity_levels([0.0, 1.0], [0.0, 1.0], costs, 0.6) == (0, 2)  # a stage without steps saves nothing


def test_a_unet_has_no_blocks_to_measure() -> None:
    with pytest.raises(ConfigError, match="cache_rule='UNet2DModel'"):
        _measure(zoo_pipeline("unet-digits"), steps=2)
