"""Calibration: the dense model's own denoiser calls along its sampling trajectory, reduced per stage to what a
library needs as the calls happen.

``calibrate`` streams: while the dense ``pipe(...)`` run makes its denoiser calls, each call adds to its
stage's sums (consumer Gram matrices, Taylor importance, block changes) and is then forgotten; when the
trajectory enters the next stage, the finished stage's sums become its scores and Grams. Only the first call's
inputs are kept (the example that traces the model and counts its cost), so memory does not grow with the
number of steps, samples or prompt tokens. ``record_calls`` keeps every call's inputs instead: for tests and
probes, not for libraries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from diffes.errors import UnsupportedModelError
from diffes.memory import release_freed_memory
from diffes.models.steps import StepAwareHook, attach_hook, find_denoiser
from diffes.pruning import gram
from diffes.pruning.config import PruningConfig
from diffes.pruning.graph import PrunableStructure, trace_structure
from diffes.pruning.importance import BlockChanges, TaylorScores, width_scores
from diffes.pruning.layers import layer_spec
from diffes.stages import StageSchedule

__all__ = [
    "Call",
    "Calibration",
    "calibrate",
    "CalibrationSet",
    "record_calls",
    "run_call",
    "map_tensors",
    "first_tensor",
    "single_sample",
    "GramSums",
    "first_call",
]

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


def run_call(model: nn.Module, call: Call) -> torch.Tensor:
    """``model``'s sample output for a recorded call."""
    args, kwargs = call
    return first_tensor(model(*args, **kwargs))


@dataclass
class CalibrationSet:
    """Recorded denoiser calls (inputs only), grouped by the stage whose step made them: every call is kept, so
    this is for tests and probe inputs; libraries calibrate with ``calibrate``, which streams."""

    schedule: StageSchedule
    calls: list[list[Call]] = field(default_factory=list)

    def example(self) -> Call:
        return next(c for stage in self.calls for c in stage)

    def run(self, model: nn.Module, call: Call) -> torch.Tensor:
        return run_call(model, call)


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


class _Stop(Exception):
    pass


