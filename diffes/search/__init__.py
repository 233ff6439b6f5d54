"""Search over stage-wise pruning schedules: genomes, budget, DEAP operators and the resumable loop."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from diffes._lazy import lazy_exports

if TYPE_CHECKING:
    from diffes.search.algorithms import (
        best,
        init_search,
        local_map,
        make_toolbox,
        next_generation,
        pareto_front,
        run_search,
    )
    from diffes.search.config import SearchConfig
    from diffes.search.genome import Budget, Genome
    from diffes.search.state import SearchState

_EXPORTS = {
    "best": "algorithms",
    "init_search": "algorithms",
    "local_map": "algorithms",
    "make_toolbox": "algorithms",
    "next_generation": "algorithms",
    "pareto_front": "algorithms",
    "run_search": "algorithms",
    "SearchConfig": "config",
    "Budget": "genome",
    "Genome": "genome",
    "SearchState": "state",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "Budget",
    "Genome",
    "SearchConfig",
    "SearchState",
    "best",
    "init_search",
    "local_map",
    "make_toolbox",
    "next_generation",
    "pareto_front",
    "run_search",
]


class _SearchPackage(types.ModuleType):
    """``diffes.search(pipe, ...)`` runs the main job (``diffes.api.search``) while ``diffes.search`` stays the
    package of its parts: importing a submodule rebinds the package attribute ``diffes.search`` to this module,
    so a plain function of that name would be shadowed the moment any search module is imported."""

    def __call__(self, pipe: Any, **settings: Any) -> Any:
        from diffes.api import search

        return search(pipe, **settings)


sys.modules[__name__].__class__ = _SearchPackage
