"""PruningLibrary: for every (stage, level) a PrunePlan and its cost, built once per model (``build.py``)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, with_config
from torch import nn
from typing_extensions import TypedDict

from diffes.errors import CheckpointError, ConfigError
from diffes.io import read_json, read_tensors, write_json, write_tensors
from diffes.pruning.compensation import compensate
from diffes.pruning.config import PruningConfig
from diffes.pruning.cost import measure_latency
from diffes.pruning.gram import packed_numel
from diffes.pruning.graph import PrunableStructure
from diffes.pruning.plan import ModelShapes, PrunePlan, kept_channels, make_plan, prune_copy
from diffes.pruning.store import PlanStore
from diffes.schema import RECORD, NonNegative, reading, validate
from diffes.stages import StageSchedule

__all__ = ["PruningConfig", "LevelCost", "PruningLibrary"]

PLANS = "plans"  # the folder of a store-backed library's solved plans
BUILDING = "building.json"  # library.json of a build whose plans are being solved
# 4: Grams as float64 blocked upper triangles (gram.py); 3: compensated plans solved at build time in plans/, no
# Grams in a built library (so a schema-3 library without grams.safetensors reads as 4); 2: no guidance_scale
SCHEMA = 4


@dataclass
class LevelCost:
    fraction: float
    macs: int
    params: int
    latency: float | None = None


@dataclass
class PruningLibrary:
    config: PruningConfig
    structure: PrunableStructure
    schedule: StageSchedule
    shapes: ModelShapes
    scores: list[dict[str, torch.Tensor]]  # per stage, per group: importance of each unit
    depth_scores: list[torch.Tensor]  # per stage: importance of each droppable block
    grams: list[dict[str, torch.Tensor]]  # per stage, per consumer (empty without compensation)
    consumers: dict[str, torch.Tensor]  # dense consumer weights and biases, for compensation
    costs: list[LevelCost] = field(default_factory=list)
    pinned: dict[tuple[int, int], PrunePlan] = field(default_factory=dict)  # exported plans, never evicted
    store: PlanStore | None = None  # compensated plans solved at build time, read from disk when routed to
    _cache: OrderedDict[tuple[int, int], PrunePlan] = field(default_factory=OrderedDict, repr=False)

    @property
    def num_stages(self) -> int:
        return self.schedule.num_stages

    @property
    def num_levels(self) -> int:
        return len(self.config.levels)

    @property
    def dense_macs(self) -> int:
        return self.costs[0].macs

    def unit_order(self, stage: int, group: str) -> torch.Tensor:
        """Units of ``group`` from most to least important, for ``stage`` (or for all stages if nested)."""
        if self.config.nested:
            score = sum(s[group] / s[group].sum().clamp_min(1e-30) for s in self.scores)
        else:
            score = self.scores[stage][group]
        return torch.argsort(torch.as_tensor(score), descending=True, stable=True)

    def kept_units(self, stage: int, level: int) -> dict[str, list[int]]:
        if self.config.axis == "depth":
            return {}
        grid, kept = self.config.grid, {}
        for g in self.structure.groups:
            n_keep = g.num_units - grid.pruned_units(level, g.num_units)
            kept[g.name] = sorted(self.unit_order(stage, g.name)[:n_keep].tolist())
        return kept

    def skipped_blocks(self, stage: int, level: int) -> list[str]:
        blocks = self.structure.blocks
        if self.config.axis != "depth" or not blocks:
            return []
        # anchors (the first top-level block) count toward the fraction but are never dropped; a level above
        # dense drops at least one block, so every depth level is cheaper than dense
        n_drop = self.config.grid.pruned_units(level, len(blocks) + len(self.structure.anchors))
        n_drop = min(len(blocks), max(n_drop, 1 if level else 0))
        if self.config.nested:
            score = sum(s / s.sum().clamp_min(1e-30) for s in self.depth_scores)
        else:
            score = self.depth_scores[stage]
        order = torch.argsort(torch.as_tensor(score), stable=True)  # least change first
        return sorted(blocks[i] for i in order[:n_drop].tolist())

    def plan(self, stage: int, level: int) -> PrunePlan:
        """The plan for (stage, level), computed on first use and kept in a memory-bounded cache."""
        if not (0 <= stage < self.num_stages and 0 <= level < self.num_levels):
            raise ConfigError("plan", (stage, level), f"stage < {self.num_stages} and level < {self.num_levels}")
        key = (stage, level)
        if key in self.pinned:
            return self.pinned[key]
        if self.config.compensate and not self.grams and self.store is None:
            raise CheckpointError(
                f"plan=({stage}, {level}): this library holds only its exported plans; rebuild it with `diffes prune`"
            )
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        plan = self.shape_plan(level, stage)
        if self.config.compensate and self.store is not None:
            # read, not cached: its tensors are mapped from disk, and a router keeps the tables it routes with
            plan.replacements = self.store.replacements(stage, level) if level else {}
            return plan
        if self.config.compensate:
            grams = self.grams[stage]
            plan.replacements = self.refit(plan, grams.__getitem__, self.consumers.get)
        self._cache[key] = plan
        budget = self.config.plan_cache_mb * 2**20
        while len(self._cache) > 1 and sum(p.nbytes() for p in self._cache.values()) > budget:
            self._cache.popitem(last=False)
        return plan

    def prefetch(self, stage: int, level: int) -> None:
        """Start reading (stage, level)'s plan from disk, for a router that will switch to it next."""
        if self.config.compensate and self.store is not None and level and (stage, level) not in self.pinned:
            self.store.prefetch(stage, level)

    def shape_plan(self, level: int, stage: int = 0) -> PrunePlan:
        """A plan without compensation: enough to know a level's shapes and cost (stage 0's, by default)."""
        return make_plan(
            self.shapes, self.structure, stage, level, self.kept_units(stage, level), self.skipped_blocks(stage, level)
        )

    def clear_cache(self) -> None:
        self._cache.clear()

    def release_plans(self) -> None:
        """Drop every plan held here (cached and pinned), once a router has prepared its own tables."""
        self._cache.clear()
        self.pinned.clear()

    def refit(
        self, plan: PrunePlan, gram: Callable[[str], torch.Tensor], dense: Callable[[str], torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """The compensated consumers of ``plan``, from its stage's Grams and the dense consumer tensors (each
        looked up by name when needed, so a build can read them one at a time from disk)."""
        out = {}
        # per consumer, not per group: a Flux single block's proj_out reads two groups and is refit once
        for consumer, kept in kept_channels(self.shapes, self.structure, plan.kept_units).items():
            weight = dense(f"{consumer}.weight")
            assert weight is not None
            new_w, new_b = compensate(weight, dense(f"{consumer}.bias"), gram(consumer), kept, self.config.damp)
            out[f"{consumer}.weight"] = new_w
            if new_b is not None:
                out[f"{consumer}.bias"] = new_b
        return out

    def stage_cost(self, levels: list[int] | tuple[int, ...], measure: str = "macs") -> float:
        """Mean cost per step of a schedule (one level per stage), relative to dense."""
        lengths = self.schedule.stage_lengths()
        per_level = [self._relative(lv, measure) for lv in range(self.num_levels)]
        return sum(n * per_level[lv] for n, lv in zip(lengths, levels)) / self.schedule.num_steps

    def _relative(self, level: int, measure: str) -> float:
        if measure == "macs":
            return self.costs[level].macs / self.costs[0].macs
        if measure == "latency":
            lat = [c.latency for c in self.costs]
            if any(x is None for x in lat):
                raise ConfigError("cost", measure, "measure latency first (diffes prune --latency)")
            return float(lat[level]) / float(lat[0])  # type: ignore[arg-type]
        raise ConfigError("cost", measure, "use macs or latency")

    # ---- persistence: JSON + safetensors, never pickle ----

    def save(self, folder: str | os.PathLike[str], complete: bool = True) -> Path:
        """Write the library to ``folder`` (a store-backed library only where its plans already are). A build
        whose plans are still being solved saves with ``complete=False``: the solvers read it, nothing else."""
        folder = Path(folder)
        if self.store is not None and self.store.folder != folder / PLANS:
            raise ValueError(f"a library whose plans are in {self.store.folder} is saved beside them, not in {folder}")
        meta = {
            "schema": SCHEMA,
            "config": asdict(self.config),
            "schedule": self.schedule.to_dict(),
            "structure": self.structure.to_dict(),
            "shapes": self.shapes.to_dict(),
            "costs": [asdict(c) for c in self.costs],
            "plans": self.store is not None,
        }
        tensors = {f"scores/{s}/{g}": t for s, d in enumerate(self.scores) for g, t in d.items()}
        tensors.update({f"depth/{s}": t for s, t in enumerate(self.depth_scores)})
        if self.grams:  # what plans are solved from on demand; a store-backed library needs neither
            tensors.update({f"consumers/{k}": t for k, t in self.consumers.items()})
        write_tensors(folder / "scores.safetensors", tensors)
        grams = {f"{s}/{c}": t for s, d in enumerate(self.grams) for c, t in d.items()}
        if grams:
            write_tensors(folder / "grams.safetensors", grams)
        # written last: the presence of library.json marks a complete library
        write_json(folder / ("library.json" if complete else BUILDING), meta)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], complete: bool = True) -> PruningLibrary:
        folder = Path(folder)
        path = folder / ("library.json" if complete else BUILDING)
        if not path.is_file():
            raise CheckpointError(f"library={str(folder)!r}: no library.json; build one with `diffes prune`")
        meta = read_json(path, dict[str, Any], LIBRARY_FIX)
        grams_file = folder / "grams.safetensors"
        if meta.get("schema") != SCHEMA and not (meta.get("schema") == 3 and not grams_file.exists()):
            raise CheckpointError(f"library={str(folder)!r}: schema {meta.get('schema')} is not {SCHEMA}; rebuild it")
        meta = validate(_LibraryJson, meta, path, LIBRARY_FIX)
        schedule = meta["schedule"]
        scores, depth, consumers = _read_scores(folder / "scores.safetensors", schedule.num_stages)
        grams: list[dict[str, torch.Tensor]] = []
        if grams_file.is_file():
            grams = _read_grams(grams_file, schedule.num_stages)
        structure, shapes = meta["structure"], meta["shapes"]
        library = cls(meta["config"], structure, schedule, shapes, scores, depth, grams, consumers, meta["costs"])
        if meta["plans"]:
            library.store = PlanStore(folder / PLANS)
        if complete:
            _check_library(library, folder)
        if (folder / "plans.json").is_file():
            library.load_plans(folder)
        return library

    def save_plans(self, folder: str | os.PathLike[str], pairs: list[tuple[int, int]]) -> None:
        """Write the plans of ``pairs`` (with their compensated tensors) as plans.safetensors + plans.json."""
        folder = Path(folder)
        tensors, metas = {}, []
        for stage, level in sorted(set(pairs)):
            plan = self.plan(stage, level)
            metas.append(plan.meta())
            tensors.update({f"{stage}_{level}/{k}": v for k, v in plan.tensors().items()})
        write_tensors(folder / "plans.safetensors", tensors)
        write_json(folder / "plans.json", {"schema": SCHEMA, "plans": metas})

    def load_plans(self, folder: str | os.PathLike[str]) -> None:
        """Pin the plans saved by ``save_plans``."""
        folder = Path(folder)
        metas = read_json(folder / "plans.json", _PlansJson, LIBRARY_FIX)["plans"]
        tensors = read_tensors(folder / "plans.safetensors")
        for meta in metas:
            stage, level = meta["stage"], meta["level"]
            if not (stage < self.num_stages and level < self.num_levels):
                fix = f"this library has {self.num_stages} stages and {self.num_levels} levels; {LIBRARY_FIX}"
                raise CheckpointError(f"{folder / 'plans.json'}: plan ({stage}, {level}): {fix}")
            prefix = f"{stage}_{level}/"
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                plan = PrunePlan.from_data(meta, own)
            except KeyError as e:
                raise CheckpointError(
                    f"{folder / 'plans.safetensors'}: tensor {e} of plan {prefix[:-1]} is missing"
                ) from None
            self.pinned[(plan.stage, plan.level)] = plan

    def export(self, folder: str | os.PathLike[str], pairs: list[tuple[int, int]]) -> Path:
        """A compact copy for serving: structure, scores and the given plans; no calibration data."""
        folder = Path(folder)
        self.save_plans(folder, pairs)
        slim = PruningLibrary(
            self.config, self.structure, self.schedule, self.shapes, self.scores, self.depth_scores, [], {}, self.costs
        )
        return slim.save(folder)

    def measure_latency(self, model: nn.Module, call: Callable[[nn.Module], object], repeats: int = 20) -> None:
        """Fill ``costs[*].latency``: median seconds per denoiser call of each level on this device."""
        for level, cost in enumerate(self.costs):
            pruned = prune_copy(model, self.structure, self.shape_plan(level))
            cost.latency = measure_latency(lambda: call(pruned), repeats=repeats)  # noqa: B023 (called at once)


