"""A plan routed into the shared model computes what the torch-pruning-pruned copy computes."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import PIPELINES, run_tiny, runner_for

from diffes.models.steps import find_denoiser
from diffes.pruning import PruningConfig, build_library, prune_copy
from diffes.pruning.calibration import CalibrationSet, record_calls
from diffes.routing import Router
from diffes.stages import StageSchedule

COMBOS = [(imp, nested, comp) for imp in ("magnitude", "taylor") for nested in (False, True) for comp in (False, True)]
# every importance x router mode on the transformers; on the slower convolutional and PixArt models each router
# mode once (gather, zero-copy, bank), importances alternating: the suite has a time limit
FULL = {"dit-digits", "DiTTransformer2DModel"}
MODES = [("taylor", False, True), ("magnitude", True, False), ("taylor", True, True)]
CASES = [(m, *c) for m in PIPELINES for c in (COMBOS if m in FULL else MODES)]
ATOL = 1e-6


def tolerance(reference: torch.Tensor) -> float:
    """1e-6, scaled up for outputs larger than 1: a reordered float32 sum differs by rounding only."""
    return ATOL * max(1.0, reference.abs().max().item())


def probe_calls(pipe: object, steps: int = 4) -> CalibrationSet:
    """Denoiser inputs from a dense run, to compare routed and pruned outputs on real inputs."""
    run = runner_for(pipe) or (
        lambda p, n: p([1, 7], num_inference_steps=n, generator=torch.Generator().manual_seed(5))
    )
    return record_calls(pipe, StageSchedule.uniform(steps, 2), run)


@pytest.mark.parametrize(("model_class", "importance", "nested", "compensate"), CASES)
def test_routed_plan_equals_torch_pruning_copy(
    model_class: str, importance: str, nested: bool, compensate: bool
) -> None:
    pipe = PIPELINES[model_class]()
    config = PruningConfig(
        importance=importance,
        nested=nested,
        compensate=compensate,
        stages=2,
        steps=4,
        calibration_samples=2,
        levels=(0, 0.25, 0.5, 0.75),
    )
    library = build_library(pipe, config, run=runner_for(pipe), progress=False)
    calls = probe_calls(pipe)
    _, model = find_denoiser(pipe)
    reference = copy.deepcopy(model)
    router = Router(model, library)
    assert router.mode == (("bank" if compensate else "zero-copy") if nested else "gather")
    for stage in range(2):
        for level in range(1, 4):
            plan = library.plan(stage, level)
            assert plan.slices, "every level above 0 must prune something"
            assert bool(plan.replacements) == compensate
            router.set(plan)
            pruned = prune_copy(reference, library.structure, plan)
            same_order = router.reference(reference, plan)  # the pruned copy in the router's channel order
            with torch.no_grad():
                for call in calls.calls[stage]:
                    routed_out = calls.run(model, call)
                    assert torch.equal(routed_out, calls.run(same_order, call)), f"stage {stage} level {level}"
                    pruned_out = calls.run(pruned, call)
                    diff = (routed_out - pruned_out).abs().max().item()
                    if nested:  # the one-time permutation only reorders float32 sums
                        assert diff <= 10 * tolerance(pruned_out), f"stage {stage} level {level}: {diff}"
                    else:  # gather keeps torch-pruning's own channel order
                        assert diff == 0.0, f"stage {stage} level {level}: max abs diff {diff}"
    # the routed shared model still runs inside its own, unmodified pipeline
    router.set(library.plan(1, 3))
    run = runner_for(pipe) or (lambda p, n: p([3], num_inference_steps=n))
    run(pipe, 3)
    router.remove()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), f"{name} not restored bit-exactly"


def test_depth_pruning_drops_blocks_like_a_shorter_module_list() -> None:
    pipe = PIPELINES["dit-digits"]()
    config = PruningConfig(axis="depth", stages=2, steps=4, calibration_samples=2, levels=(0, 0.2, 0.5))
    library = build_library(pipe, config, progress=False)
    model = pipe.denoiser
    reference = copy.deepcopy(model)
    router = Router(model, library, mode="gather")
    calls = probe_calls(pipe)
    plan = library.plan(1, 2)
    assert len(plan.skipped) == 3 and "transformer_blocks.0" not in plan.skipped
    assert library.costs[2].macs < library.costs[1].macs < library.costs[0].macs
    router.set(plan)
    pruned = prune_copy(reference, library.structure, plan)
    assert len(pruned.transformer_blocks) == 3
    with torch.no_grad():
        for call in calls.calls[1]:
            assert torch.equal(calls.run(model, call), calls.run(pruned, call))
    router.reset()
    with torch.no_grad():
        call = calls.calls[0][0]
        assert torch.equal(calls.run(model, call), calls.run(reference, call))
    router.remove()


def test_tiny_pipelines_still_sample_after_remove() -> None:
    pipe = PIPELINES["UNet2DConditionModel"]()
    before = run_tiny(pipe, 3)
    library = build_library(
        pipe, PruningConfig(stages=1, steps=2, calibration_samples=1), run=runner_for(pipe), progress=False
    )
    router = Router(pipe.unet, library)
    router.set(library.plan(0, 5))
    pruned_images = run_tiny(pipe, 3)
    router.remove()
    assert not torch.equal(before, pruned_images)
    assert torch.equal(before, run_tiny(pipe, 3))
