"""Cache rules: which steps compute. Each rule is a frozen config with a small per-branch policy; the runtime
(``diffes.caching.runtime``) serves the steps a rule skips. The rules decided by the step alone live here:

- ``IntervalRule`` (FORA): compute every ``every``-th step.
- ``StageIntervalRule``: per stage, compute every n-th step of the stage (the joint search's choice).
- ``MaskRule``: an explicit 0/1 steps-computation mask (cache-dit's masks; CEM's DP produces one).

The adaptive ones (first-block, TeaCache, MagCache) are in ``diffes.caching.adaptive``; ``rule_from_dict``
reads any of them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from diffes.caching.adaptive import FirstBlockRule, MagCacheRule, TeaCacheRule, relative_l1
from diffes.caching.base import REUSE, Serve, Signal, serve_from_dict, serve_to_dict, step_serve
from diffes.caching.kinds import RULES, RuleName
from diffes.errors import ConfigError
from diffes.models.steps import StepInfo
from diffes.stages import stage_of_timestep

__all__ = [
    "RuleName",
    "RULES",
    "IntervalRule",
    "StageIntervalRule",
    "MaskRule",
    "FirstBlockRule",
    "TeaCacheRule",
    "MagCacheRule",
    "Rule",
    "rule_from_dict",
    "relative_l1",
    "step_serve",
]

# ---- interval and mask: decided by the step index alone ----


@dataclass(frozen=True)
class IntervalRule:
    """Compute steps 0, every, 2*every, ... (and the last one with ``compute_last``)."""

    name: ClassVar[RuleName] = "interval"
    signal: ClassVar[Signal] = "none"
    every: int = 2
    serve: Serve = REUSE
    compute_last: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError("cache_every", self.every, "use a whole number of steps >= 1 (1 computes every step)")

    def computes(self, step: int, num_steps: int) -> bool:
        return step % self.every == 0 or (self.compute_last and step == num_steps - 1)

    def policy(self) -> _StaticPolicy:
        return _StaticPolicy(self.computes)

    def check_steps(self, num_steps: int) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "every": self.every, "compute_last": self.compute_last} | serve_to_dict(self.serve)


@dataclass(frozen=True)
class StageIntervalRule:
    """Per stage, compute every ``every[stage]``-th step, counted from the start of the stage's *segment*: a run
    of stages that computes with the same weights (``segments[s]``: stages with one id share their cache; by
    default each stage is its own). A segment's first step computes, since a plan switch drops the cache.
    ``edges``: the stage edges in timestep units, as routing uses them. What a joint search exports."""

    name: ClassVar[RuleName] = "stage_interval"
    signal: ClassVar[Signal] = "none"
    every: tuple[int, ...]
    edges: tuple[float, ...]
    serve: Serve = REUSE
    segments: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", tuple(int(e) for e in self.every))
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        if len(self.edges) != len(self.every) - 1 or any(e < 1 for e in self.every):
            raise ConfigError("cache_every", list(self.every), "give one interval >= 1 per stage")
        if self.segments is not None:
            object.__setattr__(self, "segments", tuple(int(x) for x in self.segments))
            if len(self.segments) != len(self.every):
                raise ConfigError("segments", list(self.segments), "give one segment id per stage")

    @staticmethod
    def segments_of(levels: tuple[int, ...]) -> tuple[int, ...]:
        """Dense stages (level 0) compute with the same weights, so their cache carries over; a pruned stage's
        plan is its own (per-stage importance and compensation)."""
        return tuple(-1 if level == 0 else s for s, level in enumerate(levels))

    def stage_of(self, info: StepInfo) -> int:
        return stage_of_timestep(info.timestep, self.edges)

    def segment_of(self, info: StepInfo) -> int:
        stage = self.stage_of(info)
        return self.segments[stage] if self.segments is not None else stage

    def policy(self) -> _StageIntervalPolicy:
        return _StageIntervalPolicy(self)

    def check_steps(self, num_steps: int) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        segments = {} if self.segments is None else {"segments": list(self.segments)}
        return (
            {"rule": self.name, "every": list(self.every), "edges": list(self.edges)}
            | segments
            | serve_to_dict(self.serve)
        )


class _StageIntervalPolicy:
    def __init__(self, rule: StageIntervalRule) -> None:
        self.rule = rule
        self.reset()

    def reset(self) -> None:
        self.count = 0  # steps seen since the segment began (the runtime resets policies when it changes)

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        compute = self.count % self.rule.every[self.rule.stage_of(info)] == 0
        self.count += 1
        return compute


@dataclass(frozen=True)
class MaskRule:
    """``computed[i]``: whether step ``i`` runs the denoiser (step 0 always does)."""

    name: ClassVar[RuleName] = "mask"
    signal: ClassVar[Signal] = "none"
    computed: tuple[bool, ...]
    serve: Serve = REUSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "computed", tuple(bool(c) for c in self.computed))
        if not self.computed or not self.computed[0]:
            raise ConfigError("cache_mask", list(map(int, self.computed)), "step 0 has nothing to reuse: start with 1")

    @classmethod
    def reusing(cls, steps: Any, num_steps: int, serve: Serve = REUSE) -> MaskRule:
        """The mask that skips the given steps."""
        skip = set(steps)
        bad = sorted(s for s in skip if not isinstance(s, int) or not 0 < s < num_steps)
        if bad:
            raise ConfigError("reuse", bad, f"reuse steps lie in 1..{num_steps - 1}: step 0 has no earlier output")
        return cls(tuple(i not in skip for i in range(num_steps)), serve)

    def computes(self, step: int, num_steps: int) -> bool:
        return self.computed[step]

    def policy(self) -> _StaticPolicy:
        return _StaticPolicy(self.computes)

    def check_steps(self, num_steps: int) -> None:
        if len(self.computed) != num_steps:
            raise ConfigError(
                "cache_mask", len(self.computed), f"give one entry per sampling step ({num_steps} steps here)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "computed": [int(c) for c in self.computed]} | serve_to_dict(self.serve)


class _StaticPolicy:
    def __init__(self, computes: Any) -> None:
        self.computes = computes

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        return bool(self.computes(info.step, info.num_steps))

    def reset(self) -> None:
        pass


Rule = IntervalRule | StageIntervalRule | MaskRule | FirstBlockRule | TeaCacheRule | MagCacheRule


def rule_from_dict(d: dict[str, Any]) -> Rule:
    """A rule from its ``to_dict()`` (a calibration file, an export, a config table)."""
    kind = d.get("rule")
    if kind == "interval":
        return IntervalRule(int(d.get("every", 2)), serve_from_dict(d), bool(d.get("compute_last", False)))
    if kind == "stage_interval":
        segments = tuple(d["segments"]) if d.get("segments") is not None else None
        return StageIntervalRule(tuple(d["every"]), tuple(d["edges"]), serve_from_dict(d), segments)
    if kind == "mask":
        return MaskRule(tuple(bool(c) for c in d["computed"]), serve_from_dict(d))
    if kind == "firstblock":
        return FirstBlockRule(float(d.get("threshold", 0.05)), int(d.get("fn", 1)), int(d.get("bn", 0)))
    if kind == "teacache":
        steps = d.get("num_steps")
        coefficients = tuple(d.get("coefficients", (1.0, 0.0)))
        skips = d.get("max_skips")
        return TeaCacheRule(float(d.get("threshold", 0.1)), coefficients, int(d.get("bn", 0)), steps, skips)
    if kind == "magcache":
        return MagCacheRule(
            tuple(d.get("ratios", ())),
            float(d.get("threshold", 0.06)),
            int(d.get("max_skips", 2)),
            float(d.get("retention", 0.2)),
            serve_from_dict(d),
        )
    raise ConfigError("cache_rule", kind, f"use one of {', '.join(RULES)}")
