"""The cache rule contract, torch-light: how a skipped step is served, and what a rule provides to the runtime
(``diffes.caching.runtime``): a per-branch policy that decides, per step, whether to compute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from diffes.errors import ConfigError
from diffes.models.steps import StepInfo

__all__ = [
    "Reuse",
    "Extrapolate",
    "Residual",
    "Serve",
    "Signal",
    "Policy",
    "CacheRule",
    "REUSE",
    "serve_to_dict",
    "serve_from_dict",
    "step_serve",
]


@dataclass(frozen=True)
class Reuse:
    """A skipped step returns the last computed output of its branch."""


@dataclass(frozen=True)
class Extrapolate:
    """A skipped step extrapolates the last computed outputs in the step index (order 1 or 2, as TaylorSeer)."""

    order: Literal[1, 2] = 1

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ConfigError("cache_order", self.order, "use order 1 or 2")


@dataclass(frozen=True)
class Residual:
    """A skipped step computes the first ``fn`` and the last ``bn`` blocks and adds the cached residual of the
    blocks between them."""

    fn: int = 1
    bn: int = 0

    def __post_init__(self) -> None:
        for name, value in (("cache_fn", self.fn), ("cache_bn", self.bn)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, value, "use a whole number of blocks >= 0")


Serve = Reuse | Extrapolate | Residual
Signal = Literal["none", "modulated_input", "head_residual"]


class Policy(Protocol):
    """A rule's per-branch decision state; ``decide`` returns True to compute the step."""

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool: ...

    def reset(self) -> None: ...


class CacheRule(Protocol):
    @property
    def serve(self) -> Serve: ...

    @property
    def signal(self) -> Signal: ...

    def policy(self) -> Policy: ...

    def check_steps(self, num_steps: int) -> None: ...


REUSE = Reuse()  # the default serve: frozen, so one instance is shared safely


def serve_to_dict(serve: Serve) -> dict[str, Any]:
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
