"""Building a PruningLibrary: calibrate on the dense trajectory, count each level's cost and, for a library
written to a folder, solve every compensated plan once, stage by stage, in this process or on Ray workers.

In memory (``folder=None``, for small models and tests) the library keeps its Grams and solves a plan when it is
first asked for. Into a folder (what ``diffes prune`` and a run do) the build holds one stage's Grams at a time:
calibration spills each finished stage's Grams to disk, then each stage's plans are solved from its spilled
Grams and the dense consumer weights, read one tensor at a time, and written one plan per file (``store.py``).
The solves are independent per stage and take most of a real-size build (a Cholesky solve per consumer and
level), so that is the part a ``RaySolver`` spreads over a cluster; a worker that dies costs the stage it was
solving, which Ray runs again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from diffes.errors import ConfigError
from diffes.io import atomic_dir, write_tensors
from diffes.memory import release_freed_memory
from diffes.models.steps import find_denoiser
from diffes.pruning.calibration import Call, calibrate, run_call
from diffes.pruning.config import PruningConfig
from diffes.pruning.cost import count_macs, count_params, on_one_sample
from diffes.pruning.library import BUILDING, PLANS, LevelCost, PruningLibrary
from diffes.pruning.plan import ModelShapes, prune_copy
from diffes.pruning.store import GramSpill, PlanStore, TensorFile
from diffes.stages import StageSchedule

__all__ = ["build_library", "level_costs", "zoo_runner", "solve_stage", "LocalSolver", "RaySolver", "Solver"]

SPILL = "calibration"  # a build's spilled Grams and dense consumer weights, removed once the plans are solved
CONSUMERS = "consumers.safetensors"


def zoo_runner(config: PruningConfig, guidance_scale: float = 2.0) -> Callable[[Any, int], Any]:
    """The default calibration run for class-conditional pipelines: every class in turn, seeded noise, the
    configured guidance (text-to-image pipelines need prompts: pass ``run``)."""
    from diffes.models.adapters import Guidance, adapter_for, calibration_runner

    def run(pipe: Any, steps: int) -> Any:
        adapter = adapter_for(pipe)
        if adapter.conditioning != "classes":
            raise ConfigError("run", None, f"{type(pipe).__name__} needs prompts: pass a calibration run")
        classes = list(range(adapter.num_classes))  # type: ignore[attr-defined]
        guidance = Guidance("cfg", guidance_scale)
        return calibration_runner(adapter, classes, config.calibration_samples, config.seed, guidance)(pipe, steps)

    return run


class Solver(Protocol):
    """Solves the plans of ``stages`` of the partial library in ``folder`` (``solve_stage`` per stage)."""

    def __call__(self, folder: Path, stages: list[int], progress: bool) -> None: ...


def build_library(
    pipe: Any,
    config: PruningConfig,
    run: Callable[[Any, int], Any] | None = None,
    progress: bool = True,
    folder: str | os.PathLike[str] | None = None,
    solver: Solver | None = None,
    replace: bool = False,
) -> PruningLibrary:
    """Calibrate on the dense trajectory of ``pipe`` and score every unit for every stage (streamed: no call's
    inputs are kept but the first). A float16 / bfloat16 model is scored, and its Grams accumulated, in float32
    or wider; compensated plans are solved in float64 and cast once to the model's dtype.

    With ``folder``, the library is built there (atomically: a killed build leaves nothing; ``replace`` swaps
    out what is there) with every plan solved by ``solver`` (default: in this process), and returned as read
    back from it."""
    if folder is None:
        return _calibrated(pipe, config, run, progress, None)
    with atomic_dir(folder, replace=replace) as tmp:
        spill = GramSpill(tmp / SPILL) if config.compensate else None
        library = _calibrated(pipe, config, run, progress, spill)
        if spill is not None:
            write_tensors(spill.folder / CONSUMERS, library.consumers)
            library.consumers = {}
            library.store = PlanStore(tmp / PLANS)
            library.save(tmp, complete=False)
            (solver or LocalSolver())(tmp, list(range(library.num_stages)), progress)
            shutil.rmtree(spill.folder)
            (tmp / BUILDING).unlink()
        library.save(tmp)
    return PruningLibrary.load(folder)


def _calibrated(
    pipe: Any, config: PruningConfig, run: Callable[[Any, int], Any] | None, progress: bool, spill: GramSpill | None
) -> PruningLibrary:
    schedule = StageSchedule.uniform(config.steps, config.stages)
    _, model = find_denoiser(pipe)
    calib = calibrate(pipe, schedule, run or zoo_runner(config), config, progress, spill.write if spill else None)
    structure, example = calib.structure, calib.example
    consumers = {}
    # a spilled build writes the model's own tensors to disk at once: no copy; one kept in memory is a clone
    own = (lambda t: t.detach().cpu()) if spill else (lambda t: t.detach().clone().cpu())
    for name in sorted({g.consumer for g in structure.groups}):
        module: Any = model.get_submodule(name)
        consumers[f"{name}.weight"] = own(module.weight)
        if getattr(module, "bias", None) is not None:
            consumers[f"{name}.bias"] = own(module.bias)
    shapes = ModelShapes.of(model, structure)
    library = PruningLibrary(config, structure, schedule, shapes, calib.scores, calib.depth, calib.grams, consumers)
    library.costs = level_costs(model, library, example)
    if config.latency:
        library.measure_latency(model, lambda m: run_call(m, example))
    return library


def solve_stage(folder: str, stage: int, threads: int | None = None) -> int:
    """Solve and write every compensated plan of ``stage`` of the partial library in ``folder``; returns the
    bytes written. One consumer's Gram is read at a time; a plan already written (by an attempt that died
    after it) is kept. ``threads`` pins torch's CPU threads, so that builds on any workers agree bit for bit."""
    root = Path(folder)
    library = PruningLibrary.load(root, complete=False)
    assert library.store is not None
    grams = GramSpill(root / SPILL).file(stage)
    dense = TensorFile(root / SPILL / CONSUMERS)
    present = set(dense.keys())

    def gram(name: str) -> torch.Tensor:
        # the previous consumer's solve freed a few n x n float64 matrices that glibc would keep (0.4 GB over
        # four stages at 4 DiT-XL/2 blocks); only here, in a build: a trim in a large process takes milliseconds
        release_freed_memory()
        return grams.get([name])[name]

    weight = lambda key: dense.get([key])[key] if key in present else None  # noqa: E731
    before, written = torch.get_num_threads(), 0
    if threads:
        torch.set_num_threads(threads)
    try:
        for level in range(1, library.num_levels):
            if library.store.has(stage, level):
                continue
            plan = library.shape_plan(level, stage)
            replacements = library.refit(plan, gram, weight)
            library.store.write(stage, level, replacements)
            written += sum(t.numel() * t.element_size() for t in replacements.values())
    finally:
        torch.set_num_threads(before)
    return written


