"""Probe set and teacher cache: fixed conditions x fixed seeds, their encoded conditions, noise and dense images.

The driver encodes the conditions once (class labels, or prompts through the pipeline's text encoders) and
saves them here with the noise, so a worker needs neither a tokenizer nor a text encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffes.errors import ConfigError
from diffes.io import read_json, read_tensors, write_json, write_tensors
from diffes.models.adapters import Cond, Guidance, SamplingAdapter

__all__ = ["ProbeSet", "Teacher", "make_probes", "sample_dense", "step_generator"]


@dataclass(frozen=True)
class ProbeSet:
    """Sample ``i`` is ``conditions[i]`` (a class id or a prompt) from the noise ``latents[i]``, drawn from ``seed``.

    ``cond`` holds the encoded conditions, row ``i`` for sample ``i``.
    """

    conditions: tuple[Any, ...]
    cond: Cond
    latents: torch.Tensor
    seed: int
    negative_prompt: str | None = None

    def __len__(self) -> int:
        return len(self.conditions)


def make_probes(
    adapter: SamplingAdapter,
    conditions: Sequence[Any],
    per_condition: int,
    seed: int,
    guidance: Guidance,
    negative_prompt: str | None = None,
) -> ProbeSet:
    """``per_condition`` probes for each condition (conditions inner, so any prefix covers them all)."""
    if per_condition < 1:
        raise ConfigError("probes", per_condition, "use at least 1 probe per condition")
    unique = list(dict.fromkeys(conditions))
    encoded = adapter.encode(unique, guidance, negative_prompt)  # each distinct condition once
    rows = torch.tensor([unique.index(c) for _ in range(per_condition) for c in conditions])
    cond = {k: v.index_select(0, rows) for k, v in encoded.items()}
    probes = tuple(c for _ in range(per_condition) for c in conditions)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = adapter.initial_latents(len(probes), generator).cpu()
    return ProbeSet(probes, cond, latents, seed, negative_prompt)


def step_generator(probes: ProbeSet) -> torch.Generator:
    """The generator of stochastic schedulers' step noise along a probe trajectory (seeded apart from the noise)."""
    return torch.Generator("cpu").manual_seed(probes.seed + 1)


@torch.no_grad()
def sample_dense(
    adapter: SamplingAdapter, probes: ProbeSet, steps: int, guidance: Guidance, scheduler: Any = None
) -> torch.Tensor:
    """The dense model's images in [0, 1] for the probes, on a copy of ``scheduler`` (default: the pipeline's)."""
    from diffes.models.steps import clone_scheduler

    scheduler = clone_scheduler(adapter.pipe.scheduler if scheduler is None else scheduler)
    latents = adapter.sample(probes.cond, probes.latents, steps, guidance, step_generator(probes), scheduler)
    return adapter.decode(latents)


@dataclass(frozen=True)
class Teacher:
    """The dense model's outputs for a probe set, computed once per run and stored beside it."""

    probes: ProbeSet
    images: torch.Tensor
    steps: int
    guidance: Guidance

    @classmethod
    def compute(cls, adapter: SamplingAdapter, probes: ProbeSet, steps: int, guidance: Guidance) -> Teacher:
        return cls(probes, sample_dense(adapter, probes, steps, guidance), steps, guidance)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        tensors = {"latents": self.probes.latents, "images": self.images}
        tensors |= {f"cond/{k}": v for k, v in self.probes.cond.items()}
        write_tensors(path, tensors)
        g = self.guidance
        meta = {
            "seed": self.probes.seed,
            "steps": self.steps,
            "guidance": {"kind": g.kind, "scale": g.scale, "rescale": g.rescale},
            "conditions": list(self.probes.conditions),
            "negative_prompt": self.probes.negative_prompt,
        }
        write_json(path.with_suffix(".json"), meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Teacher:
        from diffes.fitness.teacher_schema import FIX, TeacherMeta, check_teacher_tensors

        path = Path(path)
        meta = read_json(path.with_suffix(".json"), TeacherMeta, FIX)
        t = read_tensors(path)
        check_teacher_tensors(path, t, len(meta["conditions"]))
        cond = {k[len("cond/") :]: v for k, v in t.items() if k.startswith("cond/")}
        guidance = Guidance(**meta["guidance"])
        conditions = tuple(meta["conditions"])
        probes = ProbeSet(conditions, cond, t["latents"], meta["seed"], meta.get("negative_prompt"))
        return cls(probes, t["images"], meta["steps"], guidance)
