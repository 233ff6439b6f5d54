"""PruningConfig: how a pruning library is built. Torch-free, so a run's configuration is checked before any
heavy import; ``diffes.config.RunConfig`` holds it whole as its ``pruning`` section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator

from diffes.errors import ConfigError
from diffes.fields import Bool, Int, Number, option
from diffes.pruning.levels import DEFAULT_LEVELS, LevelGrid
from diffes.stages import StageSchedule

__all__ = ["PruningConfig", "Importance", "Axis", "IMPORTANCE"]

Importance = Literal["magnitude", "taylor", "activation"]
Axis = Literal["width", "depth"]
IMPORTANCE: tuple[str, ...] = get_args(Importance)


def _levels(value: object) -> tuple[float, ...]:
    """A file or flag may give "0,0.1,0.2", "heads:8,6,4" or a list of numbers."""
    if isinstance(value, str):
        return LevelGrid.parse(value).fractions
    if isinstance(value, list | tuple) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return LevelGrid.parse(tuple(float(x) for x in value)).fractions
    raise ConfigError("levels", value, "use fractions like 0,0.1,0.2 or head counts like heads:8,6,4")


Levels = Annotated[tuple[float, ...], BeforeValidator(_levels)]


@dataclass(frozen=True)
class PruningConfig:
    importance: Importance = option("taylor", "magnitude, taylor or activation")
    levels: Levels = option(DEFAULT_LEVELS, "sparsity levels, e.g. 0,0.1,...,0.7 or heads:8,6,4,2")
    axis: Axis = option("width", "width (heads, MLP units, channels) or depth (whole transformer blocks)")
    nested: Bool = option(False, "one unit order per layer for all stages: plans become prefixes, zero-copy routing")
    compensate: Bool = option(True, "least-squares refit of the layers that consume pruned units")
    damp: Number = option(0.01)
    stages: Int = option(10, "stages of the trajectory (one level each)")
    steps: Int = option(20, "sampling steps of the search trajectory")
    calibration_samples: Int = option(32, "samples of the dense trajectory used to calibrate the library")
    seed: Int = option(0)  # the Taylor importance probes; a run sets it to its own seed
    # what a search worker keeps of the plans it has routed to (computed plans, prepared routing tables)
    plan_cache_mb: Number = option(256.0)
    latency: Bool = option(False)  # also time every level on this device (a calibration-sized batch)

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCE:
            raise ConfigError("importance", self.importance, f"choose one of {', '.join(IMPORTANCE)}")
        if self.axis not in get_args(Axis):
            raise ConfigError("axis", self.axis, "choose width or depth")
        object.__setattr__(self, "levels", LevelGrid.parse(self.levels).fractions)
        StageSchedule.uniform(self.steps, self.stages)
        if self.calibration_samples < 1:
            raise ConfigError("calibration_samples", self.calibration_samples, "use at least 1 calibration sample")
        if self.damp <= 0:
            raise ConfigError("damp", self.damp, "use a positive damping such as 0.01")
        if self.plan_cache_mb < 0:
            raise ConfigError("plan_cache_mb", self.plan_cache_mb, "use a size in MB >= 0")

    @property
    def grid(self) -> LevelGrid:
        return LevelGrid(tuple(self.levels))
