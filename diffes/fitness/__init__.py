"""Fitness: how far a pruned student's samples are from the dense teacher's, one distance per probe.

``get_metric(name, **options)`` builds a ``Metric``; the helpers score samples for reports and held-out checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffes._lazy import lazy_exports

if TYPE_CHECKING:
    from diffes.fitness.base import Metric
    from diffes.fitness.classifier_metric import class_accuracy, classifier_features
    from diffes.fitness.clip_metric import clip_text_score
    from diffes.fitness.heldout import classifier_frechet_distance, frechet_distance
    from diffes.fitness.metrics import METRICS, get_metric

_EXPORTS = {
    "Metric": "base",
    "class_accuracy": "classifier_metric",
    "classifier_features": "classifier_metric",
    "clip_text_score": "clip_metric",
    "classifier_frechet_distance": "heldout",
    "frechet_distance": "heldout",
    "METRICS": "metrics",
    "get_metric": "metrics",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "METRICS",
    "Metric",
    "class_accuracy",
    "classifier_features",
    "classifier_frechet_distance",
    "clip_text_score",
    "frechet_distance",
    "get_metric",
]
