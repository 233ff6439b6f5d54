"""Routed checkpoints: base pipeline (diffusers layout) + plans + routing.json, loadable anywhere.

out/
  pipeline/        the dense base pipeline, ``save_pretrained`` layout (safetensors + configs)
  library/         structure, unit order and the schedule's plans (safetensors + JSON)
  routing.json     schema, levels per stage, stage edges in timesteps, cost, hashes of the plan files, the
                   denoiser's dtype (``dtype``: plans are stored in it), and the size and SHA-256 of every
                   file under pipeline/; from a joint search also the cache rule (``cache``) and the step
                   count it was searched at (``num_steps``)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, with_config
from typing_extensions import NotRequired, TypedDict

from diffes import __version__
from diffes.errors import CheckpointError, ConfigError, DiffesError
from diffes.io import atomic_dir, check_folder_path, read_json, write_json
from diffes.models.loading import load_pipeline_folder, pick_device
from diffes.models.steps import find_denoiser
from diffes.pruning.library import PruningLibrary
from diffes.routing.hook import RoutingSchedule, apply
from diffes.routing.router import ROUTER_MARK
from diffes.schema import RECORD, NonNegative, reading, validate

__all__ = ["export_routed", "load_routed", "config_hash", "check_export_folder", "ROUTING_SCHEMA"]

ROUTING_SCHEMA = 2  # 2: sizes and SHA-256 of the pipeline's own files (``pipeline_files``)
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
    replace: bool = False,
    cache: Any = None,
    num_steps: int | None = None,
) -> Path:
    """Write a routed checkpoint; the folder appears complete or not at all (``replace``: an existing one
    is swapped out whole). ``cache``: a cache rule ``load_routed`` applies with the routing; ``num_steps``:
    the step count to sample with (a joint search's choice)."""
    out = check_export_folder(folder, replace)
    _, denoiser = find_denoiser(pipe)
    if ROUTER_MARK in denoiser.__dict__:
        raise ConfigError("pipe", type(pipe).__name__, "a router is attached: export the dense pipeline (remove() it)")
    with atomic_dir(out, replace=replace) as tmp:
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
            "dtype": dtype_name(next(denoiser.parameters()).dtype),
            "files": {name: _file_hash(tmp / name) for name in HASHED},
            # diffusers reads these itself; sizes are checked on every load, hashes with verify=True
            "pipeline_files": _file_records(tmp / "pipeline"),
            **({"cache": cache.to_dict()} if cache is not None else {}),
            **({"num_steps": num_steps} if num_steps is not None else {}),
            **(extra or {}),
        }
        write_json(tmp / "routing.json", meta)
    return out


def check_export_folder(folder: str | os.PathLike[str], replace: bool = False) -> Path:
    """``folder`` can take a new export: a folder path (no file in the way) that is absent or empty."""
    out = check_folder_path("out", folder)
    if not replace and out.is_dir() and any(out.iterdir()):
        raise ConfigError("out", str(out), "the folder exists and is not empty; choose a new one")
    return out


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _file_hash(p)} for p in files}


