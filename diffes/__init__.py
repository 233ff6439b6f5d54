"""diffes: stage-wise structural sparsity for diffusion models, found by evolutionary search (Diff-ES)."""

from diffes.errors import DiffesError

__version__ = "0.1.0"
__all__ = ["DiffesError", "__version__"]
