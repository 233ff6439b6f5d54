"""Routing: one shared model, plan weights swapped in place at stage boundaries."""

from diffes.routing.router import MODES, Router

__all__ = ["Router", "MODES"]
