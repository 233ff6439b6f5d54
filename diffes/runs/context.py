"""Everything that scores genomes for a run, built from the run directory (locally or on a worker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from typing_extensions import TypedDict

from diffes.errors import CheckpointError, ConfigError
from diffes.fitness import get_metric
from diffes.fitness.base import Metric
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes, step_generator
from diffes.io import read_json, write_json
from diffes.models.adapters import SamplingAdapter, adapter_for, calibration_runner
from diffes.models.loading import load_pipeline
from diffes.pruning.build import LocalSolver, RaySolver, build_library
from diffes.pruning.estimate import build_disk_bound
from diffes.pruning.library import PruningLibrary
from diffes.routing.router import Router
from diffes.runs.config import RunConfig
from diffes.runs.dry_run import check_free_disk, estimate_for, free_disk
from diffes.runs.rundir import RunDir
from diffes.schema import reading
from diffes.search.genome import Budget, Genome
from diffes.search.joint import AnyBudget, JointBudget, parse_steps_grid
from diffes.search.operators import sensitivity_genome
from diffes.stages import stage_lengths

if TYPE_CHECKING:
    from diffes.caching.sensitivity import Sensitivity

__all__ = [
    "RunContext",
    "prepare",
    "local_context",
    "load_context",
    "make_metric",
    "load_adapter",
    "run_conditions",
    "make_budget",
    "plain_budget",
    "load_sensitivity",
    "sensitivity_seeds",
]

RAY_SOLVE_BYTES = 256 * 2**20  # plans below this much are solved on the driver (milliseconds to seconds)
JOINT_FILE = "joint.json"  # a joint search's step grid and how many of each count's steps fall in each stage
SENSITIVITY_FILE = "sensitivity.json"  # per step and block, the output change when the block is pruned or cached
SENSITIVITY_PROBES = 8  # the first probes (one per condition first) carry the measurement


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
    if config.fitness.sensitivity_seeds:
        _check_blocks(adapter)  # before the library is built: a UNet has no blocks to measure
    conditions = run_conditions(config, adapter)
    if not run.has_library():
        # the traced estimate only where the untraced bound says the disk or the Ray threshold might matter
        bound = build_disk_bound(adapter.denoiser, config.pruning)
        close = bound > min(free_disk(run.path), RAY_SOLVE_BYTES)
        needed = estimate_for(adapter, conditions, config) if close else None
        check_free_disk(run.path, needed.build_disk_bytes if needed else bound)
        run_fn = calibration_runner(
            adapter, conditions, config.pruning.calibration_samples, config.search.seed, guidance, negative
        )
        # solved on the run's Ray cluster (connected by then), unless the plans are so small that starting Ray
        # task workers (seconds each) would cost more than solving them here; a partial folder is replaced
        plans = needed.library_disk_bytes if needed else bound
        on_ray = config.execution.executor == "ray" and plans > RAY_SOLVE_BYTES
        solver = RaySolver() if on_ray else LocalSolver()
        # read back from the folder it was built in: the same library a resumed run loads
        library = build_library(adapter.pipe, config.pruning, run_fn, progress, run.library_dir, solver, replace=True)
    else:
        library = PruningLibrary.load(run.library_dir)
    if run.has_teacher():
        teacher = Teacher.load(run.teacher_file)
    else:
        probes = make_probes(adapter, conditions, config.fitness.probes, config.fitness.probe_seed, guidance, negative)
        teacher = Teacher.compute(adapter, probes, config.teacher_steps, guidance)
        teacher.save(run.teacher_file)
    if config.search.joint and not (run.path / JOINT_FILE).exists():
        _write_joint_space(run, config, adapter, library)
    if config.fitness.sensitivity_seeds and not (run.path / SENSITIVITY_FILE).exists():
        _write_sensitivity(run, config, adapter, teacher)
    return adapter, library, teacher


class _JointSpace(TypedDict):
    steps_grid: list[int]
    stage_lengths: list[list[int]]
    edges: list[float]


def _write_joint_space(run: RunDir, config: RunConfig, adapter: SamplingAdapter, library: PruningLibrary) -> None:
    """The step counts' stage lengths, from the pipeline's own timesteps, for the driver and workers alike."""
    grid = parse_steps_grid(config.search.steps_grid, config.fitness.reference_steps)
    edges = library.schedule.timestep_boundaries([float(t) for t in adapter.timesteps(config.pruning.steps)])
    lengths = [list(stage_lengths([float(t) for t in adapter.timesteps(n)], edges)) for n in grid]
    write_json(run.path / JOINT_FILE, {"steps_grid": list(grid), "stage_lengths": lengths, "edges": edges})


class _SensitivityJson(TypedDict):
    steps: int
    probes: int
    blocks: list[str]
    cached: list[list[float]]
    pruned: list[list[float]]


def _check_blocks(adapter: SamplingAdapter) -> None:
    from diffes.caching.blocks import transformer_blocks

    try:
        transformer_blocks(adapter.denoiser)
    except ConfigError:
        name = type(adapter.denoiser).__name__
        raise ConfigError("sensitivity_seeds", True, f"{name} has no transformer blocks to measure; drop it") from None


def _write_sensitivity(run: RunDir, config: RunConfig, adapter: SamplingAdapter, teacher: Teacher) -> None:
    """SODA-style sensitivity along the dense trajectory of the library's steps (its stages are the search's),
    from the first teacher probes' noise, conditions and step noise; measured once, reused on resume."""
    from diffes.caching.sensitivity import measure_sensitivity

    probes = teacher.probes
    n = min(len(probes), SENSITIVITY_PROBES)
    cond = {k: v[:n] for k, v in probes.cond.items()}
    steps, seed = config.pruning.steps, step_generator(probes).initial_seed()
    sensitivity = measure_sensitivity(adapter, cond, probes.latents[:n], steps, teacher.guidance, seed)
    write_json(run.path / SENSITIVITY_FILE, {"steps": steps, "probes": n, **sensitivity.to_dict()})


