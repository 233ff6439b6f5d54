"""The cache runtime and its rules on every pipeline family: what computes, what a skipped step returns, and
that caching composes with routing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny import FAMILIES, FAMILY_SIZE, zoo_pipeline

from diffes.caching.rules import (
    FirstBlockRule,
    IntervalRule,
    MagCacheRule,
    MaskRule,
    TeaCacheRule,
    relative_l1,
    rule_from_dict,
)
from diffes.caching.runtime import Extrapolate, Residual, _newton, apply_cache, attach_cache
from diffes.errors import ConfigError
from diffes.models.adapters import Guidance, adapter_for
from diffes.models.steps import ManualSteps, StepInfo
from diffes.pruning import PruningConfig, build_library
from diffes.routing import RoutingSchedule, apply

STEPS = 5
GUIDANCE = Guidance("cfg", 2.0)
UNETS = {"sd", "sdxl"}

STEP_RULES = [
    IntervalRule(2),
    IntervalRule(3, Extrapolate(2), compute_last=True),
    MaskRule((True, False, True, False, True)),
    MagCacheRule((1.0, 0.9, 1.02, 1.01, 0.99), threshold=0.1),
]
BLOCK_RULES = [
    IntervalRule(2, Residual(1, 0)),
    FirstBlockRule(0.5, fn=1),
    TeaCacheRule(0.3, (1.0, 0.0)),
]


def _adapter(family: str) -> Any:
    build, _ = FAMILIES[family]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    return adapter_for(pipe, *FAMILY_SIZE.get(family, (None, None)))


def _images(adapter: Any, family: str, steps: int = STEPS) -> torch.Tensor:
    guidance = Guidance("distilled", 3.5) if family == "flux" else GUIDANCE
    return adapter.pipe_call(FAMILIES[family][1], steps, guidance, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_rule_runs_on_every_family_and_computing_every_step_changes_nothing(family: str) -> None:
    adapter = _adapter(family)
    dense = _images(adapter, family)
    rules: list[Any] = [*STEP_RULES, *([] if family in UNETS else BLOCK_RULES)]
    for rule in rules:
        handle = apply_cache(adapter.pipe, rule)
        images = _images(adapter, family)
        summary = handle.summary
        handle.remove()
        assert torch.isfinite(images).all(), (family, rule)
        assert summary.actions[0] == "compute" and len(summary.actions) == STEPS
        assert summary.computed + summary.reused + summary.extrapolated + summary.residual == STEPS
        assert summary.computed < STEPS or rule.name in ("firstblock", "teacache", "magcache"), rule
    everything = [IntervalRule(1), MaskRule((True,) * STEPS, Extrapolate(1))]
    if family not in UNETS:
        everything.append(IntervalRule(1, Residual(1, 0)))
    for rule in everything:
        handle = apply_cache(adapter.pipe, rule)
        assert torch.equal(_images(adapter, family), dense), (family, rule)
        assert handle.summary.computed == STEPS
        handle.remove()
    assert torch.equal(_images(adapter, family), dense)  # removed: the pipeline is itself again


def test_block_rules_on_a_unet_are_one_line_errors() -> None:
    pipe = zoo_pipeline("unet-digits")
    for rule in BLOCK_RULES:
        with pytest.raises(ConfigError, match=r"cache_rule=.*step-level rule"):
            apply_cache(pipe, rule)
    apply_cache(pipe, IntervalRule(2)).remove()  # nothing was left attached by the refusals


def test_residual_step_runs_the_blocks_outside_the_span_only() -> None:
    pipe = zoo_pipeline("dit-digits")
    blocks = pipe.transformer.transformer_blocks
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.attn1.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    handle = apply_cache(pipe, IntervalRule(2, Residual(1, 1)))
    pipe([1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert handle.summary.actions == ["compute", "residual", "compute", "residual"]
    # first and last blocks run every step; the ones between only on computed steps
    assert calls[0] == calls[-1] == 4 and all(c == 2 for c in calls[1:-1])
    assert handle.summary.cached_blocks == 2 * (len(blocks) - 2)


def test_cached_state_does_not_leak_across_a_stage_switch() -> None:
    pipe = zoo_pipeline("dit-digits")
    config = PruningConfig(stages=2, steps=4, calibration_samples=1)
    library = build_library(pipe, config, progress=False)
    pipe.scheduler.set_timesteps(4)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, [0, 3])

    def run() -> torch.Tensor:
        return pipe([1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images

    routed = apply(pipe, library, schedule)
    reference = run()
    cache = apply_cache(pipe, IntervalRule(1), routed)  # computing every step: the routed run, bit for bit
    assert torch.equal(run(), reference)
    cache.remove()
    cache = apply_cache(pipe, IntervalRule(100), routed)  # would reuse step 0 forever without the switch
    run()
    assert cache.summary.actions == ["compute", "reuse", "compute", "reuse"]
    assert cache.summary.invalidations == 1
    cache.remove()
    routed.remove()
    dense = apply(pipe, library, RoutingSchedule((0, 0), schedule.edges))  # one set of weights: nothing to drop
    cache = apply_cache(pipe, IntervalRule(100), dense)
    run()
    assert cache.summary.actions == ["compute", "reuse", "reuse", "reuse"] and cache.summary.invalidations == 0
    cache.remove()
    dense.remove()


class _Echo(torch.nn.Module):
    """A denoiser whose output is its input times the step: lets a test see which call was served what."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 10


