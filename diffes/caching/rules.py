"""Cache rules: which steps compute. Each rule is a frozen config with a small per-branch policy; the runtime
(``diffes.caching.runtime``) serves the steps a rule skips.

- ``IntervalRule`` (FORA): compute every ``every``-th step.
- ``StageIntervalRule``: per stage, compute every n-th step of the stage (the joint search's choice).
- ``MaskRule``: an explicit 0/1 steps-computation mask (cache-dit's masks; CEM's DP produces one).
- ``FirstBlockRule``: compute when the first ``fn`` blocks' residual changed by more than ``threshold``
  (relative L1) since the last computed step (ParaAttention / diffusers' first-block cache).
- ``TeaCacheRule``: accumulate a polynomial rescaling of the relative L1 change of the first block's
  timestep-modulated input; compute once the sum reaches ``threshold`` (TeaCache); first and last steps
  always compute. Coefficients come from ``diffes calibrate-cache``.
- ``MagCacheRule``: accumulate |1 - product of calibrated output-magnitude ratios| over skipped steps; compute
  when it passes ``threshold``, after ``max_skips`` skips in a row, and in the first ``retention`` of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from diffes.caching.kinds import RULES, RuleName
from diffes.caching.runtime import Extrapolate, Residual, Reuse, Serve, Signal
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

REUSE = Reuse()  # the default serve: frozen, so one instance is shared safely


def relative_l1(now: torch.Tensor, before: torch.Tensor) -> float:
    """mean |now - before| / mean |before|: the change measure TeaCache and the first-block cache use."""
    scale = before.abs().mean().item()
    return (now - before).abs().mean().item() / scale if scale > 0 else math.inf


def _check_threshold(value: object, upper: float = 10.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        raise ConfigError("cache_threshold", value, f"use a number in [0, {upper}]")


def _serve_dict(serve: Serve) -> dict[str, Any]:
    if isinstance(serve, Residual):
        return {"serve": "residual", "fn": serve.fn, "bn": serve.bn}
    if isinstance(serve, Extrapolate):
        return {"serve": "extrapolate", "order": serve.order}
    return {"serve": "reuse"}


def step_serve(name: str) -> Serve:
    """A ``StepServe`` name as a serve: reuse, extrapolate1 or extrapolate2."""
    if name == "reuse":
        return REUSE
    if name in ("extrapolate1", "extrapolate2"):
        return Extrapolate(1 if name == "extrapolate1" else 2)
    raise ConfigError("cache_serve", name, "use reuse, extrapolate1 or extrapolate2")


def serve_from_dict(d: dict[str, Any]) -> Serve:
    kind = d.get("serve", "reuse")
    if kind == "residual":
        return Residual(int(d.get("fn", 1)), int(d.get("bn", 0)))
    if kind == "extrapolate":
        return Extrapolate(d.get("order", 1))
    if kind != "reuse":
        raise ConfigError("cache_serve", kind, "use reuse, extrapolate or residual")
    return Reuse()


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
        return {"rule": self.name, "every": self.every, "compute_last": self.compute_last} | _serve_dict(self.serve)


@dataclass(frozen=True)
class StageIntervalRule:
    """Per stage, compute every ``every[stage]``-th step counted from the stage's first step (which computes:
    a stage switch drops the cache). ``edges``: the stage edges in timestep units, as routing uses them. What
    a joint search exports."""

    name: ClassVar[RuleName] = "stage_interval"
    signal: ClassVar[Signal] = "none"
    every: tuple[int, ...]
    edges: tuple[float, ...]
    serve: Serve = REUSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", tuple(int(e) for e in self.every))
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        if len(self.edges) != len(self.every) - 1 or any(e < 1 for e in self.every):
            raise ConfigError("cache_every", list(self.every), "give one interval >= 1 per stage")

    def stage_of(self, info: StepInfo) -> int:
        return stage_of_timestep(info.timestep, self.edges)

    def policy(self) -> _StageIntervalPolicy:
        return _StageIntervalPolicy(self)

    def check_steps(self, num_steps: int) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "every": list(self.every), "edges": list(self.edges)} | _serve_dict(self.serve)


class _StageIntervalPolicy:
    def __init__(self, rule: StageIntervalRule) -> None:
        self.rule = rule
        self.reset()

    def reset(self) -> None:
        self.count = 0  # steps seen since the stage began (the runtime resets policies at stage switches)

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
        return {"rule": self.name, "computed": [int(c) for c in self.computed]} | _serve_dict(self.serve)


class _StaticPolicy:
    def __init__(self, computes: Any) -> None:
        self.computes = computes

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        return bool(self.computes(info.step, info.num_steps))

    def reset(self) -> None:
        pass


# ---- first-block residual ----


@dataclass(frozen=True)
class FirstBlockRule:
    name: ClassVar[RuleName] = "firstblock"
    signal: ClassVar[Signal] = "head_residual"
    threshold: float = 0.05
    fn: int = 1
    bn: int = 0

    def __post_init__(self) -> None:
        _check_threshold(self.threshold, 1.0)
        if self.fn < 1:
            raise ConfigError("cache_fn", self.fn, "the first-block rule compares the first fn blocks: use fn >= 1")

    @property
    def serve(self) -> Residual:
        return Residual(self.fn, self.bn)

    def policy(self) -> _FirstBlockPolicy:
        return _FirstBlockPolicy(self.threshold)

    def check_steps(self, num_steps: int) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "threshold": self.threshold, "fn": self.fn, "bn": self.bn}


class _FirstBlockPolicy:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.last: torch.Tensor | None = None  # the head residual at the last computed step

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        assert signal is not None
        compute = not can_skip or self.last is None or relative_l1(signal, self.last) > self.threshold
        if compute:
            self.last = signal
        return compute


# ---- TeaCache ----


@dataclass(frozen=True)
class TeaCacheRule:
    """``coefficients``: the rescaling polynomial, highest degree first (numpy's ``polyval`` order)."""

    name: ClassVar[RuleName] = "teacache"
    signal: ClassVar[Signal] = "modulated_input"
    threshold: float = 0.1
    coefficients: tuple[float, ...] = (1.0, 0.0)
    bn: int = 0
    num_steps: int | None = None  # the step count it was calibrated at
    max_skips: int | None = None  # at most this many skipped steps in a row (None: no limit, as TeaCache)

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        if self.max_skips is not None and (isinstance(self.max_skips, bool) or self.max_skips < 0):
            raise ConfigError("max_skips", self.max_skips, "use a whole number >= 0, or none for no limit")
        object.__setattr__(self, "coefficients", tuple(float(c) for c in self.coefficients))
        if not self.coefficients or not all(math.isfinite(c) for c in self.coefficients):
            raise ConfigError("coefficients", list(self.coefficients), "give finite polynomial coefficients")

    @property
    def serve(self) -> Residual:
        return Residual(0, self.bn)

    def rescale(self, x: float) -> float:
        value = 0.0
        for c in self.coefficients:
            value = value * x + c
        return value

    def policy(self) -> _TeaCachePolicy:
        return _TeaCachePolicy(self)

    def check_steps(self, num_steps: int) -> None:
        _check_calibrated_steps(self.num_steps, num_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "threshold": self.threshold,
            "coefficients": list(self.coefficients),
            "bn": self.bn,
            "num_steps": self.num_steps,
            "max_skips": self.max_skips,
        }


def _check_calibrated_steps(calibrated: int | None, num_steps: int) -> None:
    if calibrated is not None and calibrated != num_steps:
        raise ConfigError(
            "steps",
            num_steps,
            f"the cache calibration was made at {calibrated} steps: sample with those or recalibrate",
        )


class _TeaCachePolicy:
    def __init__(self, rule: TeaCacheRule) -> None:
        self.rule = rule
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None
        self.accumulated = 0.0
        self.skips = 0

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        assert signal is not None
        edge = info.step == 0 or info.step == info.num_steps - 1 or self.previous is None
        if not edge:
            assert self.previous is not None
            self.accumulated += self.rule.rescale(relative_l1(signal, self.previous))
        self.previous = signal
        capped = self.rule.max_skips is not None and self.skips >= self.rule.max_skips
        compute = edge or not can_skip or capped or self.accumulated >= self.rule.threshold
        if compute:
            self.accumulated, self.skips = 0.0, 0
        else:
            self.skips += 1
        return compute


# ---- MagCache ----


@dataclass(frozen=True)
class MagCacheRule:
    """``ratios[i]``: mean |output| at step i over step i-1, measured by ``diffes calibrate-cache``."""

    name: ClassVar[RuleName] = "magcache"
    signal: ClassVar[Signal] = "none"
    ratios: tuple[float, ...] = field(default=())
    threshold: float = 0.06
    max_skips: int = 2
    retention: float = 0.2
    serve: Serve = REUSE

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if not self.ratios or not all(math.isfinite(r) and r > 0 for r in self.ratios):
            raise ConfigError("ratios", "missing or not positive", "calibrate them with diffes calibrate-cache")
        if isinstance(self.max_skips, bool) or not isinstance(self.max_skips, int) or self.max_skips < 0:
            raise ConfigError("max_skips", self.max_skips, "use a whole number >= 0")
        if not 0.0 <= self.retention <= 1.0:
            raise ConfigError("retention", self.retention, "use a fraction of the steps in [0, 1]")

    def policy(self) -> _MagCachePolicy:
        return _MagCachePolicy(self)

    def check_steps(self, num_steps: int) -> None:
        _check_calibrated_steps(len(self.ratios), num_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "ratios": list(self.ratios),
            "threshold": self.threshold,
            "max_skips": self.max_skips,
            "retention": self.retention,
        } | _serve_dict(self.serve)


class _MagCachePolicy:
    def __init__(self, rule: MagCacheRule) -> None:
        self.rule = rule
        self.reset()

    def reset(self) -> None:
        self.ratio, self.error, self.skips = 1.0, 0.0, 0

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        if info.step < max(1, math.ceil(self.rule.retention * info.num_steps)) or not can_skip:
            self.reset()
            return True
        self.ratio *= self.rule.ratios[info.step]
        self.error += abs(1.0 - self.ratio)
        self.skips += 1
        if self.error <= self.rule.threshold and self.skips <= self.rule.max_skips:
            return False
        self.reset()
        return True


Rule = IntervalRule | StageIntervalRule | MaskRule | FirstBlockRule | TeaCacheRule | MagCacheRule


def rule_from_dict(d: dict[str, Any]) -> Rule:
    """A rule from its ``to_dict()`` (a calibration file, an export, a config table)."""
    kind = d.get("rule")
    if kind == "interval":
        return IntervalRule(int(d.get("every", 2)), serve_from_dict(d), bool(d.get("compute_last", False)))
    if kind == "stage_interval":
        return StageIntervalRule(tuple(d["every"]), tuple(d["edges"]), serve_from_dict(d))
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
