"""Side-by-side samples of a run: dense | searched schedule | uniform schedule, same seeds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from diffes.images import save_grid
from diffes.models.loading import load_pipeline
from diffes.pruning.library import PruningLibrary
from diffes.routing import RoutingSchedule, apply
from diffes.runs.rundir import RunDir

__all__ = ["sample_schedules", "save_side_by_side"]


@torch.no_grad()
def sample_schedules(
    run: RunDir, genomes: dict[str, Sequence[int] | None], per_class: int = 4, seed: int = 1234
) -> dict[str, torch.Tensor]:
    """Images for each named genome (``None``: the dense model), classes in order, shared noise."""
    config = run.config()
    library = PruningLibrary.load(run.library_dir)
    pipe = load_pipeline(config.model, device=config.device)
    pipe.set_progress_bar_config(disable=True)
    labels = [c for c in range(pipe.num_classes) for _ in range(per_class)]
    latents = pipe.prepare_latents(len(labels), torch.Generator("cpu").manual_seed(seed))
    pipe.scheduler.set_timesteps(config.steps)
    timesteps = pipe.scheduler.timesteps.clone()
    out = {}
    for name, genome in genomes.items():
        handle = None
        if genome is not None:
            handle = apply(pipe, library, RoutingSchedule.from_stages(library.schedule, timesteps, genome))
        try:
            kwargs = {"guidance_scale": config.guidance, "latents": latents, "output_type": "pt"}
            out[name] = pipe(labels, num_inference_steps=config.steps, **kwargs).images.cpu()
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
