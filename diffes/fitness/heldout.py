"""Held-out evaluation: Frechet distance between feature sets (FID's formula, here on classifier features)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.linalg
from torch import Tensor

from diffes.fitness.classifier_metric import classifier_features

__all__ = ["frechet_distance", "classifier_frechet_distance"]

# sqrtm of a (near-)singular product is inaccurate; a residual above this relative size triggers the retry.
_SQRTM_TOLERANCE = 1e-6
# Imaginary parts this small (relative to the trace) are rounding noise of sqrtm on a real PSD product.
_IMAGINARY_TOLERANCE = 1e-3


def frechet_distance(feats_a: Tensor, feats_b: Tensor, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets; 0 for identical sets.

    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, in float64. When fewer samples than dimensions
    make the covariance product singular, ``eps`` is added to both diagonals before the square root.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = _sqrtm_product(cov_a, cov_b, eps)
    diff = mu_a - mu_b
    distance = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    # The true value is non-negative; rounding leaves about -1e-12 for identical sets.
    return max(distance, 0.0)


def classifier_frechet_distance(
    images_a01: Tensor, images_b01: Tensor, weights: str | os.PathLike[str] | None = None
) -> float:
    """Frechet distance between two image sets in [0, 1] in the digit classifier's feature space."""
    return frechet_distance(classifier_features(images_a01, weights), classifier_features(images_b01, weights))


def _as_features(feats: Tensor, what: str) -> np.ndarray:
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"{what} must be (N, D) with N >= 2 to fit a covariance, got {tuple(feats.shape)}")
    return feats.detach().cpu().double().numpy()


def _sqrtm_product(cov_a: np.ndarray, cov_b: np.ndarray, eps: float) -> np.ndarray:
    root = _checked_sqrtm(cov_a @ cov_b)
    if root is None:
        offset = eps * np.eye(cov_a.shape[0])
        root = _checked_sqrtm((cov_a + offset) @ (cov_b + offset))
        if root is None:
            raise ValueError(f"the covariance product has no accurate square root even with eps={eps}; raise eps")
    if np.iscomplexobj(root):
        scale = max(abs(np.trace(root.real)), 1.0)
        if np.abs(root.imag).max() > _IMAGINARY_TOLERANCE * scale:
            raise ValueError(f"square root of the covariance product has imaginary part {np.abs(root.imag).max():g}")
        root = root.real
    return root


def _checked_sqrtm(product: np.ndarray) -> np.ndarray | None:
    """``sqrtm(product)``, or None when it is not finite or does not square back to ``product``."""
    with warnings.catch_warnings():
        # scipy warns about singular input; the residual check below decides whether the root is usable.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = np.asarray(scipy.linalg.sqrtm(product))
    if not np.isfinite(root).all():
        return None
    residual = np.linalg.norm(root @ root - product) / max(np.linalg.norm(product), np.finfo(float).tiny)
    return root if residual <= _SQRTM_TOLERANCE else None
