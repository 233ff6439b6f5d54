"""Turn what the user names (a zoo model or a local diffusers pipeline folder) into a pipeline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from diffes import families
from diffes.errors import ConfigError
from diffes.models.pipeline import ZooPipeline
from diffes.models.zoo import get_entry, load_model, sampling_scheduler

__all__ = [
    "load_pipeline",
    "load_pipeline_folder",
    "is_zoo_model",
    "model_conditioning",
    "pick_device",
    "torch_dtype",
    "fast_cpu_math",
]


def fast_cpu_math() -> None:
    """Flush denormal floats to zero. Attention and GELU tails produce denormals that make x86 CPUs
    several times slower (measured: 4.6x on the zoo DiT); the change in results is below 1e-38."""
    torch.set_flush_denormal(True)


def is_zoo_model(name: str) -> bool:
    return families.is_zoo_name(name)


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ConfigError("device", device, "use cpu, cuda or cuda:N") from None
        if chosen.type == "cuda" and (
            not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()
        ):
            raise ConfigError("device", device, "no such CUDA device is visible here; use --device cpu")
        return chosen
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_conditioning(model: str) -> str:
    """``"classes"`` or ``"prompts"``: what a zoo name or a pipeline folder is conditioned on (see
    ``diffes.families``, which knows it without loading anything)."""
    return families.model_conditioning(model)


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype called ``name``; float16 needs a GPU (CPU kernels for half convolutions and attention are
    missing or far slower than float32), bfloat16 runs on both."""
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ConfigError("dtype", name, f"use one of {', '.join(dtypes)}")
    if name == "float16" and device.type == "cpu":
        raise ConfigError("dtype", name, "float16 needs a CUDA device; use float32 or bfloat16 on the CPU")
    return dtypes[name]


def load_pipeline_folder(path: Path, dtype: torch.dtype | None = None) -> Any:
    """A pipeline saved with ``save_pretrained`` (ours or any diffusers class), from local files only."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    # diffusers 0.42 takes `dtype` (its `torch_dtype` is deprecated and warns on every load); float32 is its default
    half = dtype is not None and dtype != torch.float32
    kwargs = {"local_files_only": True} | ({"dtype": dtype} if half else {})
    cls = ZooPipeline if families.pipeline_class(path) == ZooPipeline.__name__ else DiffusionPipeline
    # no 'Loading pipeline components' bar: progress bars belong to diffes' own long steps
    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path, **kwargs)
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()


def zoo_pipeline(name: str, weights: str | os.PathLike[str] | None = None) -> ZooPipeline:
    """The zoo generator ``name`` in its sampling pipeline, with the shipped weights or those in ``weights``."""
    return ZooPipeline(sampling_scheduler(), **{get_entry(name).kind: load_model(name, weights)})


def load_pipeline(model: str, device: str | torch.device | None = None, dtype: str = "float32") -> Any:
    """A zoo name gives a ``ZooPipeline``; a folder with ``model_index.json`` gives its diffusers pipeline."""
    fast_cpu_math()  # every command that samples loads a pipeline first
    dev = pick_device(str(device) if device is not None else None)
    model_conditioning(model)  # the one-line errors for unknown names and unsupported classes
    torch_type = torch_dtype(dtype, dev)
    from diffes.models.t2i import load_t2i_pipeline
    from diffes.models.zoo import TEXT_GENERATORS

    if model in TEXT_GENERATORS:  # a diffusers pipeline folder shipped in the package, loaded as a user's is
        pipe = load_t2i_pipeline(dtype=torch_type).to(dev)
    elif is_zoo_model(model):
        pipe = zoo_pipeline(model).to(dev)
        if torch_type != torch.float32:  # diffusers warns on every .to(dtype=...), float32 included
            pipe = pipe.to(torch_type)
    else:
        pipe = load_pipeline_folder(Path(model), torch_type).to(dev)
    return pipe
