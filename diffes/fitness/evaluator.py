"""Evaluator: scores genomes by sampling the probes through the routed shared model.

Genomes are walked as a trie of stage prefixes: the latent at every stage boundary is cached (LRU,
bounded in MB, kept across generations), so each distinct prefix is denoised once and a mutant of
an elite only recomputes from the first stage where it differs. Complete genomes are memoized.
The arithmetic per step does not depend on what was cached, so scores equal naive evaluation bit
for bit.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffes.fitness.base import Metric
from diffes.fitness.teacher import Teacher
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
    latents: torch.Tensor
    scheduler: Any

    def nbytes(self) -> int:
        return self.latents.numel() * self.latents.element_size()


@dataclass
class Evaluator:
    """``evaluate(genomes) -> distances`` for a zoo pipeline whose denoiser ``router`` routes."""

    pipe: Any
    router: Router
    teacher: Teacher
    metric: Metric
    stages: StageSchedule
    cache_mb: float = 256.0
    share_prefixes: bool = True
    on_scored: Callable[[], None] | None = None  # progress: called after each genome is scored
    stats: EvaluatorStats = field(default_factory=EvaluatorStats)
    _memo: dict[Genome, float] = field(default_factory=dict)
    _cache: OrderedDict[Genome, _State] = field(default_factory=OrderedDict)
    _cache_bytes: int = 0

    def __post_init__(self) -> None:
        device = self.pipe.denoiser.device
        self._labels = self.teacher.probes.labels.to(device)
        self._x_t = self.teacher.probes.latents.to(device)
        self.pipe.scheduler.set_timesteps(self.stages.num_steps, device=device)
        self._timesteps = self.pipe.scheduler.timesteps.clone()
        if len(self._timesteps) != self.stages.num_steps:
            raise ValueError(f"scheduler gives {len(self._timesteps)} timesteps for {self.stages.num_steps} steps")
        self._root = _State(self._x_t, copy.deepcopy(self.pipe.scheduler))

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
        return self.pipe.postprocess(state.latents, "pt").cpu()

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
        scheduler = copy.deepcopy(state.scheduler)  # multistep schedulers keep history; never share it
        latents = state.latents
        guidance = self.teacher.guidance_scale
        for step in self.stages.steps_of(stage):
            t = self._timesteps[step]
            noise = self.pipe.predict_noise(latents, t, self._labels, guidance)
            latents = scheduler.step(noise, t, latents).prev_sample
            self.stats.denoiser_calls += 1
        return _State(latents, scheduler)

    def _remember(self, prefix: Genome, state: _State) -> None:
        old = self._cache.pop(prefix, None)
        self._cache_bytes += state.nbytes() - (old.nbytes() if old is not None else 0)
        self._cache[prefix] = state
        while self._cache and self._cache_bytes > self.cache_mb * 2**20:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.nbytes()

    def cached_prefixes(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget cached stage-boundary latents (memoized scores stay)."""
        self._cache.clear()
        self._cache_bytes = 0
