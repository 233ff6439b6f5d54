"""Find the denoiser of a diffusers pipeline and tell, at each denoiser call, which sampling step it is.

The step is counted from the pipeline's own scheduler: ``set_timesteps`` starts a trajectory and each
``scheduler.step`` ends one step. So every denoiser call between two ``step`` calls belongs to the same
step, whether classifier-free guidance batches both branches into one call or makes two calls, and
whatever the scheduler's order. Hooks attach to the denoiser through diffusers' ``HookRegistry``; the
scheduler's two methods are wrapped on the instance and restored by ``remove()``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers.hooks import HookRegistry, ModelHook

from diffes.errors import UnsupportedModelError

__all__ = [
    "find_denoiser",
    "clone_scheduler",
    "StepInfo",
    "StepSource",
    "StepTracker",
    "ManualSteps",
    "StepAwareHook",
    "attach_step_hook",
    "attach_hook",
    "attach_denoiser_hook",
    "StepHookHandle",
]

DENOISER_ATTRS = ("transformer", "unet", "prior", "decoder")


def find_denoiser(pipe: Any) -> tuple[str, torch.nn.Module]:
    """The (attribute name, module) of the pipeline's denoiser."""
    for attr in DENOISER_ATTRS:
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):
            return attr, module
    raise UnsupportedModelError(
        f"pipeline={type(pipe).__name__}: no denoiser found; diffes needs a pipeline with a "
        f"`.transformer` or `.unet` module"
    )


def clone_scheduler(scheduler: Any) -> Any:
    """An independent copy of ``scheduler`` (its state included) without the step tracker's wrappers, which
    would otherwise keep calling the original's methods and count the copy's steps as the pipeline's."""
    clone = copy.deepcopy(scheduler)
    for name in ("set_timesteps", "step"):
        clone.__dict__.pop(name, None)
    return clone


@dataclass(frozen=True)
class StepInfo:
    step: int
    num_steps: int
    timestep: float


class StepSource(Protocol):
    """Where a step-aware hook learns the step of the denoiser call being made."""

    def current(self) -> StepInfo: ...


class ManualSteps:
    """A step source set by a caller that drives the denoiser itself (the evaluator, calibration), where no
    pipeline scheduler is there to count steps: ``set(...)`` before each step's denoiser calls."""

    def __init__(self) -> None:
        self.info = StepInfo(0, 0, float("nan"))

    def set(self, step: int, num_steps: int, timestep: float) -> None:
        self.info = StepInfo(step, num_steps, float(timestep))

    def current(self) -> StepInfo:
        return self.info


class StepState:
    """Where the tracked trajectory is; ``reset()`` starts a new one."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.started = False


class StepTracker:
    """Counts ``scheduler.step`` calls of ``pipe.scheduler`` (re-attaching if the scheduler is swapped)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.state = StepState()
        self._scheduler: Any = None
        self.users = 0
        self._attach(pipe.scheduler)

    def _attach(self, scheduler: Any) -> None:
        self._detach()
        set_timesteps, step = scheduler.set_timesteps, scheduler.step

        # wraps() keeps the signature visible: diffusers' retrieve_timesteps inspects set_timesteps for
        # `sigmas` / `timesteps` parameters, and refuses them on a bare (*args, **kwargs) wrapper
        @functools.wraps(set_timesteps)
        def tracked_set_timesteps(*args: Any, **kwargs: Any) -> Any:
            self.state.reset()
            return set_timesteps(*args, **kwargs)

        @functools.wraps(step)
        def tracked_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            self.state.step += 1
            return out

        scheduler.set_timesteps = tracked_set_timesteps
        scheduler.step = tracked_step
        self._scheduler = scheduler

    def _detach(self) -> None:
        if self._scheduler is not None:
            for name in ("set_timesteps", "step"):
                self._scheduler.__dict__.pop(name, None)
            self._scheduler = None

    def current(self) -> StepInfo:
        """The step of the denoiser call now being made."""
        scheduler = self.pipe.scheduler
        if scheduler is not self._scheduler:  # swapped after attach; its set_timesteps has already run
            self._attach(scheduler)
        if not self.state.started:
            self.state.started = True
            begin = getattr(scheduler, "begin_index", None)
            self.state.step = int(begin) if begin is not None else 0
        timesteps = scheduler.timesteps
        n = len(timesteps) if timesteps is not None else 0
        t = float(timesteps[min(self.state.step, n - 1)]) if n else float("nan")
        return StepInfo(self.state.step, n, t)

    @classmethod
    def shared(cls, pipe: Any) -> StepTracker:
        """One tracker per pipeline, shared by every hook (routing, caching) attached to it."""
        tracker = pipe.__dict__.get("_diffes_step_tracker")
        if tracker is None:
            tracker = cls(pipe)
            pipe.__dict__["_diffes_step_tracker"] = tracker
        tracker.users += 1
        return tracker

    def release(self) -> None:
        """Drop one user; the last one restores the scheduler's own methods."""
        self.users -= 1
        if self.users <= 0:
            self._detach()
            self.pipe.__dict__.pop("_diffes_step_tracker", None)


class StepAwareHook(ModelHook):  # type: ignore[misc]
    """A denoiser hook that knows the sampling step; ``attach_hook`` gives it its tracker."""

    tracker: StepSource

    def step_info(self) -> StepInfo:
        return self.tracker.current()


class CallbackStepHook(StepAwareHook):
    """Calls ``on_step(info)`` before every denoiser forward."""

    def __init__(self, on_step: Callable[[StepInfo], None]) -> None:
        super().__init__()
        self.on_step = on_step

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict]:
        self.on_step(self.step_info())
        return args, kwargs


@dataclass
class StepHookHandle:
    denoiser: torch.nn.Module
    tracker: StepSource
    name: str

    def remove(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.denoiser).remove_hook(self.name, recurse=False)
        if isinstance(self.tracker, StepTracker):
            self.tracker.release()


def attach_step_hook(pipe: Any, on_step: Callable[[StepInfo], None], name: str) -> StepHookHandle:
    """Run ``on_step`` with the step info before each denoiser call of ``pipe(...)``."""
    return attach_hook(pipe, CallbackStepHook(on_step), name)


def attach_hook(pipe: Any, hook: StepAwareHook, name: str) -> StepHookHandle:
    """Attach a step-aware hook to the pipeline's denoiser; ``handle.remove()`` detaches it."""
    _, denoiser = find_denoiser(pipe)
    _check_free(denoiser, name)
    return attach_denoiser_hook(denoiser, hook, name, StepTracker.shared(pipe))


def attach_denoiser_hook(
    denoiser: torch.nn.Module, hook: StepAwareHook, name: str, steps: StepSource
) -> StepHookHandle:
    """Attach a step-aware hook to a bare denoiser whose steps ``steps`` tells (a caller-driven loop)."""
    _check_free(denoiser, name)
    hook.tracker = steps
    HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(hook, name)
    return StepHookHandle(denoiser, steps, name)


def _check_free(denoiser: torch.nn.Module, name: str) -> None:
    if HookRegistry.check_if_exists_or_initialize(denoiser).get_hook(name) is not None:
        raise UnsupportedModelError(f"hook={name!r}: already attached to this pipeline; call remove() first")
