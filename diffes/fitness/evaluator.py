"""Evaluator: scores genomes by sampling the probes through the routed shared model.

Genomes are walked as a trie of stage prefixes: the latent at every stage boundary is cached (LRU,
bounded in MB, kept across generations), so each distinct prefix is denoised once and a mutant of
an elite only recomputes from the first stage where it differs. Complete genomes are memoized.
The arithmetic per step does not depend on what was cached, so scores equal naive evaluation bit
for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffes.fitness.base import Metric
from diffes.fitness.teacher import Teacher, step_generator
from diffes.models.adapters import SamplingAdapter
from diffes.models.steps import clone_scheduler
from diffes.routing.router import Router
from diffes.stages import StageSchedule

__all__ = ["Evaluator", "EvaluatorStats"]

Genome = tuple[int, ...]


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

    def nbytes(self) -> int:
        tensors = [self.latents, *_tensors(vars(self.scheduler))]
        return sum(t.numel() * t.element_size() for t in tensors) + self.generator.get_state().numel()

    def copy(self) -> _State:
        generator = torch.Generator(self.generator.device)
        generator.set_state(self.generator.get_state())
        return _State(self.latents, clone_scheduler(self.scheduler), generator)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside a scheduler's state (its sigmas, timesteps, stored model outputs)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


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
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)
    _memo: dict[Genome, float] = field(default_factory=dict)
    _cache: OrderedDict[Genome, _State] = field(default_factory=OrderedDict)
    _cache_bytes: int = 0

    def __post_init__(self) -> None:
        probes = self.teacher.probes
        self._prepared = self.adapter.prepare(probes.cond, self.teacher.guidance)
        scheduler = clone_scheduler(self.adapter.pipe.scheduler)
        self.adapter.set_timesteps(scheduler, self.stages.num_steps)
        self.adapter.begin(scheduler)
        self._timesteps = scheduler.timesteps.clone()
        if len(self._timesteps) != self.stages.num_steps:
            raise ValueError(f"scheduler gives {len(self._timesteps)} timesteps for {self.stages.num_steps} steps")
        self._root = _State(probes.latents.to(self.adapter.device), scheduler, step_generator(probes))

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
        state = self._state_after(g, len(g))
        return self.adapter.decode(state.latents)

    def _score(self, genome: Genome) -> float:
        return float(self.metric(self.sample(genome), self.teacher.images).mean())

    def _state_after(self, genome: Genome, depth: int) -> _State:
        """The state after stages ``0..depth-1`` of ``genome``, from the longest cached prefix."""
        start, state = 0, self._root
        if self.share_prefixes:
            for d in range(depth, 0, -1):
                hit = self._cache.get(genome[:d])
                if hit is not None:
                    self._cache.move_to_end(genome[:d])
                    start, state = d, hit
                    self.stats.prefix_hits += 1
                    break
        for stage in range(start, depth):
            state = self._run_stage(state, stage, genome[stage])
            if self.share_prefixes and stage + 1 < len(genome):
                self._remember(genome[: stage + 1], state)
        return state

    @torch.no_grad()
    def _run_stage(self, state: _State, stage: int, level: int) -> _State:
        if self.router.current != (stage, level):
            self.stats.switches += 1
        self.router.set_level(stage, level)
        state = state.copy()  # a cached boundary state is shared by every genome with that prefix
        latents, guidance = state.latents, self.teacher.guidance
        for step in self.stages.steps_of(stage):
            t = self._timesteps[step]
            latents = self.adapter.step(state.scheduler, latents, t, self._prepared, guidance, state.generator)
            self.stats.denoiser_calls += 1
        return _State(latents, state.scheduler, state.generator)

    def _remember(self, prefix: Genome, state: _State) -> None:
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
