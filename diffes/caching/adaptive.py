"""Adaptive cache rules: each step's decision reads what the model is doing.

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

from diffes.caching.base import REUSE, Residual, Serve, Signal, serve_to_dict
from diffes.caching.kinds import RuleName
from diffes.errors import ConfigError
from diffes.models.steps import StepInfo

__all__ = ["FirstBlockRule", "TeaCacheRule", "MagCacheRule", "relative_l1", "check_threshold"]


def relative_l1(now: torch.Tensor, before: torch.Tensor) -> float:
    """mean |now - before| / mean |before|: the change measure TeaCache and the first-block cache use."""
    scale = before.abs().mean().item()
    return (now - before).abs().mean().item() / scale if scale > 0 else math.inf


def check_threshold(value: object, upper: float = 10.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        raise ConfigError("cache_threshold", value, f"use a number in [0, {upper}]")


# ---- first-block residual ----


@dataclass(frozen=True)
class FirstBlockRule:
    name: ClassVar[RuleName] = "firstblock"
    signal: ClassVar[Signal] = "head_residual"
    threshold: float = 0.05
    fn: int = 1
    bn: int = 0

    def __post_init__(self) -> None:
        check_threshold(self.threshold, 1.0)
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
        check_threshold(self.threshold)
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
        check_threshold(self.threshold)
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
        } | serve_to_dict(self.serve)


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
