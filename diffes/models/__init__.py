"""Built-in zoo models, the zoo pipeline, the step tracker and the sampling adapters of pipeline families."""

from diffes.models.loading import is_zoo_model, load_pipeline, pick_device
from diffes.models.pipeline import ZooPipeline
from diffes.models.steps import StepInfo, StepTracker, attach_step_hook, find_denoiser
from diffes.models.zoo import DEFAULT_MODEL, GENERATORS, ZOO, load_model

__all__ = [
    "ZooPipeline",
    "ZOO",
    "GENERATORS",
    "DEFAULT_MODEL",
    "load_model",
    "load_pipeline",
    "is_zoo_model",
    "pick_device",
    "find_denoiser",
    "StepInfo",
    "StepTracker",
    "attach_step_hook",
]
