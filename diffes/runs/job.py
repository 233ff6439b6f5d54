"""The search job: prepare the run, evolve generation by generation with a checkpoint after each, finish.

A run killed at any moment resumes from its last complete generation and ends exactly where an
uninterrupted run ends: the search state, the RNG states and the evaluator are all deterministic.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diffes.errors import CheckpointError, DiffesError
from diffes.pruning.library import PruningLibrary
from diffes.runs.config import RunConfig
from diffes.runs.context import (
    RunContext,
    load_adapter,
    local_context,
    make_budget,
    make_metric,
    prepare,
    sensitivity_seeds,
)
from diffes.runs.export import export_run
from diffes.runs.rng import capture_rng, restore_rng, seed_all
from diffes.runs.rundir import RunDir
from diffes.runs.samples import sample_schedules, save_side_by_side
from diffes.search import SearchState, best, init_search, make_toolbox, pareto_front, run_search
from diffes.search.executors import Executor, LocalExecutor, RayExecutor, connect_ray
from diffes.search.joint import AnyBudget, JointBudget

__all__ = ["SearchResult", "start_run", "run_new", "resume_run", "uniform_genome", "macs_fraction"]


@dataclass
class SearchResult:
    """A finished search: its run directory, the best schedule's summary and the export made at the end."""

    run: RunDir
    best: dict[str, Any]
    exported: Path | None

    def apply(self, pipe: Any) -> Any:
        """Route ``pipe`` (the searched pipeline, dense) by the best schedule; ``handle.remove()`` undoes it."""
        from diffes.models.adapters import adapter_for
        from diffes.routing import RoutingSchedule, apply

        config = self.run.config()
        library = PruningLibrary.load(self.run.library_dir)
        timesteps = adapter_for(pipe, config.model.height, config.model.width).timesteps(config.pruning.steps)
        schedule = RoutingSchedule.from_stages(library.schedule, timesteps, self.best["genome"])
        return apply(pipe, library, schedule)

    def export(self, out: str | os.PathLike[str]) -> Path:
        """A routed checkpoint of the best schedule in ``out`` (see ``diffes.routing.load_routed``)."""
        return export_run(self.run, out=out)


class GenerationBar:
    """A progress bar per generation: evaluations done, ETA, best fitness so far."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.label, self.best = enabled, "", float("nan")
        self._bar: Any = None

    def start(self, total: int) -> None:
        if self.enabled:
            self._bar = tqdm(total=total, desc=self.label, unit="eval", leave=True)
            if self.best == self.best:  # nothing to show before the first generation is scored
                self._bar.set_postfix(best=f"{self.best:.5f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def uniform_genome(budget: AnyBudget) -> tuple[int, ...]:
    """The same level in every stage: the densest one that fits the budget (for a joint search: at the step
    count that spends the most budget, without caching; the cheapest schedule when no such one fits)."""
    if isinstance(budget, JointBudget):
        return budget.named_genomes().get("pruning", budget.upper)
    n = budget.num_stages
    return next((lv,) * n for lv in range(budget.num_levels) if budget.feasible((lv,) * n))


def start_run(config: RunConfig, progress: bool = True) -> SearchResult:
    config = config.resolved()
    check_runtime(config)
    return run_new(RunDir.create(config), progress)


def check_runtime(config: RunConfig) -> None:
    """The checks that need torch, before the run directory exists: the device is there, it can run the dtype,
    and the metric's weights load."""
    from diffes.models.loading import pick_device, torch_dtype
    from diffes.runs.context import make_metric

    torch_dtype(config.model.dtype, pick_device(config.model.device))
    make_metric(config)


