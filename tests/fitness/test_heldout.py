from __future__ import annotations

import pytest
import torch

from diffes.fitness import classifier_frechet_distance, frechet_distance
from diffes.models.data import load_digits_split


def _features(n: int = 400, dim: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
    return torch.randn(n, dim, generator=generator) @ mixing


def test_identical_feature_sets_are_at_distance_zero() -> None:
    feats = _features()
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_a_mean_shift_adds_its_squared_length() -> None:
    # Equal covariances leave only ||shift||^2, so the distance is known exactly.
    feats = _features()
    distances = []
    for length in [0.1, 0.5, 1.0, 2.0]:
        shift = torch.full((feats.shape[1],), length / feats.shape[1] ** 0.5)
        distances.append(frechet_distance(feats, feats + shift))
        assert distances[-1] == pytest.approx(length**2, rel=1e-5, abs=1e-8)
    assert distances == sorted(distances)


def test_fewer_samples_than_dimensions_still_give_a_finite_distance() -> None:
    a, b = _features(n=10, dim=32, seed=0), _features(n=10, dim=32, seed=1)
    distance = frechet_distance(a, b)
    assert 0.0 < distance < float("inf")
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_bad_feature_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="differ in dimension"):
        frechet_distance(torch.zeros(5, 4), torch.zeros(5, 3))


def test_classifier_frechet_distance_separates_digit_sets() -> None:
    split = load_digits_split()
    images, labels = (split.test_images + 1) / 2, split.test_labels
    halves = classifier_frechet_distance(images[0::2], images[1::2])
    low, high = images[labels < 5], images[labels >= 5]
    assert halves < 0.25 * classifier_frechet_distance(low, high)
