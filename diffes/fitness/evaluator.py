"""Evaluator: scores genomes by sampling the probes through the routed shared model.

Genomes are walked as a trie of stage prefixes: the latent at every stage boundary is cached (LRU,
bounded in MB, kept across generations), so each distinct prefix is denoised once and a mutant of
an elite only recomputes from the first stage where it differs. Complete genomes are memoized.
The arithmetic per step does not depend on what was cached, so scores equal naive evaluation bit
for bit.

A joint genome (``diffes.search.joint``) also chooses the step count and, per stage, how often to compute;
its trajectories are keyed by step count, and cached steps run through the same cache runtime (and rule)
that serves the exported pipeline. A stage boundary keeps a snapshot of the cache with the latents (it runs on
across dense stages), so prefix sharing stays exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffes.caching.rules import REUSE, StageIntervalRule
from diffes.caching.runtime import CacheHandle, CacheState, Serve, attach_cache
from diffes.fitness.base import Metric
from diffes.fitness.teacher import Teacher, step_generator
from diffes.models.adapters import SamplingAdapter
from diffes.models.steps import ManualSteps, clone_scheduler
from diffes.routing.router import Router
from diffes.search.joint import JointBudget
from diffes.stages import StageSchedule, stage_of_timestep

__all__ = ["Evaluator", "EvaluatorStats"]

Genome = tuple[int, ...]
Plan = tuple[tuple[int, int], ...]  # per stage: (pruning level, compute every n-th step)


@dataclass
class EvaluatorStats:
    genomes: int = 0  # genomes scored (memo misses)
    memo_hits: int = 0
    denoiser_calls: int = 0  # guided calls count once: one batched forward
    prefix_hits: int = 0
    switches: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _State:
    """Where a trajectory is at a stage boundary: latents, the scheduler (multistep schedulers keep history) and
    the generator of stochastic schedulers' step noise."""

    latents: torch.Tensor
    scheduler: Any
    generator: torch.Generator
    cache: CacheState | None = None  # a joint genome's step cache, which runs on across dense stages

    def nbytes(self) -> int:
        tensors = [self.latents, *_tensors(vars(self.scheduler))]
        cached = sum(b.nbytes() for b in self.cache.branches) if self.cache is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + self.generator.get_state().numel() + cached

    def copy(self) -> _State:
        generator = torch.Generator(self.generator.device)
        generator.set_state(self.generator.get_state())
        return _State(self.latents, clone_scheduler(self.scheduler), generator, self.cache)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside a scheduler's state (its sigmas, timesteps, stored model outputs)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


@dataclass(frozen=True)
class _Track:
    timesteps: torch.Tensor
    ranges: list[range]  # per stage, its steps
    root: _State


