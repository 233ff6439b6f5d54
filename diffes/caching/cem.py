"""CEM cache schedules (arXiv 2512.23258): which steps compute, chosen by dynamic programming on an error prior.

Steps ``0..N-1``; step 0 and step ``N-1`` always compute. A reused step ``i`` answers with the output of the
last computed step ``j < i`` and costs ``weights[i] * err[j, i - j]`` (``diffes.caching.error_prior``); a gap
``i - j`` above the prior's ``max_gap`` is forbidden. The plan minimises the summed error under a budget of
*at most* ``budget_steps`` computed steps and/or, when pruning makes steps unequal, a total cost
``sum(step_costs[computed]) <= budget_cost``. "At most", because computing more never has to hurt: a bigger
budget can always choose the smaller one's schedule.

The program runs over the last computed step. The error of the steps between two computed steps ``j < i``
depends on ``j`` and ``i`` alone, so a partial schedule ending computed at ``i`` is summed up by its (count,
cost, error); of those at the same ``i``, only the Pareto front can lead to the optimum, and that front is
what each step keeps. With a step budget alone the cost is ignored and the front holds at most one state per
count: O(N^2 * K) for N steps and K = max_gap. A cost budget is exact too (no rounding of costs into bins);
the front then stays small when the costs take few distinct values, as pruning levels do.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from diffes.caching.error_prior import ErrorPrior
from diffes.caching.rules import REUSE, MaskRule
from diffes.caching.runtime import Serve
from diffes.errors import ConfigError

__all__ = ["CacheSchedule", "plan_computed_steps", "schedule_error"]


@dataclass(frozen=True)
class CacheSchedule:
    """``computed[i]``: whether step ``i`` runs the denoiser (the 0/1 mask of cache-dit's steps computation
    mask); ``expected_error``: its error under the prior it was planned with."""

    computed: tuple[bool, ...]
    expected_error: float = 0.0

    def __post_init__(self) -> None:
        mask = self.computed
        if len(mask) < 1 or not all(isinstance(c, bool) for c in mask):
            raise ConfigError("computed", mask, "give one true/false (or 1/0) per step")
        if not (mask[0] and mask[-1]):
            raise ConfigError("computed", _bits(mask), "the first and the last step must compute")

    @property
    def num_steps(self) -> int:
        return len(self.computed)

    @property
    def computed_steps(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.computed) if c)

    @property
    def reuse_steps(self) -> frozenset[int]:
        """The steps that skip the denoiser."""
        return frozenset(i for i, c in enumerate(self.computed) if not c)

    def rule(self, serve: Serve = REUSE) -> MaskRule:
        """The mask rule that runs this schedule (skipped steps served by ``serve``)."""
        return MaskRule(self.computed, serve)

    def to_dict(self) -> dict[str, Any]:
        return {"computed": [int(c) for c in self.computed], "expected_error": self.expected_error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheSchedule:
        mask = data.get("computed")
        if not isinstance(mask, (list, tuple)) or any(type(c) not in (bool, int) or c not in (0, 1) for c in mask):
            raise ConfigError("computed", mask, "give a list with a 1 (computed) or 0 (reused) per step")
        error = data.get("expected_error", 0.0)
        if isinstance(error, bool) or not isinstance(error, (int, float)):
            raise ConfigError("expected_error", error, "give a number")
        return cls(tuple(bool(c) for c in mask), float(error))


def _bits(mask: Sequence[bool]) -> str:
    return "".join("1" if c else "0" for c in mask)


def _check_per_step(field: str, values: Sequence[float] | None, n: int, default: float) -> list[float]:
    if values is None:
        return [default] * n
    out = [float(v) for v in values]
    if len(out) != n:
        raise ConfigError(field, f"{len(out)} values", f"give one value per step ({n})")
    if not all(math.isfinite(v) and v >= 0 for v in out):
        raise ConfigError(field, values, "values must be finite and >= 0")
    return out


def schedule_error(prior: ErrorPrior, computed: Sequence[bool], weights: Sequence[float] | None = None) -> float:
    """The prior's error of a mask: ``inf`` where a reused step is further than ``max_gap`` from its source."""
    n = prior.num_steps
    if len(computed) != n:
        raise ConfigError("computed", f"{len(computed)} steps", f"the error prior has {n} steps")
    w = _check_per_step("weights", weights, n, 1.0)
    err = prior.err.tolist()
    total, last = 0.0, 0
    for i in range(1, n):
        if computed[i]:
            last = i
        elif i - last > prior.max_gap:
            return math.inf
        else:
            total += w[i] * err[last][i - last]
    return total


class _State(NamedTuple):
    steps: int  # computed steps so far
    cost: float
    error: float
    step: int
    parent: _State | None


def _pareto(states: list[_State], use_count: bool, use_cost: bool) -> list[_State]:
    """The states no other dominates in (count, cost, error), over the dimensions a budget constrains.

    Sorted by those keys, a state is dominated exactly when an earlier kept one has cost and error no larger;
    a staircase of the kept (cost, error), cost ascending and error strictly descending, answers that by
    bisection."""

    def key(s: _State) -> tuple[int, float, float]:
        return (s.steps if use_count else 0, s.cost if use_cost else 0.0, s.error)

    kept: list[_State] = []
    costs: list[float] = []
    errors: list[float] = []
    for s in sorted(states, key=lambda s: (*key(s), s.steps, s.cost)):  # equal keys: fewer steps, cheaper first
        _, cost, error = key(s)
        k = bisect_right(costs, cost)
        if k and errors[k - 1] <= error:
            continue
        kept.append(s)
        lo = hi = bisect_left(costs, cost)
        while hi < len(costs) and errors[hi] >= error:
            hi += 1
        costs[lo:hi], errors[lo:hi] = [cost], [error]
    return kept


