"""Search over stage-wise pruning schedules: genomes, budget, DEAP operators and the resumable loop."""

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
