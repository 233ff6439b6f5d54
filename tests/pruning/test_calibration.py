"""Calibration streams: each dense call adds to its stage's sums and is forgotten; half precision sums in float32+."""

from __future__ import annotations

import copy
import gc
from typing import Any

import pytest
import torch
from diffusers.hooks import HookRegistry
from tiny_denoisers import DENOISERS, Rig

from diffes.pruning import PruningConfig, gram, trace_structure
from diffes.pruning.calibration import GramSums, calibrate, map_tensors, record_calls, run_call
from diffes.pruning.importance import TaylorScores, magnitude_scores
from diffes.stages import StageSchedule

SCHEDULE = StageSchedule.uniform(4, 2)


def _rig(calls_per_step: int = 2) -> Rig:
    build, make_call = DENOISERS["dit"]
    return Rig(build(), make_call, calls_per_step=calls_per_step)


def _config(**options: Any) -> PruningConfig:
    return PruningConfig(stages=SCHEDULE.num_stages, steps=SCHEDULE.num_steps, levels=(0, 0.5), **options)


@torch.no_grad()
def _grams_of(model: torch.nn.Module, consumers: list[str], calls: list[Any]) -> dict[str, torch.Tensor]:
    """The mean [x, 1][x, 1]^T of each (Linear) consumer over ``calls``, summed call by call in float64 into a
    packed Gram (``gram.py``, tested on its own against x^T x)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def keep(name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
            gram.add_rows_(sums.setdefault(name, gram.zeros(x.shape[1])), x)
            rows[name] = rows.get(name, 0) + x.shape[0]

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in consumers]
    for call in calls:
        run_call(model, call)
    for h in handles:
        h.remove()
    return {n: sums[n] / rows[n] for n in consumers}


def test_streamed_grams_equal_the_grams_of_every_recorded_input() -> None:
    """Streaming changes where the sums happen, not their order: equal bit for bit to sums over kept inputs."""
    rig = _rig()
    calib = calibrate(rig, SCHEDULE, rig.run, _config(importance="magnitude"), progress=False)
    recorded = record_calls(rig, SCHEDULE, rig.run)
    consumers = sorted({g.consumer for g in calib.structure.groups})
    for stage in range(SCHEDULE.num_stages):
        assert len(recorded.calls[stage]) == 4
        reference = _grams_of(rig.denoiser, consumers, recorded.calls[stage])
        for n in consumers:
            assert torch.equal(calib.grams[stage][n], reference[n]), n


def _live_latents() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.shape == (2, 4, 8, 8))


def test_calibration_keeps_no_call_inputs() -> None:
    """Memory does not grow with the calls: after the run only the example's inputs are alive (a recorder that
    keeps every call holds all 8), whatever the importance."""
    rig = _rig()
    before = _live_latents()
    recorded = record_calls(rig, SCHEDULE, rig.run)
    assert _live_latents() == before + 8
    del recorded
    calib = calibrate(rig, SCHEDULE, rig.run, _config(importance="taylor", axis="depth"), progress=False)
    assert _live_latents() == before + 1 and calib.example[0][0].shape == (2, 4, 8, 8)
    assert len(calib.scores) == len(calib.depth) == len(calib.grams) == SCHEDULE.num_stages


def _hooks_left(model: torch.nn.Module) -> list[str]:
    left = [n for n, m in model.named_modules() if m._forward_pre_hooks or m._forward_hooks]
    registry = HookRegistry.check_if_exists_or_initialize(model)
    return left + [n for n in ("diffes-calibration",) if registry.get_hook(n) is not None]


def test_a_failed_run_leaves_no_hook_and_no_gradient_behind() -> None:
    rig = _rig()
    rig.denoiser.requires_grad_(False)
    rig.denoiser.get_submodule("proj_out_2").requires_grad_(True)
    wanted = [p.requires_grad for p in rig.denoiser.parameters()]
    steps = 0

    def failing(pipe: Rig, num_steps: int) -> None:
        def step() -> None:
            nonlocal steps
            steps += 1
            if steps == 3:
                raise RuntimeError("stopped")

        rig.scheduler.step = step  # type: ignore[method-assign]
        rig.run(pipe, num_steps)

    with pytest.raises(RuntimeError, match="stopped"):
        calibrate(rig, SCHEDULE, failing, _config(axis="depth", importance="taylor"), progress=False)
    assert not _hooks_left(rig.denoiser)
    assert all(p.grad is None for p in rig.denoiser.parameters())
    assert [p.requires_grad for p in rig.denoiser.parameters()] == wanted


def test_a_run_that_comes_back_to_a_stage_is_refused() -> None:
    rig = _rig(calls_per_step=1)

    def twice(pipe: Rig, num_steps: int) -> None:
        rig.run(pipe, num_steps)
        rig.run(pipe, num_steps)

    with pytest.raises(RuntimeError, match="stage 0 came after stage 1"):
        calibrate(rig, SCHEDULE, twice, _config(), progress=False)
    assert not _hooks_left(rig.denoiser)


def test_half_precision_grams_sum_in_float64() -> None:
    """Rows of a float16 input whose squares and sums overflow float16 (65504) still give the exact Gram."""
    layer = torch.nn.Linear(3, 2).half()
    x = torch.full((64, 3), 200.0, dtype=torch.float16)
    grams = GramSums(torch.nn.Sequential(layer), ["0"])
    grams.on = True
    handle = grams.hooks()[0]()
    layer(x)
    handle.remove()
    means, squares = grams.result()
    rows = torch.cat([x.double(), torch.ones(64, 1, dtype=torch.float64)], 1)
    exact = rows.T @ rows / 64
    assert means["0"].dtype == torch.float64 and torch.equal(gram.unpack(means["0"], 4), exact)
    assert squares["0"].dtype == torch.float64 and torch.equal(squares["0"], exact.diagonal())
    assert squares["0"][0].item() == 40000.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_are_formed_in_float32(dtype: torch.dtype) -> None:
    """A half model's magnitude scores equal those of a float32 copy of the same (rounded) weights bit for bit;
    Taylor's float32 reading leaves the model's own half tensors and gradients in place."""
    build, make_call = DENOISERS["dit"]
    half = build().to(dtype)
    wide = copy.deepcopy(half).float()
    args, kwargs = make_call(torch.Generator().manual_seed(0))
    half_call = map_tensors((args, kwargs), lambda t: t.to(dtype) if t.is_floating_point() else t)
    structure, half_groups = trace_structure(half, lambda m: run_call(m, half_call))
    _, wide_groups = trace_structure(wide, lambda m: run_call(m, (args, kwargs)))
    half_scores = magnitude_scores(structure.groups, half_groups)
    wide_scores = magnitude_scores(structure.groups, wide_groups)
    assert all(torch.equal(half_scores[k], wide_scores[k]) for k in half_scores)
    before = {n: p.data_ptr() for n, p in half.named_parameters()}
    taylor = TaylorScores(half, structure.groups, half_groups, torch.Generator().manual_seed(0))
    taylor.add(lambda: run_call(half, half_call))
    scores = taylor.result(dtype)
    assert all(bool(torch.isfinite(s).all()) and bool((s > 0).all()) for s in scores.values())
    assert all(p.dtype == dtype and p.data_ptr() == before[n] and p.grad is None for n, p in half.named_parameters())
