"""Attach a Router to a pipeline: every denoiser call is routed to its stage's plan, by timestep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffes.errors import ConfigError
from diffes.models.steps import StepAwareHook, StepHookHandle, attach_hook, find_denoiser
from diffes.pruning.library import PruningLibrary
from diffes.routing.router import Router
from diffes.stages import StageSchedule, stage_of_timestep

__all__ = ["RoutingSchedule", "RoutingHook", "RoutedHandle", "apply"]

HOOK_NAME = "diffes-routing"


@dataclass(frozen=True)
class RoutingSchedule:
    """One level per stage, and the stage edges in timestep units (so any step count maps onto it)."""

    levels: tuple[int, ...]
    edges: tuple[float, ...]  # decreasing timesteps between consecutive stages

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.levels) - 1:
            raise ConfigError("levels", list(self.levels), f"give one level per stage ({len(self.edges) + 1} stages)")

    @classmethod
    def from_stages(
        cls, stages: StageSchedule, timesteps: Sequence[float] | torch.Tensor, levels: Sequence[int]
    ) -> RoutingSchedule:
        if len(levels) != stages.num_stages:
            raise ConfigError("levels", list(levels), f"give one level per stage ({stages.num_stages} stages)")
        ts = [float(t) for t in timesteps]
        return cls(tuple(int(x) for x in levels), tuple(stages.timestep_boundaries(ts)))

    def stage_at(self, timestep: float) -> int:
        return stage_of_timestep(timestep, self.edges)

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "edges": list(self.edges)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoutingSchedule:
        return cls(tuple(int(x) for x in d["levels"]), tuple(float(x) for x in d["edges"]))


class RoutingHook(StepAwareHook):
    """Before each denoiser call, route the shared model to the plan of the call's stage."""

    def __init__(self, router: Router, schedule: RoutingSchedule) -> None:
        super().__init__()
        self.router, self.schedule = router, schedule

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict]:
        stage, levels = self.schedule.stage_at(self.step_info().timestep), self.schedule.levels
        if self.router.current != (stage, levels[stage]) and stage + 1 < len(levels):
            self.router.prefetch(stage + 1, levels[stage + 1])  # read while this stage's steps run
        self.router.set_level(stage, levels[stage])
        return args, kwargs


@dataclass
class RoutedHandle:
    router: Router
    schedule: RoutingSchedule
    hook: StepHookHandle

    def remove(self) -> None:
        """Detach from the pipeline and give back the untouched dense model."""
        self.hook.remove()
        self.router.remove()


def apply(
    pipe: Any, library: PruningLibrary, schedule: RoutingSchedule, mode: str = "auto", prepare: bool = True
) -> RoutedHandle:
    """Route ``pipe``'s denoiser by ``schedule`` during every ordinary ``pipe(...)`` call.

    ``prepare`` builds every stage's routing table up front, so a switch during sampling only assigns tensors;
    the library's own copies of the plans are then released (the router's tables hold what they need).
    """
    if any(not 0 <= lv < library.num_levels for lv in schedule.levels):
        raise ConfigError("levels", list(schedule.levels), f"levels must lie in 0..{library.num_levels - 1}")
    if len(schedule.levels) != library.num_stages:
        raise ConfigError("levels", list(schedule.levels), f"the library has {library.num_stages} stages")
    _, denoiser = find_denoiser(pipe)
    router = Router(denoiser, library, mode=mode)
    if prepare:
        for stage, level in enumerate(schedule.levels):
            router.set_level(stage, level)
        router.reset()
        library.release_plans()
    hook = attach_hook(pipe, RoutingHook(router, schedule), HOOK_NAME)
    return RoutedHandle(router, schedule, hook)
