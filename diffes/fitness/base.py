"""The metric contract and the image plumbing every metric shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Metric", "PairMetric", "FrozenNet", "check_images", "as_rgb", "upsample_min_side", "private_rng"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@runtime_checkable
class Metric(Protocol):
    """Scores student images against teacher images: one distance per probe, lower is better.

    Inputs are (N, C, H, W) batches in [0, 1] with C in {1, 3}, on any device. The result has shape (N,), is
    float32 and lives on the CPU.
    """

    name: str

    def __call__(self, student: Tensor, teacher: Tensor) -> Tensor: ...


class PairMetric(ABC):
    """Checks the pair once, runs without gradients and returns float32 on CPU; subclasses only compute."""

    name: str

    def __call__(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_images(student, "student")
        check_images(teacher, "teacher")
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
        # Pipelines may hand back half precision; every metric computes in float32.
        student = student.float()
        teacher = teacher.to(device=student.device, dtype=torch.float32)
        with torch.no_grad():
            distances = self.distance(student, teacher)
        return distances.reshape(student.shape[0]).to(device="cpu", dtype=torch.float32)

    @abstractmethod
    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Per-probe distances of two float32 batches of the same shape on the same device."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FrozenNet(Generic[ModuleT]):
    """A module in eval mode without gradients, moved to its inputs' device the first time it sees that device."""

    def __init__(self, module: ModuleT) -> None:
        self.module = module.eval().requires_grad_(False)
        first = next(module.parameters(), None)
        self._device = first.device if first is not None else torch.device("cpu")

    def on(self, device: torch.device) -> ModuleT:
        if device != self._device:
            self.module.to(device)
            self._device = device
        return self.module


def check_images(images: Tensor, what: str = "images") -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what} must be an (N, C, H, W) batch with C = 1 or 3, got shape {tuple(images.shape)}")


def as_rgb(images: Tensor) -> Tensor:
    """Gray batches repeated to three channels, for backbones trained on RGB."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def upsample_min_side(images: Tensor, side: int) -> Tensor:
    """Bilinear upsampling so the shorter side is at least ``side``; larger images pass unchanged."""
    h, w = images.shape[-2:]
    if min(h, w) >= side:
        return images
    scale = side / min(h, w)
    size = (round(h * scale), round(w * scale))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@contextmanager
def private_rng(seed: int) -> Iterator[None]:
    """Seed the CPU generator for a block, then restore the caller's state.

    torchvision and lpips initialize random layers from the global generator without a generator argument; this
    makes such a build reproducible (every worker gets the same net) without touching the caller's randomness.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
