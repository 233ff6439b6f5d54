"""Everything that scores genomes for a run, built from the run directory (locally or on a worker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffes.fitness import get_metric
from diffes.fitness.base import Metric
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.loading import load_pipeline
from diffes.pruning.library import PruningLibrary, build_library
from diffes.routing.router import Router
from diffes.runs.config import RunConfig
from diffes.runs.rundir import RunDir

__all__ = ["RunContext", "prepare", "local_context", "load_context", "make_metric"]


@dataclass
class RunContext:
    pipe: Any
    library: PruningLibrary
    teacher: Teacher
    router: Router
    evaluator: Evaluator


def make_metric(config: RunConfig) -> Metric:
    weights = config.lpips_weights if config.metric.startswith("lpips") else None
    if config.metric == "clip":
        weights = config.clip_weights
    return get_metric(config.metric, weights=weights)


def prepare(run: RunDir, config: RunConfig, progress: bool = True) -> tuple[Any, PruningLibrary, Teacher]:
    """Load or build (and save) the library and the teacher; a crash in between just redoes the missing part."""
    make_metric(config)  # fail on missing metric weights before any expensive work
    pipe = load_pipeline(config.model, device=config.device)
    if not run.has_library():
        build_library(pipe, config.pruning_config(), progress=progress).save(run.library_dir)
    library = PruningLibrary.load(run.library_dir)  # one source of truth, fresh or resumed
    if run.has_teacher():
        teacher = Teacher.load(run.teacher_file)
    else:
        probes = make_probes(pipe, config.probes, config.probe_seed)
        teacher = Teacher.compute(pipe, probes, config.steps, config.guidance)
        teacher.save(run.teacher_file)
    return pipe, library, teacher


def load_context(run_path: str, device: str | None = None) -> RunContext:
    """A worker's context: the library and teacher must already be in the run directory."""
    run = RunDir.open(run_path)
    config = run.config()
    pipe = load_pipeline(config.model, device=device)
    library = PruningLibrary.load(run.library_dir)
    teacher = Teacher.load(run.teacher_file)
    return _context(pipe, library, teacher, make_metric(config), config)


def local_context(run: RunDir, config: RunConfig, progress: bool = True) -> RunContext:
    """The driver's own evaluation context (local executor)."""
    pipe, library, teacher = prepare(run, config, progress)
    return _context(pipe, library, teacher, make_metric(config), config)


def _context(pipe: Any, library: PruningLibrary, teacher: Teacher, metric: Metric, config: RunConfig) -> RunContext:
    router = Router(pipe.denoiser, library)
    evaluator = Evaluator(pipe, router, teacher, metric, library.schedule, cache_mb=config.cache_mb)
    return RunContext(pipe, library, teacher, router, evaluator)