def test_state_is_kept_per_guidance_branch_and_extrapolation_is_exact_on_lines() -> None:
    model, steps = _Echo(), ManualSteps()
    handle = attach_cache(model, IntervalRule(2), steps)
    a, b = torch.ones(1, 2), torch.full((1, 2), 2.0)
    outs = []
    for step in range(3):
        steps.set(step, 3, 1000.0 - step)
        outs.append((model(a + step), model(b + step)))  # two calls a step: conditional, unconditional
    assert torch.equal(outs[1][0], outs[0][0]) and torch.equal(outs[1][1], outs[0][1])
    assert not torch.equal(outs[1][0], outs[1][1])
    handle.remove()
    points = [(0, torch.tensor(1.0)), (2, torch.tensor(5.0)), (4, torch.tensor(17.0))]  # 1 + x^2
    assert float(_newton(points[1:], 6)) == 5.0 + 6.0 * 4  # first order: the last secant
    assert float(_newton(points, 6)) == 37.0  # second order: the parabola itself


def _decisions(rule: Any, signals: list[torch.Tensor]) -> list[bool]:
    policy = rule.policy()
    return [policy.decide(StepInfo(i, len(signals), 0.0), s, True) for i, s in enumerate(signals)]


def test_teacache_computes_when_the_accumulated_estimate_reaches_the_threshold() -> None:
    base = torch.ones(4)
    signals = [base * v for v in (1.0, 1.1, 1.21, 1.331, 1.4641, 1.61051, 1.771561, 1.9487171)]  # 10% a step
    changes = [relative_l1(b, a) for a, b in zip(signals, signals[1:])]
    assert all(abs(c - 0.1) < 1e-6 for c in changes)
    rule = TeaCacheRule(0.25, (2.0, 0.0))  # rescaled: 0.2 per step, so every second skip reaches 0.25
    assert _decisions(rule, signals) == [True, False, True, False, True, False, True, True]
    # a threshold no step reaches: only the first and last steps compute, unless skips in a row are capped
    assert _decisions(TeaCacheRule(9.0, (1.0, 0.0)), signals) == [True] + [False] * 6 + [True]
    capped = TeaCacheRule(9.0, (1.0, 0.0), max_skips=2)
    assert _decisions(capped, signals) == [True, False, False, True, False, False, True, True]


def test_magcache_and_first_block_follow_their_definitions() -> None:
    ratios = (1.0, 1.0, 0.95, 0.95, 0.95, 0.95)
    rule = MagCacheRule(ratios, threshold=0.12, max_skips=3, retention=0.3)
    # retention: steps 0-1 compute; then errors 0.05, 0.05+0.0975 > 0.12 -> compute at 3; 0.05; 0.1475 -> compute
    assert _decisions(rule, [torch.zeros(1)] * 6) == [True, True, False, True, False, True]
    fb = FirstBlockRule(0.15)
    signals = [torch.ones(3) * v for v in (1.0, 1.1, 1.2, 1.3)]  # 10%, 20%, 30% from the last computed one
    assert _decisions(fb, signals) == [True, False, True, False]


def test_rules_round_trip_and_bad_values_are_one_line_errors() -> None:
    for rule in [*STEP_RULES, *BLOCK_RULES, TeaCacheRule(0.2, (1.0, 2.0, 3.0), 1, 20, max_skips=3)]:
        assert rule_from_dict(rule.to_dict()) == rule
    bad = [
        (lambda: rule_from_dict({"rule": "fastcache"}), "cache_rule='fastcache'"),
        (lambda: TeaCacheRule(-1.0), "cache_threshold=-1.0"),
        (lambda: IntervalRule(0), "cache_every=0"),
        (lambda: MaskRule((False, True)), "cache_mask="),
        (lambda: MagCacheRule(()), "ratios="),
        (lambda: MaskRule((True,) * 7).check_steps(5), "cache_mask=7: give one entry per sampling step"),
        (lambda: TeaCacheRule(0.1, num_steps=20).check_steps(10), "steps=10: the cache calibration was made at 20"),
        (lambda: Extrapolate(3), "cache_order=3"),  # type: ignore[arg-type]
    ]
    for make, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            make()
