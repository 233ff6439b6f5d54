"""Routing: one shared model, plan weights swapped in place at stage boundaries."""

from diffes.routing.checkpoint import export_routed, load_routed
from diffes.routing.hook import RoutedHandle, RoutingSchedule, apply
from diffes.routing.router import MODES, Router

__all__ = ["MODES", "RoutedHandle", "Router", "RoutingSchedule", "apply", "export_routed", "load_routed"]
