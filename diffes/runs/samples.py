"""Side-by-side samples of a run: dense | searched schedule | uniform schedule, same noise. The dense column
samples the teacher's steps (a joint search's reference); a joint genome samples its own steps and caching."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from diffes.caching import StageIntervalRule, apply_cache
from diffes.caching.rules import step_serve
from diffes.images import save_grid
from diffes.pruning.library import PruningLibrary
from diffes.routing import RoutingSchedule, apply
from diffes.runs.context import load_adapter, make_budget, run_conditions
from diffes.runs.rundir import RunDir
from diffes.search.joint import JointBudget

__all__ = ["sample_schedules", "save_side_by_side"]

MAX_ROWS = 10  # conditions shown, one row each


@torch.no_grad()
def sample_schedules(
    run: RunDir, genomes: dict[str, Sequence[int] | None], per_condition: int = 4, seed: int = 1234
) -> dict[str, torch.Tensor]:
    """Images for each named genome (``None``: the dense model), conditions in order, shared noise."""
    config = run.config()
    library = PruningLibrary.load(run.library_dir)
    adapter = load_adapter(config)
    guidance = config.fitness.guidance_config()
    shown = run_conditions(config, adapter)[:MAX_ROWS]
    conditions = [c for c in shown for _ in range(per_condition)]
    cond = adapter.encode(conditions, guidance, config.model.negative_prompt)
    latents = adapter.initial_latents(len(conditions), torch.Generator("cpu").manual_seed(seed))
    timesteps = adapter.timesteps(config.pruning.steps)
    edges = tuple(library.schedule.timestep_boundaries([float(t) for t in timesteps]))
    space = make_budget(run, config, library)
    out = {}
    for name, genome in genomes.items():
        steps, handles = config.teacher_steps, []
        if genome is not None:
            levels, every = tuple(genome), (1,) * library.num_stages
            steps = config.pruning.steps
            if isinstance(space, JointBudget):  # a joint genome: its own step count and per-stage caching
                choice = space.decode(genome)
                levels, every, steps = choice.levels, choice.every, choice.steps
            routed = apply(adapter.pipe, library, RoutingSchedule(levels, edges))
            handles.append(routed)
            if max(every) > 1:
                serve, segments = step_serve(config.search.cache_serve), StageIntervalRule.segments_of(levels)
                rule = StageIntervalRule(every, edges, serve, segments)
                handles.append(apply_cache(adapter.pipe, rule, routed))
        try:
            generator = torch.Generator("cpu").manual_seed(seed + 1)
            out[name] = adapter.decode(adapter.sample(cond, latents, steps, guidance, generator))
        finally:
            for handle in reversed(handles):
                handle.remove()
    return out


def save_side_by_side(images: dict[str, torch.Tensor], path: str | os.PathLike[str], rows: int) -> Path:
    """Each entry's images as a block of ``rows`` rows; blocks left to right, a blank column between."""
    blocks = [t.reshape(rows, -1, *t.shape[1:]) for t in images.values()]
    blank = torch.ones_like(blocks[0][:, :1])
    row_major = torch.cat([p for b in blocks for p in (b, blank)][:-1], dim=1)
    return save_grid(row_major.reshape(-1, *row_major.shape[2:]), path, rows=rows)
