"""Everything that scores genomes for a run, built from the run directory (locally or on a worker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffes.fitness import get_metric
from diffes.fitness.base import Metric
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.adapters import SamplingAdapter, adapter_for, calibration_runner
from diffes.models.loading import load_pipeline
from diffes.pruning.library import PruningLibrary, build_library
from diffes.routing.router import Router
from diffes.runs.config import RunConfig
from diffes.runs.rundir import RunDir

__all__ = ["RunContext", "prepare", "local_context", "load_context", "make_metric", "load_adapter", "run_conditions"]


@dataclass
class RunContext:
    adapter: SamplingAdapter
    library: PruningLibrary
    teacher: Teacher
    router: Router
    evaluator: Evaluator

    @property
    def pipe(self) -> Any:
        return self.adapter.pipe


def make_metric(config: RunConfig) -> Metric:
    fitness = config.fitness
    weights = fitness.lpips_weights if fitness.metric.startswith("lpips") else None
    if fitness.metric == "clip":
        weights = fitness.clip_weights
    return get_metric(fitness.metric, weights=weights)


def load_adapter(config: RunConfig, device: str | None = None) -> SamplingAdapter:
    """The run's pipeline (in its dtype, on ``device`` or the run's device) behind its family's adapter."""
    model = config.model
    pipe = load_pipeline(model.model, device=device or model.device, dtype=model.dtype)
    pipe.set_progress_bar_config(disable=True)
    return adapter_for(pipe, model.height, model.width)


def run_conditions(config: RunConfig, adapter: SamplingAdapter) -> list[Any]:
    return config.model.conditions(getattr(adapter, "num_classes", None))


def prepare(run: RunDir, config: RunConfig, progress: bool = True) -> tuple[SamplingAdapter, PruningLibrary, Teacher]:
    """Load or build (and save) the library and the teacher; a crash in between just redoes the missing part."""
    make_metric(config)  # fail on missing metric weights before any expensive work
    adapter = load_adapter(config)
    guidance, negative = config.fitness.guidance_config(), config.model.negative_prompt
    adapter.check_guidance(guidance)
    conditions = run_conditions(config, adapter)
    if not run.has_library():
        run_fn = calibration_runner(
            adapter, conditions, config.pruning.calibration_samples, config.search.seed, guidance, negative
        )
        build_library(adapter.pipe, config.pruning, run=run_fn, progress=progress).save(run.library_dir)
    library = PruningLibrary.load(run.library_dir)  # one source of truth, fresh or resumed
    if run.has_teacher():
        teacher = Teacher.load(run.teacher_file)
    else:
        probes = make_probes(adapter, conditions, config.fitness.probes, config.fitness.probe_seed, guidance, negative)
        teacher = Teacher.compute(adapter, probes, config.pruning.steps, guidance)
        teacher.save(run.teacher_file)
    return adapter, library, teacher


def load_context(run_path: str, device: str | None = None) -> RunContext:
    """A worker's context: the library and teacher (with the encoded conditions) must be in the run directory."""
    run = RunDir.open(run_path)
    config = run.config()
    adapter = load_adapter(config, device)
    library = PruningLibrary.load(run.library_dir)
    teacher = Teacher.load(run.teacher_file)
    return _context(adapter, library, teacher, make_metric(config), config)


def local_context(run: RunDir, config: RunConfig, progress: bool = True) -> RunContext:
    """The driver's own evaluation context (local executor)."""
    adapter, library, teacher = prepare(run, config, progress)
    return _context(adapter, library, teacher, make_metric(config), config)


def _context(
    adapter: SamplingAdapter, library: PruningLibrary, teacher: Teacher, metric: Metric, config: RunConfig
) -> RunContext:
    router = Router(adapter.denoiser, library)
    evaluator = Evaluator(
        adapter, router, teacher, metric, library.schedule, prefix_cache_mb=config.fitness.prefix_cache_mb
    )
    return RunContext(adapter, library, teacher, router, evaluator)
