"""Routing: one shared model, plan weights swapped in place at stage boundaries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffes._lazy import lazy_exports

if TYPE_CHECKING:
    from diffes.routing.checkpoint import export_routed, load_routed
    from diffes.routing.hook import RoutedHandle, RoutingSchedule, apply
    from diffes.routing.router import MODES, Router

_EXPORTS = {
    "export_routed": "checkpoint",
    "load_routed": "checkpoint",
    "RoutedHandle": "hook",
    "RoutingSchedule": "hook",
    "apply": "hook",
    "MODES": "router",
    "Router": "router",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["MODES", "RoutedHandle", "Router", "RoutingSchedule", "apply", "export_routed", "load_routed"]