# ---- reading a saved library back: schemas (diffes.schema) and consistency ----

LIBRARY_FIX = "the library is corrupt; rebuild it with `diffes prune` (or delete the run's library/ and resume)"


@with_config(RECORD)
class _LibraryJson(TypedDict):
    # the dataclasses are the schema: pydantic builds them from the dicts ``asdict`` wrote
    schema: int
    config: PruningConfig
    schedule: StageSchedule
    structure: PrunableStructure
    shapes: ModelShapes
    costs: Annotated[list[LevelCost], Field(min_length=1)]
    plans: bool


@with_config(RECORD)
class _PlanJson(TypedDict):
    stage: NonNegative
    level: NonNegative
    dims: dict[str, int]
    overrides: dict[str, dict[str, int]]
    kept_units: dict[str, list[int]]
    skipped: list[str]


class _PlansJson(TypedDict):
    schema: int
    plans: list[_PlanJson]


def _read_scores(
    path: Path, stages: int
) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor], dict[str, torch.Tensor]]:
    """Unit scores per stage and group, block scores per stage, dense consumer tensors."""
    tensors = read_tensors(path)
    scores: list[dict[str, torch.Tensor]] = [{} for _ in range(stages)]
    depth = [tensors[f"depth/{s}"] for s in range(stages) if f"depth/{s}" in tensors]
    consumers = {k[len("consumers/") :]: v for k, v in tensors.items() if k.startswith("consumers/")}
    with reading(path, LIBRARY_FIX):
        for k, v in tensors.items():
            if k.startswith("scores/"):
                _, s, g = k.split("/", 2)
                scores[_stage_index(s, stages)][g] = v
    return scores, depth, consumers


