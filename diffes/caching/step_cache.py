"""Static step caching: chosen sampling steps reuse the denoiser output of the last computed step.

The simplest member of the feature-caching family (TeaCache decides per step from an input-change estimate,
CEM picks the steps by an offline error model); all of them need what this module provides: a step-aware
hook on the denoiser that can skip a forward and answer from a cache, sharing the step tracker that routing
uses, so a pipeline can be routed and cached at once. A chosen step reuses, call for call, the outputs of
the last step that ran the model, whether guidance batches both branches into one call or makes two.

Hooks attached before the cache (routing, for one) sit inside it: a reused step skips them along with the
forward, which is what a step that computes nothing needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from diffes.errors import ConfigError
from diffes.models.steps import StepAwareHook, StepHookHandle, attach_hook
from diffes.pruning.calibration import first_tensor

__all__ = ["StepCacheConfig", "StepCacheState", "StepCacheHook", "apply_step_cache", "CachedHandle", "HOOK_NAME"]

HOOK_NAME = "diffes_step_cache"


@dataclass(frozen=True)
class StepCacheConfig:
    """``reuse``: the sampling steps (0-based, of each ``pipe(...)`` call) that skip the denoiser."""

    reuse: frozenset[int]

    def __post_init__(self) -> None:
        bad = sorted(s for s in self.reuse if not isinstance(s, int) or s < 1)
        if bad:
            raise ConfigError("reuse", bad, "reuse steps are integers >= 1: step 0 has no earlier output to reuse")

    @classmethod
    def of(cls, steps: Iterable[int]) -> StepCacheConfig:
        return cls(frozenset(steps))


class StepCacheState:
    """The outputs of the last computed step, one per denoiser call within that step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = -1  # the step the calls below belong to
        self.calls_in_step = 0
        self.outputs: list[Any] = []
        self.reusing = False
        self.computed = 0
        self.reused = 0


class StepCacheHook(StepAwareHook):
    _is_stateful = True

    def __init__(self, config: StepCacheConfig) -> None:
        super().__init__()
        self.config = config
        self.state = StepCacheState()

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        info, state = self.step_info(), self.state
        if info.step < state.step:  # a new pipe(...) call started over: nothing cached applies to it
            state.reset()
        if info.step != state.step:
            state.step, state.calls_in_step = info.step, 0
            state.reusing = info.step in self.config.reuse and bool(state.outputs)
            if not state.reusing:
                state.outputs = []
        index = state.calls_in_step
        state.calls_in_step += 1
        if state.reusing and index < len(state.outputs) and _same_batch(state.outputs[index], args, kwargs):
            state.reused += 1
            return state.outputs[index]
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.outputs[index : index + 1] = [output]
        state.computed += 1
        return output


def _same_batch(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Reuse only an output computed for a batch of the same size (a changed batch must recompute)."""
    sample = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    return isinstance(sample, torch.Tensor) and first_tensor(output).shape[0] == sample.shape[0]


@dataclass
class CachedHandle:
    hook: StepCacheHook
    handle: StepHookHandle

    @property
    def state(self) -> StepCacheState:
        return self.hook.state

    def remove(self) -> None:
        self.handle.remove()


def apply_step_cache(pipe: Any, config: StepCacheConfig) -> CachedHandle:
    """Skip the denoiser at ``config.reuse`` steps of every ``pipe(...)`` call; ``remove()`` detaches."""
    hook = StepCacheHook(config)
    return CachedHandle(hook, attach_hook(pipe, hook, HOOK_NAME))