def first_call(pipe: Any, run: Callable[[Any, int], Any], num_steps: int) -> Call:
    """The inputs of the first denoiser call ``run(pipe, num_steps)`` makes; the run stops there, before the
    denoiser computes anything (for shapes and tracing without a calibration)."""
    _, model = find_denoiser(pipe)
    seen: list[Call] = []

    def stop(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(map_tensors((args, kwargs), lambda t: t.detach().clone()))
        raise _Stop

    handle = model.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            run(pipe, num_steps)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the calibration run made no denoiser call")
    return seen[0]


def _patches(module: Any, x: torch.Tensor) -> torch.Tensor:
    """Consumer inputs as Gram rows, as the consumer's layer spec unfolds them ((tokens, in_features) for
    Linear, (positions, in*k*k) for Conv2d)."""
    rows = layer_spec(module).rows
    if rows is None:
        raise UnsupportedModelError(f"consumer type={type(module).__name__}: no Gram rows for it; use compensate=False")
    return rows(module, x)


class GramSums:
    """Per consumer, the sum of [x, 1][x, 1]^T over the rows of the calls made while ``on``, in float64 from
    any input dtype, as a blocked upper triangle (``gram.py``). ``hooks()`` registers one forward pre-hook per
    consumer; ``result()`` hands over the stage's mean Grams, still packed (what a library keeps, spills and
    solves from), and their diagonals (the mean squares), on the CPU, and starts the next stage's sums."""

    def __init__(self, model: nn.Module, consumers: list[str]) -> None:
        self.model, self.consumers = model, consumers
        self.on = False
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.sizes: dict[str, int] = {}

    def hooks(self) -> list[Callable[[], RemovableHandle]]:
        return [partial(self.model.get_submodule(n).register_forward_pre_hook, self._hook(n)) for n in self.consumers]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if self.on:
                self.add(name, _patches(module, inputs[0]))

        return hook

    def add(self, name: str, rows: torch.Tensor) -> None:
        rows = rows.double()
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)], 1)
        if name not in self.sums:
            self.sums[name], self.sizes[name] = gram.zeros(rows.shape[1], rows.device), rows.shape[1]
        gram.add_rows_(self.sums[name], rows)
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]

    def result(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        grams, squares = {}, {}
        for n in self.consumers:
            packed = self.sums.pop(n).div_(self.counts[n]).cpu()  # handed over in place: never two copies
            squares[n], grams[n] = gram.diagonal(packed, self.sizes[n]), packed
        self.counts = {}
        return grams, squares


@dataclass
class Calibration:
    """What a library keeps of the dense trajectory: per stage, unit scores (width), block scores (depth) and,
    with compensation, packed float64 consumer Grams (``gram.py``); the traced structure; the first call, as
    the example."""

    structure: PrunableStructure
    tp_groups: dict[str, Any]
    example: Call
    scores: list[dict[str, torch.Tensor]] = field(default_factory=list)
    depth: list[torch.Tensor] = field(default_factory=list)
    grams: list[dict[str, torch.Tensor]] = field(default_factory=list)


class _Stream(StepAwareHook):
    """The denoiser hook of ``calibrate``: adds each dense call to its stage's sums as the call happens."""

    def __init__(
        self,
        model: nn.Module,
        schedule: StageSchedule,
        config: PruningConfig,
        generator: torch.Generator,
        progress: Any,
        spill: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.schedule, self.config = model, schedule, config
        self.generator, self.progress, self.spill = generator, progress, spill
        self.busy = False  # a call calibration makes itself (tracing, Taylor's forward) passes through
        self.stage, self.calls = -1, 0
        self.seen: set[int] = set()
        self.result: Calibration | None = None
        self.grams: GramSums | None = None
        self.blocks: BlockChanges | None = None
        self.taylor: TaylorScores | None = None
        self.handles: list[RemovableHandle] = []

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict]:
        if self.busy:
            return args, kwargs
        step = self.step_info().step
        if step >= self.schedule.num_steps:
            return args, kwargs
        stage = self.schedule.stage_of(step)
        self.busy = True
        try:
            if self.result is None:
                self._start((args, kwargs))
            if stage != self.stage:
                self._enter(stage)
            if self.taylor is not None:
                self.taylor.add(lambda: first_tensor(self.model(*args, **kwargs)))
        finally:
            self.busy = False
        self.calls += 1
        self._listen(True)  # the dense call itself feeds the Grams and block changes
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self._listen(False)
        return output

    def _listen(self, on: bool) -> None:
        for acc in (self.grams, self.blocks):
            if acc is not None:
                acc.on = on

    def _start(self, call: Call) -> None:
        """First call: trace the structure on its first sample (the trace keeps a forward's activations for
        autograd, so a whole calibration batch would cost its batch size times more), keep the call as the
        example, register the accumulators' hooks."""
        config, model, one = self.config, self.model, single_sample(call)
        structure, tp_groups = trace_structure(model, lambda m: run_call(m, one), depth=config.axis == "depth")
        example = map_tensors(call, lambda t: t.detach().clone())
        self.result = Calibration(structure, tp_groups, example)
        hooks = []
        if config.compensate or config.importance == "activation":
            self.grams = GramSums(model, sorted({g.consumer for g in structure.groups}))
            hooks += self.grams.hooks()
        if structure.blocks:
            self.blocks = BlockChanges(model, structure.blocks)
            hooks += self.blocks.hooks()
        if config.importance == "taylor":
            self.taylor = TaylorScores(model, structure.groups, tp_groups, self.generator)
        for register in hooks:
            self.handles.append(register())

    def _enter(self, stage: int) -> None:
        if self.seen and stage < max(self.seen):
            raise RuntimeError(
                f"calibration: stage {stage} came after stage {max(self.seen)}; the calibration run must be one "
                f"trajectory (one pipe(...) call over a batch of samples), so that each stage's sums finish in turn"
            )
        self.finish()
        self.stage = stage
        self.seen.add(stage)

    def finish(self) -> None:
        """Turn the sums of the stage just finished into its scores, block scores and Grams."""
        if self.stage < 0:
            return
        result, config = self.result, self.config
        assert result is not None
        grams, squares = self.grams.result() if self.grams is not None else (None, None)
        groups = result.structure.groups
        scores = width_scores(config.importance, self.model, groups, result.tp_groups, squares, self.taylor)
        result.scores.append(scores)
        if self.blocks is not None:
            result.depth.append(self.blocks.result(self.calls))
        if config.compensate and grams is not None:
            if self.spill is not None:
                self.spill(self.stage, grams)  # to disk: a build holds one stage's Grams, not all
                del grams
                release_freed_memory()
            else:
                result.grams.append(grams)
        self.calls, self.stage = 0, -1
        self.progress.update(1)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def calibrate(
    pipe: Any,
    schedule: StageSchedule,
    run: Callable[[Any, int], Any],
    config: PruningConfig,
    progress: bool = True,
    spill: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> Calibration:
    """Run ``run(pipe, num_steps)`` (an ordinary dense ``pipe(...)`` call over one trajectory) once, streaming
    every denoiser call into its stage's statistics; the structure is traced on the first call. With ``spill``,
    each finished stage's Grams go to ``spill(stage, grams)`` instead of ``Calibration.grams``."""
    _, model = find_denoiser(pipe)
    bar = tqdm(total=schedule.num_stages, desc="calibrating stages", disable=not progress)
    stream = _Stream(model, schedule, config, torch.Generator().manual_seed(config.seed), bar, spill)
    handle = attach_hook(pipe, stream, "diffes-calibration")
    try:
        with torch.no_grad():
            run(pipe, schedule.num_steps)
        stream.finish()
    finally:
        handle.remove()
        stream.close()
        bar.close()
    empty = sorted(set(range(schedule.num_stages)) - stream.seen)
    if empty or stream.result is None:
        raise RuntimeError(f"calibration saw no denoiser call for stages {empty}; the run stopped early")
    return stream.result
