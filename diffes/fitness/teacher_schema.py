"""What a saved teacher (``teacher.json`` + ``teacher.safetensors``) must hold to be loaded (diffes.schema)."""

from __future__ import annotations

import os
from typing import Annotated

import torch
from pydantic import Field, StrictInt, StrictStr
from typing_extensions import NotRequired, TypedDict

from diffes.errors import CheckpointError
from diffes.models.adapters.base import GuidanceKind
from diffes.schema import Positive

__all__ = ["TeacherMeta", "FIX", "check_teacher_tensors"]

FIX = "the teacher cache is corrupt; delete teacher.safetensors and teacher.json and resume to recompute it"


class GuidanceJson(TypedDict):
    kind: GuidanceKind
    scale: float
    rescale: float


class TeacherMeta(TypedDict):
    seed: Annotated[int, Field(ge=0, lt=2**64 - 1)]  # step noise is seeded with seed + 1
    steps: Positive
    guidance: GuidanceJson
    conditions: Annotated[list[StrictInt | StrictStr], Field(min_length=1)]
    negative_prompt: NotRequired[str | None]


def check_teacher_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], samples: int) -> None:
    """One row per probe in the noise, the images and every encoded condition; images are floats."""
    for key in ("latents", "images"):
        if key not in tensors:
            raise CheckpointError(f"{path}: {key}: tensor missing; {FIX}")
    for key, t in tensors.items():
        if t.dim() == 0 or t.shape[0] != samples:
            raise CheckpointError(f"{path}: {key}: {tuple(t.shape)} has no row per probe ({samples}); {FIX}")
    if not tensors["images"].is_floating_point() or tensors["images"].dim() != 4:
        raise CheckpointError(f"{path}: images: {tensors['images'].dtype} {tuple(tensors['images'].shape)}; {FIX}")
