"""Probe set and teacher cache: fixed classes x fixed seeds, their initial noise and the dense samples."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffes.errors import CheckpointError, ConfigError
from diffes.io import read_json, read_tensors, write_json, write_tensors

__all__ = ["ProbeSet", "Teacher", "make_probes", "sample_dense"]


@dataclass(frozen=True)
class ProbeSet:
    """``labels[i]`` sampled from ``latents[i]`` (the initial noise, drawn once from ``seed``)."""

    labels: torch.Tensor
    latents: torch.Tensor
    seed: int

    def __len__(self) -> int:
        return len(self.labels)


def make_probes(pipe: Any, per_class: int, seed: int, classes: list[int] | None = None) -> ProbeSet:
    """``per_class`` probes for each class (all classes of the zoo pipeline by default), noise from ``seed``."""
    if per_class < 1:
        raise ConfigError("probes", per_class, "use at least 1 probe per class")
    classes = list(range(pipe.num_classes)) if classes is None else classes
    labels = torch.tensor([c for _ in range(per_class) for c in classes])
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = pipe.prepare_latents(len(labels), generator).cpu()
    return ProbeSet(labels, latents, seed)


@torch.no_grad()
def sample_dense(pipe: Any, probes: ProbeSet, steps: int, guidance_scale: float) -> torch.Tensor:
    """The dense pipeline's images in [0, 1] for the probes (one batch)."""
    device = pipe.denoiser.device
    out = pipe(
        probes.labels.tolist(),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        latents=probes.latents.to(device),
        output_type="pt",
    )
    return out.images.cpu()


@dataclass(frozen=True)
class Teacher:
    """The dense model's outputs for a probe set, computed once per run and stored beside it."""

    probes: ProbeSet
    images: torch.Tensor
    steps: int
    guidance_scale: float

    @classmethod
    def compute(cls, pipe: Any, probes: ProbeSet, steps: int, guidance_scale: float) -> Teacher:
        return cls(probes, sample_dense(pipe, probes, steps, guidance_scale), steps, guidance_scale)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        meta = {"seed": str(self.probes.seed), "steps": str(self.steps), "guidance_scale": str(self.guidance_scale)}
        tensors = {"labels": self.probes.labels, "latents": self.probes.latents, "images": self.images}
        write_tensors(path, tensors, metadata=meta)
        write_json(
            path.with_suffix(".json"),
            {"seed": self.probes.seed, "steps": self.steps, "guidance_scale": self.guidance_scale},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Teacher:
        path = Path(path)
        meta = read_json(path.with_suffix(".json"))
        t = read_tensors(path)
        try:
            probes = ProbeSet(t["labels"], t["latents"], int(meta["seed"]))
            return cls(probes, t["images"], int(meta["steps"]), float(meta["guidance_scale"]))
        except KeyError as e:
            raise CheckpointError(f"{path}: entry {e} is missing; the teacher cache is corrupt") from None
