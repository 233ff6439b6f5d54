"""Small valid files of every kind diffes reads back, built without running a search: the starting point of
tests that damage them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tiny import zoo_pipeline

from diffes.fitness.teacher import ProbeSet, Teacher
from diffes.models.adapters import Guidance
from diffes.pruning import PruningConfig, PruningLibrary, build_library
from diffes.routing import RoutingSchedule, export_routed
from diffes.runs.config import RunConfig
from diffes.runs.rng import capture_rng
from diffes.runs.rundir import RunDir
from diffes.search import Budget, SearchConfig, SearchState

__all__ = ["search_state", "write_teacher", "write_run", "tiny_library", "write_routed"]


def search_state() -> SearchState:
    """Generation 0 of a 2-stage, 3-level search: schedules (0, 1), (1, 0), (1, 1), the first one best."""
    budget = Budget((0.5, 0.5), (1.0, 0.6, 0.3), 0.8)
    population = ((0, 1), (1, 0), (1, 1))
    cache = {(0, 1): 0.1, (1, 0): 0.2, (1, 1): 0.3}
    logbook = ({"gen": 0, "best": 0.1},)
    config = SearchConfig(population=3)
    return SearchState(config, budget, 0, (population,), cache, ((0, 1),), logbook, random.getstate())


def write_teacher(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    probes = ProbeSet((0, 1, 0), {"class_labels": torch.tensor([0, 1, 0])}, torch.randn(3, 1, 8, 8, generator=g), 0)
    Teacher(probes, torch.rand(3, 1, 8, 8, generator=g), 4, Guidance("cfg", 2.0)).save(path)


def write_run(path: Path, library: PruningLibrary | None = None) -> RunDir:
    """A run directory after generation 0 (config, checkpoint, best.json, teacher; the library if given)."""
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.config_file.write_text(json.dumps(RunConfig().to_dict()))
    run.write_checkpoint(0, {"search": search_state().to_json(), "rng": capture_rng(), "worker_restarts": 0})
    point = {"genome": [0, 1], "distance": 0.1, "cost": 0.8}
    run.write_best({"generation": 0, **point, "uniform": point, "hall_of_fame": [point], "pareto": []})
    write_teacher(run.teacher_file)
    if library is not None:
        library.save(run.library_dir)
    return run


def tiny_library() -> tuple[Any, PruningLibrary]:
    """A random-weight zoo DiT and its 2-stage library (a few seconds)."""
    pipe: Any = zoo_pipeline("dit-digits")
    return pipe, build_library(pipe, PruningConfig(stages=2, steps=4, calibration_samples=2), progress=False)


def write_routed(path: Path, pipe: Any, library: PruningLibrary) -> Path:
    pipe.scheduler.set_timesteps(library.schedule.num_steps)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, [1, 3])
    return export_routed(path, pipe, library, schedule)