@dataclass
class Evaluator:
    """``evaluate(genomes) -> distances`` for a pipeline (through its sampling adapter) whose denoiser ``router``
    routes."""

    adapter: SamplingAdapter
    router: Router
    teacher: Teacher
    metric: Metric
    stages: StageSchedule
    prefix_cache_mb: float = 256.0
    share_prefixes: bool = True
    on_scored: Callable[[], None] | None = None  # progress: called after each genome is scored
    joint: JointBudget | None = None  # the joint space; None: a genome is one level per stage
    cache_serve: Serve = REUSE  # how a joint genome's skipped steps are served
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)
    _memo: dict[Genome, float] = field(default_factory=dict)
    _cache: OrderedDict[tuple[int, Plan], _State] = field(default_factory=OrderedDict)
    _cache_bytes: int = 0

    def __post_init__(self) -> None:
        self._prepared = self.adapter.prepare(self.teacher.probes.cond, self.teacher.guidance)
        self._tracks: dict[int, _Track] = {}
        own = self._track(self.stages.num_steps)
        self._edges = tuple(self.stages.timestep_boundaries([float(t) for t in own.timesteps]))
        self._steps = ManualSteps()

    def _track(self, num_steps: int) -> _Track:
        """The timesteps, per-stage steps and starting state of trajectories of ``num_steps`` steps."""
        if num_steps not in self._tracks:
            probes = self.teacher.probes
            scheduler = clone_scheduler(self.adapter.pipe.scheduler)
            self.adapter.set_timesteps(scheduler, num_steps)
            self.adapter.begin(scheduler)
            timesteps = scheduler.timesteps.clone()
            if len(timesteps) != num_steps:
                raise ValueError(f"scheduler gives {len(timesteps)} timesteps for {num_steps} steps")
            if num_steps == self.stages.num_steps:
                ranges = [self.stages.steps_of(s) for s in range(self.stages.num_stages)]
            else:  # the stages are fixed in timestep units: other step counts fall into them by timestep
                stage = [stage_of_timestep(float(t), self._edges) for t in timesteps]
                ranges = [
                    range(stage.index(s), len(stage) - stage[::-1].index(s)) if s in stage else range(0)
                    for s in range(self.stages.num_stages)
                ]
            root = _State(probes.latents.to(self.adapter.device), scheduler, step_generator(probes))
            self._tracks[num_steps] = _Track(timesteps, ranges, root)
        return self._tracks[num_steps]

    def __call__(self, genomes: list[Genome]) -> list[float]:
        return self.evaluate(genomes)

    def evaluate(self, genomes: Sequence[Sequence[int]]) -> list[float]:
        wanted = [tuple(int(x) for x in g) for g in genomes]
        todo = sorted({g for g in wanted if g not in self._memo})
        self.stats.memo_hits += len(wanted) - len(todo)
        for genome in todo:  # sorted, so neighbours share prefixes and plans
            self._memo[genome] = self._score(genome)
            self.stats.genomes += 1
            if self.on_scored is not None:
                self.on_scored()
        return [self._memo[g] for g in wanted]

    def distances(self, genome: Sequence[int]) -> torch.Tensor:
        """Per-probe distances of one genome (not memoized; for reports and held-out checks)."""
        return self.metric(self.sample(genome), self.teacher.images)

    def sample(self, genome: Sequence[int]) -> torch.Tensor:
        """Final images in [0, 1] of the probes under ``genome``."""
        g = tuple(int(x) for x in genome)
        state = self._state_after(g, self.stages.num_stages)
        return self.adapter.decode(state.latents)

    def _score(self, genome: Genome) -> float:
        return float(self.metric(self.sample(genome), self.teacher.images).mean())

    def _plan(self, genome: Genome) -> tuple[int, Plan]:
        if self.joint is None:
            return self.stages.num_steps, tuple((level, 1) for level in genome)
        j = self.joint.decode(genome)
        return j.steps, tuple(zip(j.levels, j.every))

    def _state_after(self, genome: Genome, depth: int) -> _State:
        """The state after stages ``0..depth-1`` of ``genome``, from the longest cached prefix."""
        num_steps, plan = self._plan(genome)
        track = self._track(num_steps)
        start, state = 0, track.root
        if self.share_prefixes:
            for d in range(depth, 0, -1):
                hit = self._cache.get((num_steps, plan[:d]))
                if hit is not None:
                    self._cache.move_to_end((num_steps, plan[:d]))
                    start, state = d, hit
                    self.stats.prefix_hits += 1
                    break
        for stage in range(start, depth):
            state = self._run_stage(state, track, stage, plan)
            if self.share_prefixes and stage + 1 < len(plan):
                self._remember((num_steps, plan[: stage + 1]), state)
        return state

    @torch.no_grad()
    def _run_stage(self, state: _State, track: _Track, stage: int, plan: Plan) -> _State:
        steps = track.ranges[stage]
        if not steps:  # this step count puts no step in the stage
            return state
        level, _ = plan[stage]
        if self.router.current != (stage, level):
            self.stats.switches += 1
            if stage + 1 < len(plan):
                self.router.prefetch(stage + 1, plan[stage + 1][0])  # read while this stage's steps run
        self.router.set_level(stage, level)
        state = state.copy()  # a cached boundary state is shared by every genome with that prefix
        latents, guidance = state.latents, self.teacher.guidance
        # every joint stage runs with the cache attached (even at interval 1): the boundary state it leaves must
        # not depend on what later stages do, or shared prefixes would differ from naive runs
        cache = self._cache_stage(plan, state.cache) if self.joint is not None else None
        try:
            for step in steps:
                t = track.timesteps[step]
                self._steps.set(step, len(track.timesteps), float(t))
                latents = self.adapter.step(state.scheduler, latents, t, self._prepared, guidance, state.generator)
            computed = cache.summary.computed if cache is not None else len(steps)
            self.stats.denoiser_calls += computed
        finally:
            if cache is not None:
                cache.remove()
        snapshot = cache.hook.state.snapshot() if cache is not None else None
        return _State(latents, state.scheduler, state.generator, snapshot)

    def _cache_stage(self, plan: Plan, carried: CacheState | None) -> CacheHandle:
        """The stage's caching, by the rule and runtime the exported pipeline uses, attached for this stage only
        (leaving the shared denoiser as it was) and continuing from the cache the previous stage left; the runtime
        drops it there if the weights changed."""
        levels = tuple(level for level, _ in plan)
        every = tuple(e for _, e in plan)
        rule = StageIntervalRule(every, self._edges, self.cache_serve, StageIntervalRule.segments_of(levels))
        handle = attach_cache(self.adapter.denoiser, rule, self._steps, rule.segment_of)
        if carried is not None:
            handle.resume(carried)
        return handle

    def _remember(self, prefix: tuple[int, Plan], state: _State) -> None:
        old = self._cache.pop(prefix, None)
        self._cache_bytes += state.nbytes() - (old.nbytes() if old is not None else 0)
        self._cache[prefix] = state
        while self._cache and self._cache_bytes > self.prefix_cache_mb * 2**20:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.nbytes()

    def cached_prefixes(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget cached stage-boundary latents (memoized scores stay)."""
        self._cache.clear()
        self._cache_bytes = 0