def _member(folder: Path, name: str, meta_file: Path) -> Path:
    """``folder/name`` for a file name the export lists, refused if it would lead out of ``folder``."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\0" in name:
        raise CheckpointError(f"{meta_file}: file name {name!r} leads outside the export; {FIX}")
    return folder.joinpath(*parts)


def read_routing(folder: Path) -> dict[str, Any]:
    """routing.json, checked against its schema, with the hash of every plan file (they are small)."""
    path = folder / "routing.json"
    if not path.is_file():
        raise CheckpointError(f"routed={str(folder)!r}: no routing.json; export one with `diffes export`")
    data = read_json(path, dict[str, Any], FIX)
    schema = validate(_Schema, data, path, FIX)["schema"]  # first: a newer export says "upgrade", not "corrupt"
    if schema > ROUTING_SCHEMA:
        raise CheckpointError(
            f"routed={str(folder)!r}: schema {schema} is newer than {ROUTING_SCHEMA}, "
            "the newest this diffes reads; upgrade diffes"
        )
    meta: dict[str, Any] = validate(_RoutingJson, data, path, FIX)
    if meta["schema"] >= 2 and "pipeline_files" not in meta:
        raise CheckpointError(f"{path}: pipeline_files: field required; {FIX}")
    with reading(path, FIX):
        RoutingSchedule.from_dict(meta)
    for name, digest in meta["files"].items():
        member = _member(folder, name, path)
        if not member.is_file():
            raise CheckpointError(f"routed={str(folder)!r}: {name} is missing; the export is incomplete")
        if _file_hash(member) != digest:
            raise CheckpointError(f"routed={str(folder)!r}: {name} does not match its hash; the plan was modified")
    return meta


def check_pipeline_files(folder: Path, meta: dict[str, Any], verify: bool = False) -> None:
    """The exported pipeline's files as recorded at export: sizes always, SHA-256 with ``verify`` (hashing a
    large pipeline takes minutes)."""
    pipeline = folder / "pipeline"
    for name, record in meta.get("pipeline_files", {}).items():
        path = _member(pipeline, name, folder / "routing.json")
        if not path.is_file():
            raise CheckpointError(f"{path}: file is missing; the export is incomplete, export it again")
        if path.stat().st_size != record["size"]:
            size = path.stat().st_size
            raise CheckpointError(f"{path}: {size} bytes, {record['size']} at export; the file is damaged")
        if verify and _file_hash(path) != record["sha256"]:
            raise CheckpointError(f"{path}: does not match its SHA-256 from export; the file is damaged")


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, t in DTYPES.items() if t == dtype)


def _load_base(path: Path, dtype: torch.dtype) -> Any:
    try:
        return load_pipeline_folder(path, dtype)
    except DiffesError:
        raise
    except (OSError, ValueError, RuntimeError) as e:  # diffusers' and safetensors' errors for damaged files
        reason = " ".join(str(e).split())[:160]
        raise CheckpointError(
            f"base={str(path)!r}: diffusers cannot load it ({type(e).__name__}: {reason}); "
            "check its files with load_routed(..., verify=True)"
        ) from None


def load_routed(
    folder: str | os.PathLike[str],
    device: str | None = None,
    base: str | os.PathLike[str] | None = None,
    mode: str = "auto",
    verify: bool = False,
    dtype: str | None = None,
) -> Any:
    """A ready pipeline that routes by the exported schedule on every ``pipe(...)`` call.

    ``base`` loads the dense pipeline from another folder (it must have the same architecture).
    ``verify`` also checks the SHA-256 of every file of the exported pipeline (its sizes are always checked).
    ``dtype`` (float32, float16, bfloat16): the pipeline's dtype; by default the one it was exported in, so
    a half-precision search is served as it was searched.
    """
    folder = Path(folder)
    meta = read_routing(folder)
    name = dtype or meta.get("dtype", "float32")
    if name not in DTYPES:
        raise ConfigError("dtype", name, f"use one of {', '.join(DTYPES)}")
    if base is None:
        check_pipeline_files(folder, meta, verify)
    pipe = _load_base(Path(base) if base is not None else folder / "pipeline", DTYPES[name])
    _, denoiser = find_denoiser(pipe)
    if config_hash(denoiser) != meta["base_config_sha256"]:
        raise CheckpointError(
            f"base={str(base or folder / 'pipeline')!r}: its denoiser config differs from the one this routed "
            f"checkpoint was made for; load it with its own base"
        )
    pipe = pipe.to(pick_device(device))
    library = PruningLibrary.load(folder / "library")
    schedule = RoutingSchedule.from_dict(meta)
    if len(schedule.levels) != library.num_stages or max(schedule.levels) >= library.num_levels:
        fix = f"the library has {library.num_stages} stages and {library.num_levels} levels; {FIX}"
        raise CheckpointError(f"{folder / 'routing.json'}: levels: {list(schedule.levels)}: {fix}")
    handle = apply(pipe, library, schedule, mode=mode)
    pipe.__dict__["_diffes_routing"] = handle
    if "cache" in meta:
        from diffes.caching import apply_cache, rule_from_dict

        with reading(folder / "routing.json", FIX):
            rule = rule_from_dict(meta["cache"])
        pipe.__dict__["_diffes_cache"] = apply_cache(pipe, rule, handle)
    return pipe


# ---- the schema of routing.json (diffes.schema) ----

FIX = "the routed checkpoint is corrupt; export it again"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Schema(TypedDict):
    schema: Annotated[int, Field(ge=1)]


class _FileRecord(TypedDict):
    size: NonNegative
    sha256: Sha256


@with_config(RECORD)
class _RoutingJson(TypedDict):
    schema: Annotated[int, Field(ge=1)]
    levels: Annotated[list[NonNegative], Field(min_length=1)]
    edges: list[float]
    base_config_sha256: Sha256
    files: dict[str, Sha256]
    pipeline_files: NotRequired[dict[str, _FileRecord]]
    cache: NotRequired[dict[str, Any]]
    num_steps: NotRequired[Annotated[int, Field(ge=1)]]
    dtype: NotRequired[Literal["float32", "float16", "bfloat16", "float64"]]
