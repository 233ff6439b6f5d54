"""The cache runtime: one step-aware hook on the denoiser that, per call, computes, reuses the last output,
extrapolates from the last outputs (TaylorSeer), or reuses the residual of a span of transformer blocks
(FORA/DBCache: the first ``fn`` and last ``bn`` blocks still compute).

Which of these a step gets is a rule's decision (``diffes.caching.rules``); the runtime owns the state.
State is kept per guidance branch (the i-th denoiser call of a step is branch i), and is dropped whenever
the weights change: a residual cached under one pruning plan is stale under the next, so the first step
after a plan switch computes (dense stages share the dense weights and keep their cache). Sharing the step
source with routing is what lets both run on one pipeline; attach routing first, so a reused call skips
routing along with the forward.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers.hooks import HookRegistry, ModelHook

from diffes.caching.base import CacheRule, Extrapolate, Policy, Residual, Reuse, Serve
from diffes.caching.blocks import Block, Streams, check_modulated_input, modulated_input, transformer_blocks
from diffes.errors import ConfigError
from diffes.models.steps import StepAwareHook, StepHookHandle, StepInfo, attach_denoiser_hook, attach_hook
from diffes.pruning.calibration import first_tensor

__all__ = [
    "Reuse",
    "Extrapolate",
    "Residual",
    "Serve",
    "CacheRule",
    "Action",
    "CacheSummary",
    "CacheHandle",
    "attach_cache",
    "apply_cache",
    "HOOK_NAME",
]

HOOK_NAME = "diffes_cache"
BLOCK_HOOK_NAME = "diffes_cache_block"


class Action(enum.Enum):
    COMPUTE = "compute"
    REUSE = "reuse"
    EXTRAPOLATE = "extrapolate"
    RESIDUAL = "residual"
    PENDING = "pending"  # the span's first block decides from its signal


@dataclass
class CacheSummary:
    """What the last trajectory did, counted in steps (a step's first denoiser call) and skipped block calls."""

    computed: int = 0
    reused: int = 0
    extrapolated: int = 0
    residual: int = 0
    cached_blocks: int = 0
    invalidations: int = 0  # stage switches that dropped cached state
    actions: list[str] = field(default_factory=list)  # per step

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BranchCache:
    """What one guidance branch keeps between steps."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.clear()

    def clear(self) -> None:
        self.outputs: list[tuple[int, Any]] = []  # the last computed outputs, oldest first (at most 3)
        self.residual: Streams | None = None
        self.batch = -1
        self.policy.reset()

    def copy(self) -> BranchCache:
        twin = copy.copy(self)
        twin.outputs, twin.policy = list(self.outputs), copy.copy(self.policy)
        return twin

    def nbytes(self) -> int:
        return sum(first_tensor(o).numel() * first_tensor(o).element_size() for _, o in self.outputs)

    def can_skip(self, serve: Serve) -> bool:
        return self.residual is not None if isinstance(serve, Residual) else bool(self.outputs)

    def remember(self, step: int, output: Any) -> None:
        self.outputs = [*self.outputs[-2:], (step, output)]

    def extrapolate(self, step: int, order: int) -> Any:
        points = [(s, first_tensor(o)) for s, o in self.outputs[-(order + 1) :]]
        return _with_sample(self.outputs[-1][1], _newton(points, step))


def _newton(points: list[tuple[int, torch.Tensor]], step: int) -> torch.Tensor:
    """Newton's divided differences through ``points`` (step, value), evaluated at ``step``."""
    (s0, v0), rest = points[-1], points[:-1]
    if not rest:
        return v0
    (s1, v1) = rest[-1]
    slope = (v0 - v1) / (s0 - s1)
    value = v0 + slope * (step - s0)
    if len(rest) >= 2:
        (s2, v2) = rest[-2]
        curve = (slope - (v1 - v2) / (s1 - s2)) / (s0 - s2)
        value = value + curve * (step - s0) * (step - s1)
    return value


def _with_sample(output: Any, sample: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    key = next(iter(output.keys()))  # a diffusers BaseOutput: the sample is its first field
    return type(output)(**{**output, key: sample})


@dataclass
class _Active:
    branch: BranchCache
    action: Action
    info: StepInfo
    first_input: torch.Tensor | None = None  # block 0's image stream (the head-residual signal)
    span_input: Streams | None = None


class CacheState:
    def __init__(self, new_policy: Callable[[], Policy]) -> None:
        self.new_policy = new_policy
        self.summary = CacheSummary()
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.call = 0
        self.stage: object = None
        self.branches: list[BranchCache] = []
        self.active: _Active | None = None
        # the summary stays: pipelines reset stateful hooks when a call ends, and the call's counts must outlive it

    def snapshot(self) -> CacheState:
        """A copy to continue from later (the evaluator keeps one per cached stage boundary)."""
        snap = copy.copy(self)
        snap.branches = [branch.copy() for branch in self.branches]
        snap.summary = CacheSummary()
        return snap

    def branch(self, index: int) -> BranchCache:
        while len(self.branches) <= index:
            self.branches.append(BranchCache(self.new_policy()))
        return self.branches[index]

    def invalidate(self) -> None:
        for branch in self.branches:
            branch.clear()
        self.summary.invalidations += 1

    def count(self, action: Action) -> None:
        if self.call == 1:  # the step's first call stands for the step
            name = {Action.COMPUTE: "computed", Action.REUSE: "reused", Action.EXTRAPOLATE: "extrapolated"}
            attr = name.get(action, "residual")
            setattr(self.summary, attr, getattr(self.summary, attr) + 1)
            self.summary.actions.append(action.value)


class CacheHook(StepAwareHook):
    """The denoiser-level hook: tracks step, branch and stage, and serves skipped steps."""

    _is_stateful = True

    def __init__(self, rule: CacheRule, stage_of: Callable[[StepInfo], object] | None) -> None:
        super().__init__()
        self.rule, self.stage_of = rule, stage_of
        self.state = CacheState(rule.policy)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        info, state = self.step_info(), self.state
        self._enter_step(info)
        branch = state.branch(state.call)
        state.call += 1
        batch = _batch_size(args, kwargs)
        if batch != branch.batch:  # a changed batch cannot reuse anything
            branch.clear()
            branch.batch = batch
        action = self._decide(branch, info)
        if action is Action.REUSE:
            state.count(action)
            return branch.outputs[-1][1]
        if action is Action.EXTRAPOLATE:
            state.count(action)
            assert isinstance(self.rule.serve, Extrapolate)
            return branch.extrapolate(info.step, self.rule.serve.order)
        state.active = active = _Active(branch, action, info)
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        finally:
            state.active = None
        if active.action is Action.COMPUTE:
            branch.remember(info.step, output)
        state.count(active.action)
        return output

    def _enter_step(self, info: StepInfo) -> None:
        state = self.state
        if info.step < state.step:  # a new trajectory
            state.reset()
        if info.step != state.step:
            if state.step < 0:
                self.rule.check_steps(info.num_steps)
                state.summary = CacheSummary()
            state.step, state.call = info.step, 0
            stage = self.stage_of(info) if self.stage_of is not None else 0
            if state.stage is not None and stage != state.stage:
                state.invalidate()
            state.stage = stage

    def _decide(self, branch: BranchCache, info: StepInfo) -> Action:
        serve = self.rule.serve
        if self.rule.signal != "none":
            return Action.PENDING
        if branch.policy.decide(info, None, branch.can_skip(serve)) or not branch.can_skip(serve):
            return Action.COMPUTE
        return {Reuse: Action.REUSE, Extrapolate: Action.EXTRAPOLATE, Residual: Action.RESIDUAL}[type(serve)]


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    if not isinstance(sample, torch.Tensor):
        sample = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    return int(sample.shape[0]) if isinstance(sample, torch.Tensor) else -1


class BlockHook(ModelHook):  # type: ignore[misc]
    """A block inside (or at the start of) the cached span; ``role`` says which part it plays."""

    def __init__(self, owner: CacheHook, block: Block, role: Role) -> None:
        super().__init__()
        self.owner, self.block, self.role = owner, block, role
        self.is_tail = False

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        active = self.owner.state.active
        if active is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        streams = self.block.inputs(args, kwargs)
        if self.role == "first":
            active.first_input = streams[0]
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.role == "head":
            if active.action is Action.PENDING:
                self._decide(active, args, kwargs, streams)
            if active.action is Action.RESIDUAL:
                self.owner.state.summary.cached_blocks += 1
                residual = active.branch.residual
                assert residual is not None
                return self.block.pack(_add(streams, residual))
            active.span_input = streams
        elif active.action is Action.RESIDUAL:
            self.owner.state.summary.cached_blocks += 1
            return self.block.pack(streams)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail and active.action is Action.COMPUTE and active.span_input is not None:
            active.branch.residual = _sub(self.block.outputs(output), active.span_input)
        return output

    def _decide(self, active: _Active, args: tuple[Any, ...], kwargs: dict[str, Any], streams: Streams) -> None:
        signal: torch.Tensor | None = None
        if self.owner.rule.signal == "modulated_input":
            signal = modulated_input(self.block, args, kwargs)
        elif self.owner.rule.signal == "head_residual":
            assert active.first_input is not None
            signal = streams[0] - active.first_input
        branch = active.branch
        can_skip = branch.residual is not None and branch.residual[0].shape == streams[0].shape
        compute = branch.policy.decide(active.info, signal, can_skip) or not can_skip
        active.action = Action.COMPUTE if compute else Action.RESIDUAL


def _add(streams: Streams, residual: Streams) -> Streams:
    text = streams[1] + residual[1] if streams[1] is not None and residual[1] is not None else streams[1]
    return streams[0] + residual[0], text


def _sub(out: Streams, inp: Streams) -> Streams:
    text = out[1] - inp[1] if out[1] is not None and inp[1] is not None else None
    return out[0] - inp[0], text


@dataclass
class CacheHandle:
    hook: CacheHook
    handle: StepHookHandle
    blocks: list[torch.nn.Module]

    @property
    def summary(self) -> CacheSummary:
        """The last (or current) trajectory's counts."""
        return self.hook.state.summary

    def reset(self) -> None:
        self.hook.state.reset()

    def resume(self, snapshot: CacheState) -> None:
        """Continue from a snapshot taken under another rule of the same kind (the evaluator's per-genome rules):
        the policies keep their counters and read this handle's rule from now on."""
        self.hook.state = snapshot.snapshot()
        self.hook.state.new_policy = self.hook.rule.policy
        for branch in self.hook.state.branches:
            if hasattr(branch.policy, "rule"):
                branch.policy.rule = self.hook.rule  # type: ignore[attr-defined]

    def remove(self) -> None:
        for module in self.blocks:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(BLOCK_HOOK_NAME, recurse=False)
        self.handle.remove()


Role = Literal["first", "head", "inner", "tail"]


def _span(rule: CacheRule, denoiser: torch.nn.Module) -> list[tuple[Block, Role, bool]]:
    """The blocks a block-residual rule hooks, with their roles; every mistake is found before anything attaches."""
    serve = rule.serve
    if not isinstance(serve, Residual):
        return []
    blocks = transformer_blocks(denoiser)
    head, tail = serve.fn, len(blocks) - 1 - serve.bn
    if head > tail:
        raise ConfigError(
            "cache_fn", serve.fn, f"fn + bn must leave at least one cached block of the {len(blocks)} blocks"
        )
    if rule.signal == "head_residual" and head < 1:
        raise ConfigError("cache_fn", serve.fn, "the first-block rule compares the first fn blocks: use fn >= 1")
    if rule.signal == "modulated_input":
        check_modulated_input(blocks[head])
    roles: dict[int, Role] = {i: "inner" for i in range(head + 1, tail + 1)}
    roles[head] = "head"
    if rule.signal == "head_residual":
        roles[0] = "first"
    return [(blocks[i], role, i == tail) for i, role in sorted(roles.items())]


def _attach(hook: CacheHook, denoiser: torch.nn.Module, attach: Callable[[], StepHookHandle]) -> CacheHandle:
    span = _span(hook.rule, denoiser)
    handle = attach()
    for block, role, is_tail in span:
        block_hook = BlockHook(hook, block, role)
        block_hook.is_tail = is_tail
        HookRegistry.check_if_exists_or_initialize(block.module).register_hook(block_hook, BLOCK_HOOK_NAME)
    return CacheHandle(hook, handle, [block.module for block, _, _ in span])


def _plan_of(schedule: Any) -> Callable[[StepInfo], object]:
    """Which weights a step computes with: the dense model (level 0, the same in every stage) or its stage's plan."""

    def plan(info: StepInfo) -> object:
        stage = schedule.stage_at(info.timestep)
        return "dense" if schedule.levels[stage] == 0 else stage

    return plan


def attach_cache(
    denoiser: torch.nn.Module, rule: CacheRule, steps: Any, stage_of: Callable[[StepInfo], object] | None = None
) -> CacheHandle:
    """Cache a bare denoiser driven by a caller's loop; ``steps`` (a ``ManualSteps``) tells the step."""
    hook = CacheHook(rule, stage_of)
    return _attach(hook, denoiser, lambda: attach_denoiser_hook(denoiser, hook, HOOK_NAME, steps))


def apply_cache(pipe: Any, rule: CacheRule, routed: Any = None) -> CacheHandle:
    """Cache ``pipe``'s denoiser by ``rule`` during every ordinary ``pipe(...)`` call. With ``routed`` (the
    handle of ``diffes.routing.apply``), cached state is dropped at each of its stage switches."""
    from diffes.models.steps import find_denoiser

    stage_of = getattr(rule, "segment_of", None)  # a rule with stages of its own drops state at their edges
    if stage_of is None and routed is not None:
        stage_of = _plan_of(routed.schedule)
    hook = CacheHook(rule, stage_of)
    return _attach(hook, find_denoiser(pipe)[1], lambda: attach_hook(pipe, hook, HOOK_NAME))
