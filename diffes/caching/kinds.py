"""Names of the cache rules, torch-free: the CLI and the run config validate them before any heavy import."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["RuleName", "RULES", "CalibratedRule", "CALIBRATED"]

RuleName = Literal["interval", "stage_interval", "mask", "firstblock", "teacache", "magcache"]
RULES: tuple[str, ...] = get_args(RuleName)

CalibratedRule = Literal["teacache", "magcache"]
CALIBRATED: tuple[str, ...] = get_args(CalibratedRule)
