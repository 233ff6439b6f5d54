"""What a library will need before it is built: disk, a search worker's memory and the build's peak, from the
denoiser's shapes and its traced structure (no weights needed: a meta-device model gives the same numbers).

The formulas, with D the dense parameter bytes, G one stage's consumer Grams (a consumer reading n input
columns, n = in_features x kernel area, has an (n + 1)^2 Gram with the bias column, kept as a float64 blocked
upper triangle: ``gram.py``), F the largest consumer's Gram as a full float64 matrix, S stages and R_l the
replacement bytes of one plan at level l (each consumer refit to its kept input columns):

- library on disk (compensated): S x sum over levels l >= 1 of R_l, plus the unit scores;
- build, disk: the library plus S x G of Grams spilled until every stage is solved;
- build, driver memory: D (the model) + the larger of G (one stage's Gram sums, while calibrating; plus the
  activations of one call) and 3 F + R_1 (while solving: a Gram mapped from disk, unpacked, its kept rows,
  and the plan being solved);
- search worker, beyond the dense model: the gather buffers of the tensors a plan slices (gather routing:
  a non-nested library; nested ones route by views) + the routing tables kept, at least the active plan's
  R_1, at most ``plan_cache_mb`` (or every plan, where they all fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffes.pruning.calibration import Call, run_call
from diffes.pruning.config import PruningConfig
from diffes.pruning.cost import on_one_sample
from diffes.pruning.gram import packed_numel
from diffes.pruning.graph import PrunableStructure, trace_structure
from diffes.pruning.plan import ModelShapes, kept_channels, make_plan

__all__ = ["LibraryEstimate", "estimate_library", "structure_of", "build_disk_bound"]

GB = 2**30


@dataclass(frozen=True)
class LibraryEstimate:
    dense_bytes: int
    grams_stage_bytes: int  # one stage's consumer Grams, packed float64
    plan_bytes: tuple[int, ...]  # per level, one plan's replacement tensors (0 at dense, and without compensation)
    library_disk_bytes: int
    build_disk_bytes: int  # the library plus the spilled Grams, at the build's end
    driver_bytes: int  # the build's peak, less one calibration call's activations
    worker_bytes: int  # a search worker's library memory beyond the dense model

    def lines(self) -> list[str]:
        gb = lambda n: f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 2**20:.1f} MB"  # noqa: E731
        ratio = lambda n: f"{n / self.dense_bytes:.2f}x the dense parameters" if self.dense_bytes else ""  # noqa: E731
        return [
            f"dense denoiser:            {gb(self.dense_bytes)}",
            f"library on disk:           {gb(self.library_disk_bytes)}",
            f"disk during the build:     {gb(self.build_disk_bytes)} (Grams spilled until the plans are solved)",
            f"driver during the build:   {gb(self.driver_bytes)} ({ratio(self.driver_bytes)}), "
            f"plus one calibration call's activations",
            f"per search worker:         {gb(self.worker_bytes)} beyond the dense model ({ratio(self.worker_bytes)})",
        ]


def estimate_library(
    model: nn.Module, structure: PrunableStructure, config: PruningConfig, itemsize: int | None = None
) -> LibraryEstimate:
    """The estimate for building ``config``'s library of ``model`` (``itemsize``: bytes per parameter element of
    the dtype the run uses; default the model's)."""
    params = list(model.parameters())
    size = itemsize or (params[0].element_size() if params else 4)
    dense = sum(p.numel() for p in params) * size
    shapes = ModelShapes.of(model, structure)
    consumers = sorted(structure.consumers())
    columns = {c: _weight(model, c)[0].numel() for c in consumers}
    grams = sum(packed_numel(n + 1) for n in columns.values()) * 8 if config.compensate else 0
    largest = max((n + 1) ** 2 for n in columns.values()) * 8 if config.compensate and columns else 0
    plans = tuple(_plan_bytes(model, shapes, structure, config, level, size) for level in range(len(config.levels)))
    scores = sum(g.num_units for g in structure.groups) * 4 * config.stages
    disk = config.stages * sum(plans) + scores
    sliced = _gathered_bytes(model, shapes, structure, config, size) if not config.nested else 0
    every = config.stages * sum(plans)
    tables = max(max(plans), min(every, int(config.plan_cache_mb * 2**20))) if config.compensate else 0
    return LibraryEstimate(
        dense_bytes=dense,
        grams_stage_bytes=grams,
        plan_bytes=plans,
        library_disk_bytes=disk,
        build_disk_bytes=disk + config.stages * grams,
        driver_bytes=dense + max(grams, 3 * largest + (plans[1] if len(plans) > 1 else 0)),
        worker_bytes=sliced + tables,
    )


def _plan_bytes(
    model: nn.Module, shapes: ModelShapes, structure: PrunableStructure, config: PruningConfig, level: int, size: int
) -> int:
    """One plan's replacement bytes: each consumer's weight (out x kept columns) and bias."""
    if not config.compensate or level == 0 or config.axis == "depth":
        return 0
    plan = make_plan(shapes, structure, 0, level, _first_units(structure, config, level))
    total = 0
    for consumer, kept in kept_channels(shapes, structure, plan.kept_units).items():
        weight = _weight(model, consumer)
        per_channel = weight[0].numel() // weight.shape[1]
        bias = getattr(model.get_submodule(consumer), "bias", None)
        total += (weight.shape[0] * len(kept) * per_channel + (bias.numel() if bias is not None else 0)) * size
    return total


def _gathered_bytes(
    model: nn.Module, shapes: ModelShapes, structure: PrunableStructure, config: PruningConfig, size: int
) -> int:
    """Gather routing's buffers: one dense-sized buffer per tensor a plan slices and does not replace."""
    if config.axis == "depth" or len(config.levels) < 2:
        return 0
    plan = make_plan(shapes, structure, 0, 1, _first_units(structure, config, 1))
    replaced = {f"{c}.{p}" for c in structure.consumers() for p in ("weight", "bias")} if config.compensate else set()
    return sum(model.get_parameter(k).numel() * size for k in plan.slices if k not in replaced)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_parameter(f"{name}.weight")


def _first_units(structure: PrunableStructure, config: PruningConfig, level: int) -> dict[str, list[int]]:
    """Some units of each group, as many as ``level`` keeps: sizes depend on how many, not on which."""
    grid = config.grid
    return {g.name: list(range(g.num_units - grid.pruned_units(level, g.num_units))) for g in structure.groups}


def structure_of(model: nn.Module, call: Call, config: PruningConfig) -> PrunableStructure:
    """The structure a build would trace, traced on a meta-device copy (no memory, no compute); a model whose
    forward needs real values is traced for real, on one sample."""
    depth = config.axis == "depth"
    return on_one_sample(model, call, lambda m, c: trace_structure(m, lambda x: run_call(x, c), depth=depth)[0])


def build_disk_bound(model: nn.Module, config: PruningConfig) -> int:
    """An upper bound of ``build_disk_bytes`` without tracing: every Linear and Conv2d taken as a consumer
    refit whole at every level (what a run checks first; the traced estimate only when the bound is tight)."""
    if not config.compensate:
        return 0
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    grams = sum(packed_numel(m.weight[0].numel() + 1) for m in layers) * 8
    size = next(model.parameters()).element_size()
    weights = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in layers) * size
    return config.stages * (grams + (len(config.levels) - 1) * weights)
