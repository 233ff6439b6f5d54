"""The metrics registry: a name and options in, a ``Metric`` out.

Backbones are imported only when their metric is asked for, so importing diffes.fitness stays cheap.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from diffes.errors import ConfigError
from diffes.fitness.base import Metric
from diffes.fitness.pixel import MseMetric, PsnrMetric, SsimMetric

__all__ = ["METRICS", "get_metric"]

Weights = str | os.PathLike[str] | None


def _lpips(name: str) -> Callable[..., Metric]:
    def build(weights: Weights = None) -> Metric:
        from diffes.fitness.lpips_metric import load_lpips

        return load_lpips(name, weights)

    return build


def _lpips_random(seed: int = 0) -> Metric:
    from diffes.fitness.lpips_metric import random_lpips

    return random_lpips(seed)


def _clip(weights: Weights = None) -> Metric:
    from diffes.fitness.clip_metric import ClipMetric

    return ClipMetric(weights)


def _classifier(weights: Weights = None) -> Metric:
    from diffes.fitness.classifier_metric import ClassifierMetric

    return ClassifierMetric(weights)


_FACTORIES: dict[str, Callable[..., Metric]] = {
    "lpips": _lpips("lpips"),
    "lpips-vgg": _lpips("lpips-vgg"),
    "lpips-squeeze": _lpips("lpips-squeeze"),
    "lpips-random": _lpips_random,
    "clip": _clip,
    "ssim": SsimMetric,
    "psnr": PsnrMetric,
    "mse": MseMetric,
    "classifier": _classifier,
}
METRICS = list(_FACTORIES)


def get_metric(name: str, **options: Any) -> Metric:
    """The metric ``name`` built with ``options`` (e.g. ``weights=PATH``).

    An option set to None counts as not given, so a caller can pass every flag it has (``weights=args.weights``)
    whichever metric was chosen; an option the metric does not take, with a value, is a ConfigError.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError("metric", name, f"choose one of {', '.join(METRICS)}")
    accepted = inspect.signature(factory).parameters
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in accepted:
            takes = ", ".join(accepted) or "no options"
            raise ConfigError(f"metric option {key}", given[key], f"metric {name} takes {takes}")
    return factory(**given)
