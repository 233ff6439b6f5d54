"""Sampling adapters: one small class per pipeline family, chosen by the pipeline's class name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffes.errors import UnsupportedModelError
from diffes.models.adapters.base import Cond, Conditioning, Guidance, GuidanceKind, SamplingAdapter
from diffes.models.adapters.classes import DiTAdapter, ZooAdapter
from diffes.models.adapters.flux import FluxAdapter
from diffes.models.adapters.text import (
    PixArtAdapter,
    SD3Adapter,
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
)

__all__ = [
    "ADAPTERS",
    "Cond",
    "Conditioning",
    "Guidance",
    "GuidanceKind",
    "SamplingAdapter",
    "adapter_for",
    "calibration_runner",
    "family_of",
]

# a new family is one new entry here
ADAPTERS: tuple[type[SamplingAdapter], ...] = (
    ZooAdapter,
    DiTAdapter,
    PixArtAdapter,
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    SD3Adapter,
    FluxAdapter,
)
_BY_CLASS = {name: cls for cls in ADAPTERS for name in cls.pipeline_classes}


def adapter_for(pipe: Any, height: int | None = None, width: int | None = None) -> SamplingAdapter:
    """The adapter of ``pipe``'s family; an unsupported pipeline class is a one-line error listing the others."""
    name = type(pipe).__name__
    cls = _BY_CLASS.get(name)
    if cls is None:
        raise UnsupportedModelError(f"pipeline={name}: not supported; diffes runs {', '.join(sorted(_BY_CLASS))}")
    return cls(pipe, height, width)


def family_of(class_name: str) -> type[SamplingAdapter] | None:
    """The adapter class for a pipeline class name (from ``model_index.json``), before anything is loaded."""
    return _BY_CLASS.get(class_name)


def calibration_runner(
    adapter: SamplingAdapter,
    conditions: list[Any],
    samples: int,
    seed: int,
    guidance: Guidance,
    negative_prompt: str | None = None,
) -> Callable[[Any, int], Any]:
    """A dense run of ``samples`` samples (the conditions in turn, seeded noise) on the pipeline's own scheduler,
    so that step hooks see it: what library calibration records."""

    def run(pipe: Any, steps: int) -> Any:
        picked = [conditions[i % len(conditions)] for i in range(samples)]
        cond = adapter.encode(picked, guidance, negative_prompt)
        generator = torch.Generator().manual_seed(seed)
        latents = adapter.initial_latents(samples, generator)
        return adapter.sample(cond, latents, steps, guidance, generator)

    return run
