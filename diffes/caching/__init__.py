"""Feature caching: steps (or spans of blocks) that reuse earlier denoiser work instead of computing it.

One runtime (``runtime``) attached through the step-aware hooks routing uses, so a pipeline can be routed
and cached at once; rules (``rules``) decide which steps compute: interval (FORA), an explicit mask,
first-block residual, TeaCache and MagCache, the last two fitted by ``calibrate`` (``diffes calibrate-cache``).
CEM (``error_prior``, ``cem``): an offline error prior and the DP that picks the computed steps under a budget
of steps or MACs; its schedule runs as a mask rule. SODA-style sensitivity (``sensitivity``): per step and block,
the output change when one block is cached or skipped; it weights the DP and seeds the pruning search.
"""

from diffes._lazy import lazy_exports

_EXPORTS = {
    "apply_cache": "runtime",
    "attach_cache": "runtime",
    "CacheHandle": "runtime",
    "CacheSummary": "runtime",
    "Reuse": "runtime",
    "Extrapolate": "runtime",
    "Residual": "runtime",
    "IntervalRule": "rules",
    "MaskRule": "rules",
    "StageIntervalRule": "rules",
    "FirstBlockRule": "rules",
    "TeaCacheRule": "rules",
    "MagCacheRule": "rules",
    "Rule": "rules",
    "rule_from_dict": "rules",
    "Calibration": "calibration",
    "calibrate": "calibration",
    "RULES": "kinds",
    "CacheSchedule": "cem",
    "plan_computed_steps": "cem",
    "schedule_error": "cem",
    "Sensitivity": "sensitivity",
    "measure_sensitivity": "sensitivity",
    "sensitivity_levels": "sensitivity",
    "ErrorPrior": "error_prior",
    "measure_error_prior": "error_prior",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
