"""Sampling adapters: one small class per pipeline family, chosen by the pipeline's class name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from diffes.families import family_of
from diffes.models.adapters.base import Cond, Guidance, GuidanceKind, SamplingAdapter

__all__ = ["Cond", "Guidance", "GuidanceKind", "SamplingAdapter", "adapter_for", "calibration_runner"]


def adapter_for(pipe: Any, height: int | None = None, width: int | None = None) -> SamplingAdapter:
    """The adapter of ``pipe``'s family (``diffes.families``); an unsupported pipeline class is a one-line error
    listing the supported ones."""
    module, _, name = family_of(type(pipe).__name__).adapter.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(pipe, height, width)  # type: ignore[no-any-return]


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
