"""Stage-aware structural pruning plans built with torch-pruning's dependency graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffes._lazy import lazy_exports

if TYPE_CHECKING:
    from diffes.pruning.build import LocalSolver, RaySolver, build_library, zoo_runner
    from diffes.pruning.config import PruningConfig
    from diffes.pruning.graph import PrunableStructure, UnitGroup, trace_structure
    from diffes.pruning.levels import DEFAULT_LEVELS, LevelGrid
    from diffes.pruning.library import LevelCost, PruningLibrary
    from diffes.pruning.plan import PrunePlan, make_plan, prune_copy

_EXPORTS = {
    "PrunableStructure": "graph",
    "UnitGroup": "graph",
    "trace_structure": "graph",
    "DEFAULT_LEVELS": "levels",
    "LevelGrid": "levels",
    "PruningConfig": "config",
    "LevelCost": "library",
    "PruningLibrary": "library",
    "build_library": "build",
    "zoo_runner": "build",
    "LocalSolver": "build",
    "RaySolver": "build",
    "PrunePlan": "plan",
    "make_plan": "plan",
    "prune_copy": "plan",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "DEFAULT_LEVELS",
    "LevelCost",
    "LevelGrid",
    "LocalSolver",
    "PrunableStructure",
    "PrunePlan",
    "PruningConfig",
    "PruningLibrary",
    "RaySolver",
    "UnitGroup",
    "build_library",
    "make_plan",
    "prune_copy",
    "trace_structure",
    "zoo_runner",
]
