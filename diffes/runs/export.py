"""Export a run's best schedule (or the Pareto point for a budget) as a routed checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffes.errors import CheckpointError, ConfigError
from diffes.pruning.library import PruningLibrary
from diffes.routing import RoutingSchedule, export_routed
from diffes.routing.checkpoint import check_export_folder
from diffes.runs.context import load_adapter, make_budget
from diffes.runs.rundir import RunDir
from diffes.search import SearchState, best, pareto_front
from diffes.search.joint import JointBudget

__all__ = ["export_run", "choose_genome"]


def choose_genome(state: SearchState, budget: float | None = None) -> tuple[tuple[int, ...], float, float]:
    """The best genome, or with ``budget`` the best evaluated genome whose cost fits it (a Pareto point)."""
    if budget is None:
        return best(state)
    fitting = [p for p in pareto_front(state) if p[2] <= budget + 1e-9]
    if not fitting:
        cheapest = min(p[2] for p in pareto_front(state))
        fix = f"no evaluated schedule costs that little; the cheapest costs {cheapest:.4f}"
        raise ConfigError("budget", budget, fix)
    return min(fitting, key=lambda p: (p[1], p[2]))


def export_run(run: RunDir, out: str | os.PathLike[str] | None = None, budget: float | None = None) -> Path:
    if out is not None:
        check_export_folder(out)  # before the library and the model are loaded
    config = run.config()
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise CheckpointError(f"run={str(run.path)!r}: no generation finished yet; nothing to export")
    state = SearchState.from_json(checkpoint["search"], f"{run.checkpoint_path(checkpoint['generation'])}: search")
    genome, distance, cost = choose_genome(state, budget)
    library = PruningLibrary.load(run.library_dir)
    adapter = load_adapter(config)  # the dense pipeline as the run loads it (its dtype and device)
    pipe = adapter.pipe
    timesteps = adapter.timesteps(config.pruning.steps)
    space = make_budget(run, config, library)
    extra: dict[str, Any] = {"run": str(run.path), "generation": state.generation, "distance": distance}
    extra["budget_cost"] = cost
    cache, num_steps = None, None
    if isinstance(space, JointBudget):  # the step count and the stages' caching go with the levels
        from diffes.caching import StageIntervalRule
        from diffes.caching.rules import step_serve

        choice = space.decode(genome)
        genome, num_steps = choice.levels, choice.steps
        edges = tuple(library.schedule.timestep_boundaries([float(t) for t in timesteps]))
        serve = step_serve(config.search.cache_serve)
        segments = StageIntervalRule.segments_of(choice.levels)
        cache = StageIntervalRule(choice.every, edges, serve, segments) if max(choice.every) > 1 else None
    schedule = RoutingSchedule.from_stages(library.schedule, timesteps, genome)
    # the run's own export is replaced whole (a resumed run exports again)
    folder, replace = (out, False) if out is not None else (run.export_dir, True)
    return export_routed(folder, pipe, library, schedule, extra, replace, cache=cache, num_steps=num_steps)
