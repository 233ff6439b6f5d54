"""LPIPS distances (Zhang et al. 2018) with weights from a local cache or file only, never a download.

The linear layers ship inside the ``lpips`` package. The backbone (AlexNet, VGG16 or SqueezeNet 1.1) comes from
torchvision's hub cache, read here directly: diffes builds the net with a random backbone and loads the cached
file itself, so torchvision never gets the chance to start a download that would hang on an offline machine.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import lpips
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from torchvision import models as tv

from diffes.errors import ConfigError, MissingWeightsError
from diffes.fitness.base import FrozenNet, PairMetric, as_rgb, private_rng, upsample_min_side
from diffes.io import write_tensors

__all__ = ["LPIPS_NETS", "LpipsMetric", "load_lpips", "random_lpips", "backbone_cache_file"]

# Metric name -> lpips backbone.
LPIPS_NETS = {"lpips": "alex", "lpips-vgg": "vgg", "lpips-squeeze": "squeeze"}
# The checkpoints lpips asks torchvision for with its legacy ``pretrained=True``.
_BACKBONE_WEIGHTS = {
    "alex": tv.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": tv.VGG16_Weights.IMAGENET1K_V1,
    "squeeze": tv.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}
# AlexNet's stride-4 stem and pooling leave one pixel of an 8x8 image by the last layers; at 64 they keep 3x3.
MIN_SIDE = 64


class LpipsMetric(PairMetric):
    """LPIPS distance per probe; gray images become RGB and small images are upsampled to ``MIN_SIDE``."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self._net = FrozenNet(model)

    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        model = self._net.on(student.device)
        a = upsample_min_side(as_rgb(student), MIN_SIDE)
        b = upsample_min_side(as_rgb(teacher), MIN_SIDE)
        return model(a, b, normalize=True).flatten()

    def state_dict(self) -> dict[str, Tensor]:
        """The weights without aliases: lpips lists each linear layer twice (``linK`` and ``lins.K``)."""
        state = self._net.module.state_dict()
        return {key: state[key] for key in _canonical_keys(self._net.module)}

    def save_weights(self, path: str | os.PathLike[str]) -> Path:
        """Write the full LPIPS state dict as safetensors, for ``--lpips-weights`` on an offline machine."""
        path = Path(path)
        write_tensors(path, self.state_dict())
        return path


def backbone_cache_file(net: str) -> Path:
    """Where torchvision keeps (and lpips would look for) the ImageNet backbone of ``net``."""
    url = _BACKBONE_WEIGHTS[net].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_lpips(name: str = "lpips", weights: str | os.PathLike[str] | None = None) -> LpipsMetric:
    """The LPIPS metric ``name`` from a saved state dict (``weights``) or else from torchvision's cache."""
    net = LPIPS_NETS[name]
    if weights is not None:
        return LpipsMetric(name, _from_file(net, Path(weights)))
    return LpipsMetric(name, _from_cache(net))


def random_lpips(seed: int = 0) -> LpipsMetric:
    """LPIPS with the real linear layers on a seeded random AlexNet: works offline, for tests and smoke runs."""
    return LpipsMetric("lpips-random", _build("alex", linear_layers=True, seed=seed))


def _build(net: str, linear_layers: bool, seed: int = 0) -> Any:
    with warnings.catch_warnings(), private_rng(seed):
        # lpips passes torchvision's deprecated ``pretrained=False``; the warning is about lpips, not the user.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(net=net, pretrained=linear_layers, pnet_rand=True, verbose=False)


def _from_cache(net: str) -> Any:
    file = backbone_cache_file(net)
    if not file.is_file():
        raise MissingWeightsError(
            f"lpips: backbone weights {file.name} not found in {file.parent} (torchvision's hub cache, "
            f"under $TORCH_HOME) and diffes never downloads; pass --lpips-weights FILE (an LPIPS state dict) "
            f"or place the file in that folder (fetch {_BACKBONE_WEIGHTS[net].url} on a machine with internet)"
        )
    try:
        backbone = _read_state_dict(file)
    except ValueError as e:
        raise MissingWeightsError(f"lpips: {file} is unreadable ({e}); delete it and place a fresh copy") from None
    model = _build(net, linear_layers=True)
    # lpips splits torchvision's ``features`` into slices but keeps each layer's index: sliceK.I.* <- features.I.*
    wanted = {key: "features." + key.split(".", 1)[1] for key in model.net.state_dict()}
    missing = [source for source in wanted.values() if source not in backbone]
    if missing:
        raise MissingWeightsError(f"lpips: {file} lacks {missing[0]}; it is not torchvision's {net} checkpoint")
    model.net.load_state_dict({key: backbone[source] for key, source in wanted.items()})
    return model


def _from_file(net: str, path: Path) -> Any:
    if not path.is_file():
        raise MissingWeightsError(
            f"lpips-weights={str(path)!r}: file not found; give an LPIPS state dict saved with "
            f"LpipsMetric.save_weights (.safetensors) or a torch state dict file"
        )
    try:
        state = _read_state_dict(path)
    except ValueError as e:
        raise ConfigError("lpips-weights", str(path), f"not a readable state dict ({e})") from None
    model = _build(net, linear_layers=False)
    # A file may list the aliases too (a plain torch state dict does); only the canonical keys are required.
    required = _canonical_keys(model)
    missing = set(required) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ConfigError(
            "lpips-weights",
            str(path),
            f"not an LPIPS {net} state dict ({len(missing)} keys missing, {len(unexpected)} unexpected); "
            f"check the net matches the metric name",
        )
    model.load_state_dict({key: state[key] for key in required}, strict=False)
    return model


def _canonical_keys(model: Any) -> list[str]:
    """State-dict keys, keeping only the first name of a tensor that several modules share."""
    seen: set[int] = set()
    keys = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            keys.append(key)
    return keys


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file or of a torch file loaded without unpickling code; ValueError if neither."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("the file holds no flat mapping of names to tensors")
    return state
