"""diffes: stage-wise structural sparsity for diffusion models, found by evolutionary search (Diff-ES)."""

import os

# OpenMP threads that spin while they wait make torch 30-50x slower on CPU whenever another process holds a
# core (measured on the zoo DiT: 1477 ms instead of 35 ms per call on 2 cores). Sleeping waits cost little on
# an idle machine. This only takes effect if torch is imported after diffes; set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from diffes import search  # callable: diffes.search(pipe, prompts=..., budget=...) runs the main job
from diffes.errors import DiffesError

__version__ = "0.1.0"
__all__ = ["DiffesError", "__version__", "search"]
