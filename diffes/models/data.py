"""The zoo's dataset: scikit-learn's handwritten digits (8x8, ships with sklearn, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DigitsSplit", "load_digits_split", "to_unit_range", "NUM_CLASSES", "IMAGE_SIZE"]

NUM_CLASSES = 10
IMAGE_SIZE = 8


@dataclass(frozen=True)
class DigitsSplit:
    """Images in [-1, 1] of shape (N, 1, 8, 8) and integer labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def to_unit_range(pixels: np.ndarray) -> torch.Tensor:
    """Map sklearn's 0..16 gray levels to [-1, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """A stratified, seeded train/test split; the test part is never trained on."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return DigitsSplit(
        to_unit_range(x_train),
        torch.from_numpy(y_train.astype(np.int64)),
        to_unit_range(x_test),
        torch.from_numpy(y_test.astype(np.int64)),
    )
