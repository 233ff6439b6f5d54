"""Feature caching: steps that reuse earlier denoiser outputs instead of computing them.

It shares the step-aware hook runtime of ``diffes.routing`` (``diffes.models.steps``). So far: static step
caching (``apply_step_cache``). Adaptive rules (TeaCache) and searched cache schedules (CEM) are not built yet.
"""

from diffes.caching.step_cache import CachedHandle, StepCacheConfig, StepCacheHook, StepCacheState, apply_step_cache

__all__ = ["StepCacheConfig", "StepCacheState", "StepCacheHook", "apply_step_cache", "CachedHandle"]