def run_new(run: RunDir, progress: bool = True) -> SearchResult:
    """Run a freshly created run directory; a mistake found while preparing leaves nothing behind."""
    try:
        return _run(run, run.config(), progress)
    except DiffesError:
        if not run.generations():  # a mistake found while preparing: leave nothing behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def resume_run(path: str, generations: int | None = None, progress: bool = True) -> SearchResult:
    run = RunDir.open(path)
    config = run.config()
    if generations is not None and generations != config.search.generations:
        config = config.with_generations(generations)
        from diffes.io import write_json

        write_json(run.config_file, config.to_dict())
    return _run(run, config, progress)


def _executor(run: RunDir, config: RunConfig, bar: GenerationBar) -> tuple[Executor, RunContext | None]:
    """The executor, and the driver's own evaluation context when it has one (the local executor)."""
    if config.execution.executor == "local":
        context = local_context(run, config, progress=bar.enabled)
        context.evaluator.on_scored = bar.advance
        return LocalExecutor(context.evaluator.evaluate, progress=_StartFinish(bar)), context
    connect_ray(config.execution.address)  # an unreachable cluster fails here, before any expensive work
    prepare(run, config, progress=bar.enabled)  # workers load these files; build them once, here
    from diffes.runs.worker import worker_evaluator

    # one torch thread per worker: a worker is one CPU slot (or drives one GPU)
    args = (str(run.path.resolve()), 1)
    executor = RayExecutor(
        worker_evaluator, args, config.execution.workers, config.execution.gpus_per_worker, progress=bar
    )
    return executor, None


class _StartFinish:
    """The local evaluator reports each genome itself; the executor only opens and closes the bar."""

    def __init__(self, bar: GenerationBar) -> None:
        self.bar = bar

    def start(self, total: int) -> None:
        self.bar.start(total)

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        self.bar.finish()


def _run(run: RunDir, config: RunConfig, progress: bool) -> SearchResult:
    seed_all(config.search.seed)
    bar = GenerationBar(progress)
    executor, context = _executor(run, config, bar)
    try:
        library = PruningLibrary.load(run.library_dir)
        budget = make_budget(run, config, library)
        toolbox = make_toolbox(config.search, budget, executor.map)
        if config.fitness.sensitivity_seeds:  # measured while preparing; the initial population repairs the seed
            toolbox.register("population", toolbox.population, seeds=sensitivity_seeds(run, library, budget))
        state = _initial_state(run, config, budget, toolbox, bar)

        def on_generation(done: SearchState) -> None:
            _checkpoint(run, done, executor)
            bar.label, bar.best = f"gen {done.generation + 1}/{config.search.generations}", best(done)[1]

        bar.label, bar.best = f"gen {state.generation + 1}/{config.search.generations}", best(state)[1]
        state = run_search(config.search, budget, toolbox, state, on_generation)
        summary = _summary(state, budget, library, toolbox)
        if context is not None:
            summary |= fewer_steps(run, config, budget.fraction, context)
    finally:
        executor.close()
    if context is None:  # Ray: the workers are gone; the driver loads the dense model once, as for samples.png
        summary |= fewer_steps(run, config, budget.fraction)
    run.write_best(summary)
    exported = export_run(run) if config.execution.export else None
    if exported is not None:
        summary["export"] = str(exported)
    summary["samples"] = str(write_samples(run, summary))
    run.write_best(summary)
    return SearchResult(run, summary, exported)


def fewer_steps(run: RunDir, config: RunConfig, fraction: float, context: RunContext | None = None) -> dict[str, Any]:
    """What the dense model scores, on the same probes and against the same teacher, with the most sampling steps
    that cost at most ``fraction`` of the teacher's dense run (``fewer_steps``), and the same on DPM-Solver++ where
    it applies (``fewer_steps_dpm_solver``): one trajectory of the probes each. ``context``: the driver's own model
    (local executor); without it the model is loaded here."""
    from diffes.fitness.baselines import equal_cost_baselines
    from diffes.fitness.teacher import Teacher

    if context is not None:
        adapter, teacher, metric = context.adapter, context.teacher, context.evaluator.metric
        return equal_cost_baselines(adapter, teacher, metric, teacher.steps, fraction, context.router)
    adapter, teacher = load_adapter(config), Teacher.load(run.teacher_file)
    return equal_cost_baselines(adapter, teacher, make_metric(config), teacher.steps, fraction)


