"""Turn what the user names (a zoo model or a local diffusers pipeline folder) into a pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from diffes.errors import ConfigError, MissingWeightsError
from diffes.models.pipeline import ZooPipeline
from diffes.models.zoo import ZOO, get_entry, load_model, sampling_scheduler

__all__ = ["load_pipeline", "load_pipeline_folder", "is_zoo_model", "pick_device", "fast_cpu_math"]


def fast_cpu_math() -> None:
    """Flush denormal floats to zero. Attention and GELU tails produce denormals that make x86 CPUs
    several times slower (measured: 4.6x on the zoo DiT); the change in results is below 1e-38."""
    torch.set_flush_denormal(True)


def is_zoo_model(name: str) -> bool:
    return name in ZOO


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", device, "no CUDA device is visible here; use --device cpu")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline_folder(path: Path) -> Any:
    """A pipeline saved with ``save_pretrained`` (ours or any diffusers class), from local files only."""
    index = path / "model_index.json"
    if not index.is_file():
        raise MissingWeightsError(f"model={str(path)!r}: {index} is missing; not a diffusers pipeline folder")
    if json.loads(index.read_text()).get("_class_name") == ZooPipeline.__name__:
        return ZooPipeline.from_pretrained(path, local_files_only=True)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path, local_files_only=True)


def zoo_pipeline(name: str, weights: str | os.PathLike[str] | None = None) -> ZooPipeline:
    """The zoo generator ``name`` in its sampling pipeline, with the shipped weights or those in ``weights``."""
    return ZooPipeline(sampling_scheduler(), **{get_entry(name).kind: load_model(name, weights)})


def load_pipeline(model: str, device: str | torch.device | None = None) -> Any:
    """A zoo name gives a ``ZooPipeline``; a folder with ``model_index.json`` gives its diffusers pipeline."""
    dev = pick_device(str(device) if device is not None else None)
    if is_zoo_model(model):
        entry = get_entry(model)
        if entry.kind == "classifier":
            raise ConfigError("model", model, "that is the judge classifier; pick a generator such as dit-digits")
        return zoo_pipeline(model).to(dev)
    path = Path(model)
    if path.is_dir():
        return load_pipeline_folder(path).to(dev)
    get_entry(model)  # raises the unknown-name error that lists the zoo
    raise AssertionError("unreachable")