@dataclass(frozen=True)
class LocalSolver:
    """Every stage in this process, in turn."""

    threads: int | None = None

    def __call__(self, folder: Path, stages: list[int], progress: bool) -> None:
        for stage in tqdm(stages, desc="solving plans", unit="stage", disable=not progress):
            solve_stage(str(folder), stage, self.threads)


@dataclass(frozen=True)
class RaySolver:
    """One Ray task per stage on the connected cluster (``connect_ray`` first); the folder must be on a file
    system every node sees, as a run directory is. A task whose worker dies is run again by Ray, up to
    ``max_retries`` times; ``task`` is what each runs (``solve_stage``)."""

    threads: int = 1
    max_retries: int = 3
    task: Callable[[str, int, int | None], int] = solve_stage

    def __call__(self, folder: Path, stages: list[int], progress: bool) -> None:
        import ray

        remote = ray.remote(num_cpus=self.threads, max_retries=self.max_retries, retry_exceptions=False)(self.task)
        pending = [remote.remote(str(folder), stage, self.threads) for stage in stages]
        with tqdm(total=len(stages), desc="solving plans on Ray", unit="stage", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)  # a task that failed for good raises here
                bar.update(len(done))


def level_costs(model: nn.Module, library: PruningLibrary, example: Call) -> list[LevelCost]:
    """MACs and parameters of each level, counted on the torch-pruning-pruned copy (one sample, one call).

    The copies are made of a meta-device copy of the model, so counting costs no memory (at DiT-XL/2 scale a
    real copy per level was most of a build's peak); a model whose forward needs real values (one that reads
    a tensor's data) is counted on real copies instead, with the same result."""
    return on_one_sample(model, example, lambda m, call: _count_levels(m, library, call))


def _count_levels(model: nn.Module, library: PruningLibrary, call: Call) -> list[LevelCost]:
    costs = []
    for level, fraction in enumerate(library.config.levels):
        plan = library.shape_plan(level)
        pruned = prune_copy(model, library.structure, plan) if not plan.is_dense else model
        costs.append(LevelCost(float(fraction), count_macs(pruned, lambda m: run_call(m, call)), count_params(pruned)))
    return costs