def write_samples(run: RunDir, summary: dict[str, Any]) -> Path:
    """samples.png: dense | best schedule | uniform schedule at the same budget, same noise."""
    per_condition = 4
    genomes = {"dense": None, "best": summary["genome"], "uniform": summary["uniform"]["genome"]}
    images = sample_schedules(run, genomes, per_condition=per_condition)
    return save_side_by_side(images, run.path / "samples.png", rows=len(images["dense"]) // per_condition)


def _initial_state(run: RunDir, config: RunConfig, budget: AnyBudget, toolbox: Any, bar: GenerationBar) -> SearchState:
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        bar.label = f"gen 0/{config.search.generations}"
        state = init_search(config.search, budget, toolbox)
        _checkpoint(run, state)
        return state
    state = SearchState.from_json(checkpoint["search"])
    if state.budget != budget or state.config != replace(config.search, generations=state.config.generations):
        raise CheckpointError(f"{run.path}: the checkpoint does not match the run's config or library; start a new run")
    restore_rng(checkpoint["rng"])
    if state.config.generations != config.search.generations:
        state = replace(state, config=config.search)
    return state


def _checkpoint(run: RunDir, state: SearchState, executor: Any = None) -> None:
    restarts = getattr(executor, "restarts", 0)
    run.write_checkpoint(
        state.generation, {"search": state.to_json(), "rng": capture_rng(), "worker_restarts": restarts}
    )
    run.write_logbook(list(state.logbook))


def _summary(state: SearchState, budget: AnyBudget, library: PruningLibrary, toolbox: Any) -> dict[str, Any]:
    genome, distance, _ = best(state)
    uniform = uniform_genome(budget)
    known = state.cache.get(uniform)
    uniform_distance = known if known is not None else toolbox.map(toolbox.evaluate, [uniform])[0]

    def point(g: tuple[int, ...], d: float) -> dict[str, Any]:
        out: dict[str, Any] = {"genome": list(g), "distance": d, "cost": budget.cost(g)}
        return out | ({"joint": _choice(budget, g)} if isinstance(budget, JointBudget) else {})

    summary = {
        "generation": state.generation,
        "budget": budget.fraction,
        **point(genome, distance),
        "macs_fraction": macs_fraction(budget, library, genome),
        "uniform": point(uniform, uniform_distance),
        "hall_of_fame": [point(g, state.cache[g]) for g in state.hall_of_fame],
        "pareto": [point(g, d) for g, d, _ in pareto_front(state)] if state.config.algorithm == "nsga2" else [],
        "evaluations": len(state.cache),
    }
    if isinstance(budget, JointBudget):  # each method alone, at the most budget it can spend (seeded, so scored)
        pure = budget.named_genomes()
        summary["single_methods"] = {name: point(g, state.cache[g]) for name, g in pure.items() if g in state.cache}
    return summary


def _choice(budget: JointBudget, genome: tuple[int, ...]) -> dict[str, Any]:
    choice = budget.decode(genome)
    return {"steps": choice.steps, "every": list(choice.every), "levels": list(choice.levels)}


def macs_fraction(budget: AnyBudget, library: PruningLibrary, genome: tuple[int, ...]) -> float:
    """Denoiser MACs per image as a fraction of the dense run's (the reference's, in a joint search)."""
    if not isinstance(budget, JointBudget):
        return library.stage_cost(genome)
    levels = budget.decode(genome).levels
    computed = budget.computed_steps(genome)
    macs = sum(n * library.costs[lv].macs for n, lv in zip(computed, levels))
    return macs / (library.dense_macs * budget.reference_steps)
