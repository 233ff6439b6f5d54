"""Distances in the feature space of the zoo's digit classifier: needs no download, judges 8x8 digits."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from diffes.errors import ConfigError
from diffes.fitness.base import FrozenNet, PairMetric, check_images

if TYPE_CHECKING:
    from diffes.models.classifier import DigitClassifier

__all__ = ["ClassifierMetric", "classifier_features", "class_accuracy"]

CLASSIFIER = "digits-classifier"
IMAGE_SIDE = 8


class ClassifierMetric(PairMetric):
    """Mean squared difference of the classifier's penultimate features, per probe.

    Squared distance rather than ``1 - cosine``: the features are post-ReLU and their magnitude carries contrast
    and confidence, so a pruned model that draws the right digit too faintly still scores worse (on the test
    digits, fading to 60% contrast costs 0.26x as much as noise of std 0.4 under this distance, 0.13x under
    cosine); it stays defined when a blank image yields an all-zero feature vector; and it is the Euclidean
    geometry in which the held-out Frechet distance compares the same features.
    """

    name = "classifier"

    def __init__(self, weights: str | os.PathLike[str] | None = None) -> None:
        self._net = _classifier(None if weights is None else str(weights))

    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        both = _features(self._net, torch.cat([student, teacher]))
        a, b = both.chunk(2)
        return (a - b).square().mean(1)


@torch.no_grad()
def classifier_features(images01: Tensor, weights: str | os.PathLike[str] | None = None) -> Tensor:
    """Penultimate features (N, D) of the digit classifier for images in [0, 1], float32 on CPU."""
    net = _classifier(None if weights is None else str(weights))
    return _features(net, images01.float()).cpu()


@torch.no_grad()
def class_accuracy(images01: Tensor, labels: Tensor, weights: str | os.PathLike[str] | None = None) -> float:
    """Fraction of images in [0, 1] that the digit classifier labels as ``labels``."""
    images01 = images01.float()
    model = _classifier(None if weights is None else str(weights)).on(images01.device)
    predictions = model(_classifier_input(images01)).argmax(-1)
    return float((predictions.cpu() == labels.cpu()).float().mean())


@lru_cache(maxsize=2)
def _classifier(weights: str | None) -> FrozenNet[DigitClassifier]:
    # Shared by the metric and the helpers: a search calls them thousands of times, the load happens once.
    # Imported here because diffes.models pulls in diffusers, which `import diffes.fitness` should not pay for.
    from diffes.models.zoo import load_model

    return FrozenNet(cast("DigitClassifier", load_model(CLASSIFIER, weights)))


def _features(net: FrozenNet[DigitClassifier], images01: Tensor) -> Tensor:
    return net.on(images01.device).features(_classifier_input(images01))


def _classifier_input(images01: Tensor) -> Tensor:
    """The classifier's input: one channel, 8x8, in [-1, 1]."""
    check_images(images01)
    side = tuple(images01.shape[-2:])
    if side != (IMAGE_SIDE, IMAGE_SIDE):
        fix = f"the digit classifier judges 8x8 images, not {side[0]}x{side[1]}; use lpips or clip"
        raise ConfigError("metric", "classifier", fix)
    gray = images01.mean(1, keepdim=True) if images01.shape[1] == 3 else images01
    return gray * 2 - 1
