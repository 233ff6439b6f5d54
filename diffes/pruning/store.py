"""A library's heavy data on disk, read lazily: what makes a library fit a worker at real sizes.

A compensated plan's replacement tensors (the refit consumer weights) are what a router needs of a plan beyond
the scores; the rest (kept indices, size overrides) is recomputed from the scores in microseconds. The build
solves every (stage, level) once and writes its replacements to a safetensors file of its own, so a worker
holds no calibration statistics and no plan it is not routing to: ``replacements(stage, level)`` gives the
plan's tensors memory-mapped (their pages count in the worker's RSS only while a router table holds them).

The calibration statistics are spilled the same way while the dense trajectory runs (``GramSpill``): each
finished stage's consumer Grams go to disk, so the build holds one stage's sums, never all of them, and each
stage's plans can be solved on its own, in any process (``solve_stage``), once every stage's scores exist.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from diffes.errors import CheckpointError
from diffes.io import write_tensors

__all__ = ["PlanStore", "GramSpill", "TensorFile"]


class TensorFile:
    """Lazy reads from one safetensors file: tensors come memory-mapped, and only the ones asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keys(self) -> list[str]:
        with self._open() as f:
            return list(f.keys())

    def get(self, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The tensors named (all of them by default)."""
        with self._open() as f:
            keys = f.keys() if keys is None else keys
            # safetensors maps the file: each tensor reads its pages when used and gives them back when freed
            return {k: f.get_tensor(k) for k in keys}

    def _open(self):  # type: ignore[no-untyped-def]
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: file is missing; the library is incomplete (delete it and rebuild)")
        try:
            return safe_open(str(self.path), framework="pt")
        except Exception as e:  # a truncated or foreign file
            reason = " ".join(str(e).split())[:120]
            fix = "rebuild the library"
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({reason}); {fix}") from None


@dataclass(frozen=True)
class PlanStore:
    """Per (stage, level) above dense, ``plan_SSS_LL.safetensors``: "module.param" -> replacement tensor. One file
    per plan, so the build writes (and a worker maps) one plan's tensors at a time."""

    folder: Path

    def path(self, stage: int, level: int) -> Path:
        return self.folder / f"plan_{stage:03d}_{level:02d}.safetensors"

    def has(self, stage: int, level: int) -> bool:
        return self.path(stage, level).is_file()

    def write(self, stage: int, level: int, replacements: dict[str, torch.Tensor]) -> None:
        write_tensors(self.path(stage, level), replacements)

    def replacements(self, stage: int, level: int) -> dict[str, torch.Tensor]:
        return TensorFile(self.path(stage, level)).get()

    def prefetch(self, stage: int, level: int) -> threading.Thread | None:
        """Read the plan's file into the OS page cache on a background thread while the current stage runs, so
        that mapping it at the switch reads no disk. The thread holds one chunk; none of the plan stays here.
        (``posix_fadvise(WILLNEED)`` would need no thread, but current kernels read only one readahead window
        of it: 2 MB of a 70 MB plan, measured.)"""
        path = self.path(stage, level)
        if not path.is_file():
            return None  # a missing plan is reported when it is routed to
        thread = threading.Thread(target=read_through, args=(path,), name="diffes-plan-prefetch", daemon=True)
        thread.start()
        return thread


def read_through(path: Path, chunk: int = 8 << 20) -> int:
    """Read ``path`` once, discarding the bytes (they stay in the page cache); the bytes read."""
    view, total = memoryview(bytearray(chunk)), 0
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    except OSError:  # removed or unreadable meanwhile: the switch reports it, if it still happens
        pass
    return total


@dataclass(frozen=True)
class GramSpill:
    """Consumer Grams of each finished calibration stage, one file per stage, until its plans are solved."""

    folder: Path

    def path(self, stage: int) -> Path:
        return self.folder / f"grams_{stage:03d}.safetensors"

    def write(self, stage: int, grams: dict[str, torch.Tensor]) -> None:
        write_tensors(self.path(stage), grams)

    def file(self, stage: int) -> TensorFile:
        return TensorFile(self.path(stage))
