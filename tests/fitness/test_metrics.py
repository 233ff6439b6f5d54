from __future__ import annotations

import math

import pytest
import torch

from diffes.errors import ConfigError
from diffes.fitness import METRICS, Metric, class_accuracy, classifier_features, get_metric
from diffes.fitness.pixel import PSNR_MAX_DB
from diffes.models.data import load_digits_split

NOISE_LADDER = [0.02, 0.05, 0.1, 0.2, 0.4]
WEIGHTLESS = ["ssim", "psnr", "mse"]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out real digits in [0, 1] and their labels."""
    split = load_digits_split()
    return (split.test_images + 1) / 2, split.test_labels


def _images(n: int = 6, channels: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


def _noisy(images: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + level * noise).clamp(0, 1)


def test_unknown_metric_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        get_metric("lpipz")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("metric='lpipz'")
    assert all(name in message for name in METRICS)


def test_options_are_checked_but_none_means_not_given() -> None:
    assert get_metric("mse", weights=None).name == "mse"
    with pytest.raises(ConfigError, match="metric ssim takes no options"):
        get_metric("ssim", weights="w.safetensors")
    with pytest.raises(ConfigError, match="takes seed"):
        get_metric("lpips-random", weights="w.safetensors")


def test_default_metric_follows_the_model() -> None:
    from diffes.runs.config import default_metric

    assert default_metric("dit-digits", None) == "classifier"
    assert default_metric("t2i-digits", None) == "classifier"
    assert default_metric("/models/sdxl", None) == "ssim"  # needs no weights
    assert default_metric("/models/sdxl", "/weights/lpips.pth") == "lpips"
    assert {"classifier", "lpips"} <= set(METRICS)


@pytest.mark.parametrize("name", WEIGHTLESS)
@pytest.mark.parametrize(("channels", "side"), [(1, 8), (3, 8), (3, 32), (1, 3)])
def test_identical_images_give_the_smallest_distance(name: str, channels: int, side: int) -> None:
    images = _images(channels=channels, side=side)
    distances = get_metric(name)(images, images.clone())
    # PSNR of identical images is infinite; its distance is capped at -PSNR_MAX_DB rather than -inf.
    expected = -PSNR_MAX_DB if name == "psnr" else 0.0
    assert torch.equal(distances, torch.full((6,), expected))


@pytest.mark.parametrize("name", [*WEIGHTLESS, "lpips-random"])
def test_distances_grow_along_a_noise_ladder(name: str) -> None:
    metric = get_metric(name)
    images = _images(n=8, channels=3, side=16)
    ladder = [metric(images, _noisy(images, level)).mean().item() for level in NOISE_LADDER]
    assert all(math.isfinite(d) for d in ladder)
    assert ladder == sorted(ladder) and ladder[0] < ladder[-1]


def test_classifier_distance_grows_along_a_noise_ladder(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    metric = get_metric("classifier")
    images = digits[0][:64]
    ladder = [metric(images, _noisy(images, level)).mean().item() for level in NOISE_LADDER]
    assert ladder == sorted(ladder) and ladder[0] < ladder[-1]


@pytest.mark.parametrize("name", [*WEIGHTLESS, "lpips-random", "classifier"])
def test_one_float32_cpu_distance_per_probe_independent_of_the_batch(name: str) -> None:
    metric = get_metric(name)
    assert isinstance(metric, Metric) and metric.name == name
    student, teacher = _images(n=5, seed=0), _images(n=5, seed=1)
    distances = metric(student, teacher)
    assert distances.shape == (5,) and distances.dtype == torch.float32 and distances.device.type == "cpu"
    # A probe's score must not depend on which other probes share its batch (no batch statistics).
    alone = metric(student[2:3], teacher[2:3])
    torch.testing.assert_close(alone, distances[2:3], rtol=1e-5, atol=1e-6)


def test_half_precision_inputs_are_scored_in_float32() -> None:
    metric = get_metric("mse")
    student, teacher = _images(seed=0), _images(seed=1)
    distances = metric(student.half(), teacher.half())
    assert distances.dtype == torch.float32
    torch.testing.assert_close(distances, metric(student.half().float(), teacher.half().float()))


def test_mismatched_batches_are_rejected() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        get_metric("mse")(_images(n=4), _images(n=5))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        get_metric("mse")(torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8))


def test_classifier_puts_same_class_digits_closer(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    partner = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    distances = get_metric("classifier")(images, images[partner])
    same = labels == labels[partner]
    assert same.any() and (~same).any()
    assert distances[same].mean() < 0.5 * distances[~same].mean()


def test_classifier_helpers_on_real_digits(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    assert class_accuracy(images, labels) >= 0.97
    features = classifier_features(images[:10])
    assert features.shape[0] == 10 and features.dtype == torch.float32
    # RGB renderings of the same digits are judged on their gray level, so nothing changes.
    torch.testing.assert_close(classifier_features(images[:10].expand(-1, 3, -1, -1)), features)


def test_classifier_rejects_images_it_cannot_judge() -> None:
    with pytest.raises(ConfigError, match="8x8 images, not 32x32"):
        get_metric("classifier")(_images(side=32), _images(side=32))