def load_sensitivity(run: RunDir) -> Sensitivity:
    from diffes.caching.sensitivity import Sensitivity

    path, fix = run.path / SENSITIVITY_FILE, "the file is corrupt; delete it and resume to measure it again"
    d = read_json(path, _SensitivityJson, fix)
    with reading(path, fix):  # ragged rows
        sensitivity = Sensitivity.from_dict(dict(d))
    shape = (d["steps"], len(d["blocks"]))
    if sensitivity.cached.shape != shape or sensitivity.pruned.shape != shape:
        raise CheckpointError(f"{path}: the tables are not steps x blocks {shape}; {fix}")
    return sensitivity


def sensitivity_seeds(run: RunDir, library: PruningLibrary, budget: AnyBudget) -> list[Genome]:
    """The initial population's seed from the run's measured sensitivity: levels per stage where pruning hurts
    least (``diffes.search.operators.sensitivity_genome``; the population repairs it into the budget)."""
    sensitivity = load_sensitivity(run)
    schedule = library.schedule
    if len(sensitivity.pruned) != schedule.num_steps:
        path = run.path / SENSITIVITY_FILE
        raise CheckpointError(f"{path}: measured on {len(sensitivity.pruned)} steps, not {schedule.num_steps}")
    per_stage = sensitivity.stage_sensitivity([schedule.steps_of(s) for s in range(schedule.num_stages)])
    return [sensitivity_genome(per_stage, budget)]


def plain_budget(config: RunConfig, library: PruningLibrary) -> Budget:
    """Mean relative cost per step of a one-level-per-stage schedule (a search without --joint)."""
    weights = [n / library.schedule.num_steps for n in library.schedule.stage_lengths()]
    costs = [library.stage_cost([lv] * library.num_stages, config.search.cost) for lv in range(library.num_levels)]
    return config.search.make_budget(weights, costs)


def make_budget(run: RunDir, config: RunConfig, library: PruningLibrary) -> AnyBudget:
    """The run's budget: mean relative cost per step, or for a joint search the cost relative to the reference."""
    if not config.search.joint:
        return plain_budget(config, library)
    costs = [library.stage_cost([lv] * library.num_stages, config.search.cost) for lv in range(library.num_levels)]
    space = read_json(run.path / JOINT_FILE, _JointSpace)
    search = config.search
    reference = config.fitness.reference_steps
    grid, lengths = tuple(space["steps_grid"]), tuple(tuple(r) for r in space["stage_lengths"])
    return JointBudget(grid, lengths, tuple(costs), search.cache_every, reference, search.budget)


def load_context(run_path: str, device: str | None = None) -> RunContext:
    """A worker's context: the library and teacher (with the encoded conditions) must be in the run directory."""
    run = RunDir.open(run_path)
    config = run.config()
    adapter = load_adapter(config, device)
    library = PruningLibrary.load(run.library_dir)
    teacher = Teacher.load(run.teacher_file)
    return _context(adapter, library, teacher, make_metric(config), config, make_budget(run, config, library))


def local_context(run: RunDir, config: RunConfig, progress: bool = True) -> RunContext:
    """The driver's own evaluation context (local executor)."""
    adapter, library, teacher = prepare(run, config, progress)
    return _context(adapter, library, teacher, make_metric(config), config, make_budget(run, config, library))


def _context(
    adapter: SamplingAdapter,
    library: PruningLibrary,
    teacher: Teacher,
    metric: Metric,
    config: RunConfig,
    budget: AnyBudget,
) -> RunContext:
    router = Router(adapter.denoiser, library, cache_mb=config.pruning.plan_cache_mb)
    joint = budget if isinstance(budget, JointBudget) else None
    from diffes.caching.rules import step_serve

    serve = step_serve(config.search.cache_serve)
    evaluator = Evaluator(
        adapter,
        router,
        teacher,
        metric,
        library.schedule,
        config.fitness.prefix_cache_mb,
        joint=joint,
        cache_serve=serve,
    )
    return RunContext(adapter, library, teacher, router, evaluator)
