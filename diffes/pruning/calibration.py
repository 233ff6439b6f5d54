"""Calibration data: the dense model's own denoiser calls along its sampling trajectory, per stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from diffes.errors import UnsupportedModelError
from diffes.models.steps import StepAwareHook, attach_hook
from diffes.pruning.layers import layer_spec
from diffes.stages import StageSchedule

__all__ = ["Call", "CalibrationSet", "record_calls", "map_tensors", "first_tensor", "collect_grams", "single_sample"]

Call = tuple[tuple[Any, ...], dict[str, Any]]


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def first_tensor(output: Any) -> torch.Tensor:
    """The sample tensor of a denoiser output (a tensor, a tuple, or a diffusers output class)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    return output[0]


def single_sample(call: Call) -> Call:
    """The same call cut to its first sample: every tensor whose leading size is the batch gets ``[:1]``."""
    args, kwargs = call
    batch = next(t.shape[0] for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor) and t.dim() > 0)

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[:1] if t.dim() > 0 and t.shape[0] == batch else t

    return map_tensors(args, cut), map_tensors(kwargs, cut)


@dataclass
class CalibrationSet:
    """Recorded denoiser calls (inputs only), grouped by the stage whose step made them."""

    schedule: StageSchedule
    calls: list[list[Call]] = field(default_factory=list)

    def example(self) -> Call:
        return next(c for stage in self.calls for c in stage)

    def run(self, model: nn.Module, call: Call) -> torch.Tensor:
        args, kwargs = call
        return first_tensor(model(*args, **kwargs))

    def replay(self, model: nn.Module, stage: int, hooks: list[Callable[[], RemovableHandle]]) -> None:
        """Run every recorded call of ``stage`` through ``model`` with ``hooks`` registered (each a callable that
        registers one hook), and remove them afterwards, also when registering or a call fails."""
        handles = []
        try:
            for register in hooks:
                handles.append(register())
            for call in self.calls[stage]:
                self.run(model, call)
        finally:
            for h in handles:
                h.remove()


class _RecordCalls(StepAwareHook):
    def __init__(self, calib: CalibrationSet) -> None:
        super().__init__()
        self.calib = calib

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict]:
        step = self.step_info().step
        if step < self.calib.schedule.num_steps:
            stage = self.calib.schedule.stage_of(step)
            self.calib.calls[stage].append(map_tensors((args, kwargs), lambda t: t.detach().clone()))
        return args, kwargs


def record_calls(pipe: Any, schedule: StageSchedule, run: Callable[[Any, int], Any]) -> CalibrationSet:
    """Run ``run(pipe, num_steps)`` (an ordinary dense ``pipe(...)`` call) and record every denoiser call."""
    calib = CalibrationSet(schedule, [[] for _ in range(schedule.num_stages)])
    handle = attach_hook(pipe, _RecordCalls(calib), "diffes-calibration")
    try:
        with torch.no_grad():
            run(pipe, schedule.num_steps)
    finally:
        handle.remove()
    empty = [s for s, c in enumerate(calib.calls) if not c]
    if empty:
        raise RuntimeError(f"calibration recorded no denoiser call for stages {empty}; the run stopped early")
    return calib


def _patches(module: Any, x: torch.Tensor) -> torch.Tensor:
    """Consumer inputs as Gram rows, as the consumer's layer spec unfolds them ((tokens, in_features) for
    Linear, (positions, in*k*k) for Conv2d)."""
    rows = layer_spec(module).rows
    if rows is None:
        raise UnsupportedModelError(f"consumer type={type(module).__name__}: no Gram rows for it; use compensate=False")
    return rows(module, x)


@torch.no_grad()
def collect_grams(model: nn.Module, calib: CalibrationSet, consumers: list[str], stage: int) -> dict[str, torch.Tensor]:
    """Per consumer, the mean of [x, 1][x, 1]^T over the stage's calls (float64, bias row last)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            rows = _patches(module, inputs[0]).double()
            rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)], 1)
            gram = rows.T @ rows
            sums[name] = sums[name] + gram if name in sums else gram
            counts[name] = counts.get(name, 0) + rows.shape[0]

        return hook

    calib.replay(
        model, stage, [partial(model.get_submodule(n).register_forward_pre_hook, hook_for(n)) for n in consumers]
    )
    return {n: (sums[n] / counts[n]).cpu() for n in consumers}