def _read_grams(path: Path, stages: int) -> list[dict[str, torch.Tensor]]:
    grams: list[dict[str, torch.Tensor]] = [{} for _ in range(stages)]
    with reading(path, LIBRARY_FIX):
        for k, v in read_tensors(path).items():
            s, c = k.split("/", 1)
            grams[_stage_index(s, stages)][c] = v
    return grams


def _stage_index(text: str, stages: int) -> int:
    stage = int(text)
    if not 0 <= stage < stages:
        raise IndexError(f"stage {stage} of a {stages}-stage library")
    return stage


def _check_library(library: PruningLibrary, folder: Path) -> None:
    """What plans and costs will index: a cost per level, a score per (stage, group) and unit, a block score
    per stage, and a Gram matrix and dense weights for every consumer a compensated plan refits."""
    stages, groups, blocks = range(library.num_stages), library.structure.groups, library.structure.blocks
    if len(library.costs) != library.num_levels or library.costs[0].macs <= 0:
        raise CheckpointError(f"{folder / 'library.json'}: costs: one per level, dense first; {LIBRARY_FIX}")
    if library.config.axis == "width":
        for s, g in ((s, g) for s in stages for g in groups):
            if library.scores[s].get(g.name, torch.empty(0)).numel() != g.num_units:
                raise CheckpointError(f"{folder / 'scores.safetensors'}: scores/{s}/{g.name}: {LIBRARY_FIX}")
    depth = library.depth_scores
    if blocks and (len(depth) != len(stages) or any(d.numel() != len(blocks) for d in depth)):
        raise CheckpointError(f"{folder / 'scores.safetensors'}: depth: one score per block and stage; {LIBRARY_FIX}")
    store = library.store
    if library.config.compensate and store is not None:
        missing = [(s, lv) for s in stages for lv in range(1, library.num_levels) if not store.has(s, lv)]
        if missing:
            raise CheckpointError(f"{store.path(*missing[0])}: plan missing; {LIBRARY_FIX}")
    if library.config.compensate and library.grams:
        for s, g in ((s, g) for s in stages for g in groups):
            if not _gram_fits(library.consumers.get(f"{g.consumer}.weight"), library.grams[s].get(g.consumer)):
                raise CheckpointError(f"{folder}: {s}/{g.consumer}: Gram matrix or weight missing; {LIBRARY_FIX}")


def _gram_fits(weight: torch.Tensor | None, packed: torch.Tensor | None) -> bool:
    """A consumer weight (out, in, ...) and a packed Gram of its in x kernel columns plus the bias column."""
    if weight is None or packed is None or weight.dim() < 2 or len(weight) == 0:
        return False
    return packed.numel() == packed_numel(weight[0].numel() + 1)
