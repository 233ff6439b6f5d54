from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import models as tv

from diffes.errors import ConfigError, MissingWeightsError
from diffes.fitness import get_metric
from diffes.fitness.lpips_metric import LpipsMetric, backbone_cache_file

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


@pytest.fixture()
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchvision cache, and a hub that fails the test if anything asks it for a download."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the hub was asked for a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home


def _gray_digits(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_lpips_random_scores_8x8_gray_images_offline(empty_torch_home: Path) -> None:
    metric = get_metric("lpips-random")
    student, teacher = _gray_digits(seed=0), _gray_digits(seed=1)
    distances = metric(student, teacher)
    assert distances.shape == (4,) and bool((distances > 0).all())
    assert torch.equal(metric(student, student), torch.zeros(4))


def test_lpips_random_is_seeded_without_touching_the_global_generator() -> None:
    state = torch.random.get_rng_state()
    student, teacher = _gray_digits(seed=0), _gray_digits(seed=1)
    first, again = get_metric("lpips-random"), get_metric("lpips-random", seed=0)
    other = get_metric("lpips-random", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first(student, teacher), again(student, teacher))
    assert not torch.equal(first(student, teacher), other(student, teacher))


def test_lpips_without_cached_backbone_fails_at_once_in_one_line(empty_torch_home: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        get_metric("lpips")
    message = str(info.value)
    assert "\n" not in message
    assert ALEXNET_FILE in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--lpips-weights FILE" in message


def test_lpips_loads_the_backbone_from_torchvisions_cache(empty_torch_home: Path) -> None:
    # A random AlexNet in torchvision's own checkpoint format (a torch file) stands in for the ImageNet weights.
    alexnet = tv.alexnet(weights=None)
    cached = backbone_cache_file("alex")
    assert cached == empty_torch_home / "hub" / "checkpoints" / ALEXNET_FILE
    cached.parent.mkdir(parents=True)
    torch.save(alexnet.state_dict(), cached)
    metric = get_metric("lpips")
    assert isinstance(metric, LpipsMetric)
    state = metric.state_dict()
    assert torch.equal(state["net.slice1.0.weight"], alexnet.features[0].weight)
    assert torch.equal(state["net.slice5.10.bias"], alexnet.features[10].bias)
    assert metric(_gray_digits(seed=0), _gray_digits(seed=1)).shape == (4,)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_saved_weights_load_without_the_hub_and_score_identically(
    empty_torch_home: Path, tmp_path: Path, suffix: str
) -> None:
    source = get_metric("lpips-random", seed=3)
    assert isinstance(source, LpipsMetric)
    file = tmp_path / f"lpips{suffix}"
    if suffix == ".safetensors":
        source.save_weights(file)
    else:
        torch.save(source.state_dict(), file)  # a state dict someone else wrote with torch
    loaded = get_metric("lpips", weights=file)
    student, teacher = _gray_digits(seed=0), _gray_digits(seed=1)
    assert loaded.name == "lpips"
    assert torch.equal(loaded(student, teacher), source(student, teacher))


def test_bad_weights_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="file not found"):
        get_metric("lpips", weights=tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable state dict"):
        get_metric("lpips", weights=garbage)
    alex = tmp_path / "alex.safetensors"
    source = get_metric("lpips-random")
    assert isinstance(source, LpipsMetric)
    source.save_weights(alex)
    with pytest.raises(ConfigError, match="not an LPIPS squeeze state dict"):
        get_metric("lpips-squeeze", weights=alex)
