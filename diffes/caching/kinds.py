"""Names of the cache rules, torch-free: the CLI and the run config validate them before any heavy import."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["RuleName", "RULES", "CalibratedRule", "CALIBRATED", "StepServe"]

RuleName = Literal["interval", "stage_interval", "mask", "firstblock", "teacache", "magcache"]
RULES: tuple[str, ...] = get_args(RuleName)

CalibratedRule = Literal["teacache", "magcache"]
CALIBRATED: tuple[str, ...] = get_args(CalibratedRule)

StepServe = Literal["reuse", "extrapolate1", "extrapolate2"]
"""How a skipped step is served by a step-level rule: the last output, or its first/second-order extrapolation."""
