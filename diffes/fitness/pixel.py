"""Pixel metrics that need no weights: SSIM, PSNR and MSE, as per-probe distances."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffes.fitness.base import PairMetric

__all__ = ["ssim", "psnr", "mse", "SsimMetric", "PsnrMetric", "MseMetric", "PSNR_MAX_DB"]

SSIM_SIGMA = 1.5
SSIM_MAX_WINDOW = 11
# Stabilizers of Wang et al. (2004) for a data range of 1.
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
# PSNR of identical images is infinite; capping it at 100 dB (an MSE of 1e-10) keeps distances finite.
PSNR_MAX_DB = 100.0


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image, shape (N,)."""
    return (a - b).square().flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image for data in [0, 1], capped at ``PSNR_MAX_DB``."""
    return (-10.0 * torch.log10(mse(a, b))).clamp_max(PSNR_MAX_DB)


def _window_size(height: int, width: int) -> int:
    # An odd window has a center pixel, so the local statistics are not shifted by half a pixel: 8x8 -> 7.
    size = min(SSIM_MAX_WINDOW, height, width)
    return size if size % 2 == 1 else size - 1


def _gaussian_blur(images: Tensor, size: int) -> Tensor:
    """Separable Gaussian filter per channel, valid region only (no padding), as in the SSIM paper."""
    coords = torch.arange(size, device=images.device, dtype=images.dtype) - (size - 1) / 2
    kernel = torch.exp(-coords.square() / (2 * SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    vertical = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    horizontal = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    return F.conv2d(F.conv2d(images, vertical, groups=channels), horizontal, groups=channels)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per image (mean over channels and positions) for data in [0, 1], shape (N,).

    Products are written as ``x * y`` rather than powers so that identical inputs give numerator == denominator
    bit for bit, hence exactly 1.
    """
    size = _window_size(a.shape[-2], a.shape[-1])
    mu_a, mu_b = _gaussian_blur(a, size), _gaussian_blur(b, size)
    var_a = _gaussian_blur(a * a, size) - mu_a * mu_a
    var_b = _gaussian_blur(b * b, size) - mu_b * mu_b
    cov = _gaussian_blur(a * b, size) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (numerator / denominator).flatten(1).mean(1)


class SsimMetric(PairMetric):
    """Distance ``1 - SSIM``: 0 for identical images, up to 2 in theory."""

    name = "ssim"

    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        # Rounding can push SSIM a hair above 1 for near-identical images; a distance is never negative.
        return (1.0 - ssim(student, teacher)).clamp_min(0.0)


class PsnrMetric(PairMetric):
    """Distance ``-PSNR`` in dB: identical images give ``-PSNR_MAX_DB`` (-100), the smallest value."""

    name = "psnr"

    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        return -psnr(student, teacher)


class MseMetric(PairMetric):
    """Distance = mean squared pixel error."""

    name = "mse"

    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        return mse(student, teacher)
