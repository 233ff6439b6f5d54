"""Fitness: how far a pruned student's samples are from the dense teacher's, one distance per probe.

``get_metric(name, **options)`` builds a ``Metric``; the helpers score samples for reports and held-out checks.
"""

from __future__ import annotations

from diffes.fitness.base import Metric
from diffes.fitness.classifier_metric import class_accuracy, classifier_features
from diffes.fitness.clip_metric import clip_text_score
from diffes.fitness.heldout import classifier_frechet_distance, frechet_distance
from diffes.fitness.metrics import METRICS, default_metric_name, get_metric

__all__ = [
    "Metric",
    "METRICS",
    "get_metric",
    "default_metric_name",
    "class_accuracy",
    "classifier_features",
    "clip_text_score",
    "frechet_distance",
    "classifier_frechet_distance",
]
