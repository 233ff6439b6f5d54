"""Side-by-side samples of a run: dense | searched schedule | uniform schedule, same noise."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from diffes.images import save_grid
from diffes.pruning.library import PruningLibrary
from diffes.routing import RoutingSchedule, apply
from diffes.runs.context import load_adapter, run_conditions
from diffes.runs.rundir import RunDir

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
    out = {}
    for name, genome in genomes.items():
        handle = None
        if genome is not None:
            handle = apply(adapter.pipe, library, RoutingSchedule.from_stages(library.schedule, timesteps, genome))
        try:
            generator = torch.Generator("cpu").manual_seed(seed + 1)
            out[name] = adapter.decode(adapter.sample(cond, latents, config.pruning.steps, guidance, generator))
        finally:
            if handle is not None:
                handle.remove()
    return out


def save_side_by_side(images: dict[str, torch.Tensor], path: str | os.PathLike[str], rows: int) -> Path:
    """Each entry's images as a block of ``rows`` rows; blocks left to right, a blank column between."""
    blocks = [t.reshape(rows, -1, *t.shape[1:]) for t in images.values()]
    blank = torch.ones_like(blocks[0][:, :1])
    row_major = torch.cat([p for b in blocks for p in (b, blank)][:-1], dim=1)
    return save_grid(row_major.reshape(-1, *row_major.shape[2:]), path, rows=rows)
