"""Stages of a sampling trajectory: contiguous runs of steps that share one pruning level."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffes.errors import ConfigError

__all__ = ["StageSchedule", "stage_of_timestep", "stage_lengths"]


@dataclass(frozen=True)
class StageSchedule:
    """``boundaries[s]`` is the first step of stage ``s``; ``boundaries[0] == 0``."""

    num_steps: int
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        b = self.boundaries
        if self.num_steps < 1:
            raise ConfigError("steps", self.num_steps, "use at least 1 sampling step")
        if not b or b[0] != 0 or any(x >= y for x, y in zip(b, b[1:])) or b[-1] >= self.num_steps:
            raise ConfigError(
                "boundaries", list(b), f"stage starts must rise strictly from 0 and stay below steps={self.num_steps}"
            )

    @classmethod
    def uniform(cls, num_steps: int, num_stages: int) -> StageSchedule:
        """Stages of (nearly) equal length, longer ones first."""
        if num_stages < 1:
            raise ConfigError("stages", num_stages, "use at least 1 stage")
        if num_stages > num_steps:
            raise ConfigError("stages", num_stages, f"use at most steps={num_steps} stages (one step per stage)")
        base, extra = divmod(num_steps, num_stages)
        starts, at = [], 0
        for s in range(num_stages):
            starts.append(at)
            at += base + (1 if s < extra else 0)
        return cls(num_steps, tuple(starts))

    @property
    def num_stages(self) -> int:
        return len(self.boundaries)

    def stage_of(self, step: int) -> int:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside 0..{self.num_steps - 1}")
        stage = 0
        while stage + 1 < self.num_stages and self.boundaries[stage + 1] <= step:
            stage += 1
        return stage

    def steps_of(self, stage: int) -> range:
        end = self.boundaries[stage + 1] if stage + 1 < self.num_stages else self.num_steps
        return range(self.boundaries[stage], end)

    def stage_lengths(self) -> list[int]:
        return [len(self.steps_of(s)) for s in range(self.num_stages)]

    def step_stages(self) -> list[int]:
        return [self.stage_of(i) for i in range(self.num_steps)]

    def timestep_boundaries(self, timesteps: Sequence[float]) -> list[float]:
        """Stage edges in timestep units (midpoints), so a schedule transfers to other step counts."""
        if len(timesteps) != self.num_steps:
            raise ConfigError("timesteps", len(timesteps), f"give the {self.num_steps} timesteps of this schedule")
        return [(float(timesteps[b - 1]) + float(timesteps[b])) / 2 for b in self.boundaries[1:]]

    def to_dict(self) -> dict[str, object]:
        return {"num_steps": self.num_steps, "boundaries": list(self.boundaries)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageSchedule:
        return cls(int(d["num_steps"]), tuple(int(x) for x in d["boundaries"]))


def stage_of_timestep(timestep: float, edges: Sequence[float]) -> int:
    """Stage index of ``timestep`` given decreasing timestep edges from ``timestep_boundaries``."""
    return sum(1 for edge in edges if timestep < edge)


def stage_lengths(timesteps: Sequence[float], edges: Sequence[float]) -> tuple[int, ...]:
    """How many of ``timesteps`` fall into each stage of ``edges`` (any step count maps onto fixed stages)."""
    counts = [0] * (len(edges) + 1)
    for t in timesteps:
        counts[stage_of_timestep(float(t), edges)] += 1
    return tuple(counts)