def _fits(cost: float, budget: float) -> bool:
    """``cost <= budget`` up to float rounding of the sums (costs are added in different orders)."""
    return cost <= budget + 1e-9 * max(1.0, abs(budget))


def _cheapest(costs: list[float], hop: int) -> float:
    """The least cost of computing steps 0 and N-1 with no two consecutive computed steps over ``hop`` apart."""
    best = [math.inf] * len(costs)
    best[0] = costs[0]
    for i in range(1, len(costs)):
        best[i] = costs[i] + min(best[max(0, i - hop) : i])
    return best[-1]


def plan_computed_steps(
    prior: ErrorPrior,
    budget_steps: int | None = None,
    *,
    weights: Sequence[float] | None = None,
    step_costs: Sequence[float] | None = None,
    budget_cost: float | None = None,
    num_steps: int | None = None,
) -> CacheSchedule:
    """The least-error schedule with at most ``budget_steps`` computed steps and, if given, a total
    ``step_costs`` of computed steps within ``budget_cost``. ``weights[i]`` scales the error of reusing at
    step ``i`` (default 1). ``num_steps``, when given, must be the prior's (a prior of another step count
    does not describe this trajectory). Ties go to fewer computed steps, then the lower cost."""
    if num_steps is not None:
        prior.check_compatible(num_steps=num_steps)
    _check_budgets(prior, budget_steps, step_costs, budget_cost)
    n = prior.num_steps
    w = _check_per_step("weights", weights, n, 1.0)
    costs = _check_per_step("step_costs", step_costs, n, 0.0)
    max_cost = math.inf if budget_cost is None else float(budget_cost)
    if not _fits(costs[0] + costs[-1], max_cost):
        fix = f"computing the first and last step alone costs {costs[0] + costs[-1]:g}; raise budget_cost"
        raise ConfigError("budget_cost", budget_cost, fix)
    final = _last_front(prior, _segments(prior, w), costs, n if budget_steps is None else budget_steps, max_cost)
    if not final:
        cheapest = _cheapest(costs, prior.max_gap + 1)
        fix = f"with max_gap={prior.max_gap}, the cheapest schedule costs {cheapest:g}; raise budget_cost"
        if _fits(cheapest, max_cost):
            fix = f"no schedule of at most {budget_steps} computed steps fits; raise budget_steps or budget_cost"
        raise ConfigError("budget_cost", budget_cost, fix)
    best: _State | None = min(final, key=lambda s: (s.error, s.steps, s.cost))
    mask = [False] * n
    while best is not None:
        mask[best.step] = True
        best = best.parent
    return CacheSchedule(tuple(mask), schedule_error(prior, mask, w))


def _check_budgets(
    prior: ErrorPrior, budget_steps: int | None, step_costs: Sequence[float] | None, budget_cost: float | None
) -> None:
    n, hop = prior.num_steps, prior.max_gap + 1
    if n < 2:
        raise ConfigError("num_steps", n, "a cache schedule needs at least 2 steps")
    if budget_steps is None and budget_cost is None:
        raise ConfigError("budget_steps", None, "give budget_steps, or step_costs with budget_cost, or both")
    if (step_costs is None) != (budget_cost is None):
        raise ConfigError("budget_cost", budget_cost, "give step_costs and budget_cost together")
    if budget_cost is not None and (isinstance(budget_cost, bool) or not isinstance(budget_cost, (int, float))):
        raise ConfigError("budget_cost", budget_cost, "give a number")
    if budget_steps is not None:
        if isinstance(budget_steps, bool) or not isinstance(budget_steps, int) or not 2 <= budget_steps <= n:
            raise ConfigError("budget_steps", budget_steps, f"use 2 to {n}: the first and last step always compute")
        least = math.ceil((n - 1) / hop) + 1  # consecutive computed steps are at most max_gap + 1 apart
        if budget_steps < least:
            fix = f"with max_gap={prior.max_gap}, {n} steps need >= {least} computed"
            raise ConfigError("budget_steps", budget_steps, fix)


def _segments(prior: ErrorPrior, weights: list[float]) -> list[list[float]]:
    """``[j][L]``: the error of steps ``j+1..j+L`` reusing step ``j`` (``L <= max_gap``, within the trajectory)."""
    n, err = prior.num_steps, prior.err.tolist()
    out = []
    for j in range(n):
        sums = [0.0]
        for c in range(1, min(prior.max_gap, n - 1 - j) + 1):
            sums.append(sums[-1] + weights[j + c] * err[j][c])
        out.append(sums)
    return out


def _last_front(
    prior: ErrorPrior, segment: list[list[float]], costs: list[float], max_count: int, max_cost: float
) -> list[_State]:
    """The Pareto front of the schedules that fit, at the last step (empty: none fits)."""
    n, hop = prior.num_steps, prior.max_gap + 1
    use_count, use_cost = max_count < n, max_cost < math.inf
    fronts: list[list[_State]] = [[_State(1, costs[0], 0.0, 0, None)]]
    for i in range(1, n):
        # room for step n-1 itself, which every partial schedule still has to compute
        count_cap, cost_cap = (max_count, max_cost) if i == n - 1 else (max_count - 1, max_cost - costs[-1])
        candidates = []
        for j in range(max(0, i - hop), i):
            between = segment[j][i - j - 1]
            for s in fronts[j]:
                count, cost = s.steps + 1, s.cost + costs[i]
                if count <= count_cap and _fits(cost, cost_cap):
                    candidates.append(_State(count, cost, s.error + between, i, s))
        fronts.append(_pareto(candidates, use_count, use_cost))
    return fronts[-1]
