"""Built-in zoo models, the zoo pipeline, the step tracker and the sampling adapters of pipeline families."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffes._lazy import lazy_exports

if TYPE_CHECKING:
    from diffes.models.loading import is_zoo_model, load_pipeline, pick_device
    from diffes.models.pipeline import ZooPipeline
    from diffes.models.steps import StepInfo, StepTracker, attach_step_hook, find_denoiser
    from diffes.models.zoo import DEFAULT_MODEL, GENERATORS, ZOO, load_model

_EXPORTS = {
    "is_zoo_model": "loading",
    "load_pipeline": "loading",
    "pick_device": "loading",
    "ZooPipeline": "pipeline",
    "StepInfo": "steps",
    "StepTracker": "steps",
    "attach_step_hook": "steps",
    "find_denoiser": "steps",
    "DEFAULT_MODEL": "zoo",
    "GENERATORS": "zoo",
    "ZOO": "zoo",
    "load_model": "zoo",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "DEFAULT_MODEL",
    "GENERATORS",
    "StepInfo",
    "StepTracker",
    "ZOO",
    "ZooPipeline",
    "attach_step_hook",
    "find_denoiser",
    "is_zoo_model",
    "load_model",
    "load_pipeline",
    "pick_device",
]
