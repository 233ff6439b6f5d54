"""Routed checkpoints: base pipeline (diffusers layout) + plans + routing.json, loadable anywhere.

out/
  pipeline/        the dense base pipeline, ``save_pretrained`` layout (safetensors + configs)
  library/         structure, unit order and the schedule's plans (safetensors + JSON)
  routing.json     schema, levels per stage, stage edges in timesteps, cost, hashes
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffes import __version__
from diffes.errors import CheckpointError, ConfigError
from diffes.io import read_json, write_json
from diffes.models.loading import load_pipeline_folder, pick_device
from diffes.models.steps import find_denoiser
from diffes.pruning.library import PruningLibrary
from diffes.routing.hook import RoutingSchedule, apply
from diffes.routing.router import ROUTER_MARK

__all__ = ["export_routed", "load_routed", "config_hash", "ROUTING_SCHEMA"]

ROUTING_SCHEMA = 1
HASHED = ("library/library.json", "library/scores.safetensors", "library/plans.json", "library/plans.safetensors")


def config_hash(denoiser: torch.nn.Module) -> str:
    """Identity of a base model's architecture: sha256 of its diffusers config."""
    config = dict(getattr(denoiser, "config", {}))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_routed(
    folder: str | os.PathLike[str],
    pipe: Any,
    library: PruningLibrary,
    schedule: RoutingSchedule,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a routed checkpoint; the folder appears complete or not at all."""
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", str(out), "the folder exists and is not empty; choose a new one")
    _, denoiser = find_denoiser(pipe)
    if ROUTER_MARK in denoiser.__dict__:
        raise ConfigError("pipe", type(pipe).__name__, "a router is attached: export the dense pipeline (remove() it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
        pairs = [(s, lv) for s, lv in enumerate(schedule.levels)]
        library.export(tmp / "library", pairs)
        lengths = library.schedule.stage_lengths()
        per_stage = [library.costs[lv].macs / library.dense_macs for lv in schedule.levels]
        meta = {
            "schema": ROUTING_SCHEMA,
            "diffes_version": __version__,
            "pipeline_class": type(pipe).__name__,
            **schedule.to_dict(),
            "search_steps": library.schedule.num_steps,
            "stage_steps": lengths,
            "cost": {"macs_fraction": library.stage_cost(schedule.levels), "macs_fraction_per_stage": per_stage},
            "base_config_sha256": config_hash(denoiser),
            "files": {name: _file_hash(tmp / name) for name in HASHED},
            **(extra or {}),
        }
        write_json(tmp / "routing.json", meta)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def read_routing(folder: Path) -> dict[str, Any]:
    if not (folder / "routing.json").is_file():
        raise CheckpointError(f"routed={str(folder)!r}: no routing.json; export one with `diffes export`")
    meta: dict[str, Any] = read_json(folder / "routing.json")
    schema = meta.get("schema")
    if not isinstance(schema, int) or schema > ROUTING_SCHEMA:
        raise CheckpointError(
            f"routed={str(folder)!r}: schema {schema} is newer than {ROUTING_SCHEMA}, "
            "the newest this diffes reads; upgrade diffes"
        )
    for name, digest in meta["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"routed={str(folder)!r}: {name} is missing; the export is incomplete")
        if _file_hash(path) != digest:
            raise CheckpointError(f"routed={str(folder)!r}: {name} does not match its hash; the plan was modified")
    return meta


def load_routed(
    folder: str | os.PathLike[str],
    device: str | None = None,
    base: str | os.PathLike[str] | None = None,
    mode: str = "auto",
) -> Any:
    """A ready pipeline that routes by the exported schedule on every ``pipe(...)`` call.

    ``base`` loads the dense pipeline from another folder (it must have the same architecture).
    """
    folder = Path(folder)
    meta = read_routing(folder)
    pipe = load_pipeline_folder(Path(base) if base is not None else folder / "pipeline")
    _, denoiser = find_denoiser(pipe)
    if config_hash(denoiser) != meta["base_config_sha256"]:
        raise CheckpointError(
            f"base={str(base or folder / 'pipeline')!r}: its denoiser config differs from the one this routed "
            f"checkpoint was made for; load it with its own base"
        )
    pipe = pipe.to(pick_device(device))
    library = PruningLibrary.load(folder / "library")
    handle = apply(pipe, library, RoutingSchedule.from_dict(meta), mode=mode)
    pipe.__dict__["_diffes_routing"] = handle
    return pipe
