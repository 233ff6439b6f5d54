"""Stage-aware structural pruning plans built with torch-pruning's dependency graph."""

from diffes.pruning.graph import PrunableStructure, UnitGroup, trace_structure
from diffes.pruning.levels import DEFAULT_LEVELS, LevelGrid
from diffes.pruning.library import LevelCost, PruningConfig, PruningLibrary, build_library, zoo_runner
from diffes.pruning.plan import PrunePlan, make_plan, prune_copy

__all__ = [
    "PruningConfig",
    "PruningLibrary",
    "LevelCost",
    "LevelGrid",
    "DEFAULT_LEVELS",
    "PrunePlan",
    "PrunableStructure",
    "UnitGroup",
    "build_library",
    "make_plan",
    "prune_copy",
    "trace_structure",
    "zoo_runner",
]
