"""Routed checkpoints: export, load into an ordinary pipeline, identical images; refusals that say why."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from tiny import zoo_pipeline

from diffes.errors import CheckpointError, ConfigError
from diffes.models.loading import load_pipeline_folder
from diffes.pruning import PruningConfig, build_library
from diffes.routing import RoutingSchedule, apply, export_routed, load_routed
from diffes.routing.checkpoint import ROUTING_SCHEMA

LEVELS = [7, 5, 2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    torch.set_flush_denormal(True)
    pipe = zoo_pipeline("dit-digits", trained=True)
    library = build_library(pipe, PruningConfig(stages=3, steps=6, calibration_samples=8), progress=False)
    pipe.scheduler.set_timesteps(6)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, LEVELS)
    out = export_routed(tmp_path_factory.mktemp("x") / "routed", pipe, library, schedule)
    handle = apply(pipe, library, schedule)
    images = sample(pipe)
    handle.remove()
    return out, images


def sample(pipe: object) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    return pipe([0, 3, 8], num_inference_steps=6, generator=gen, output_type="pt").images  # type: ignore[operator]


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_round_trip_gives_identical_images(exported: tuple[Path, torch.Tensor]) -> None:
    folder, images = exported
    meta = json.loads((folder / "routing.json").read_text())
    assert meta["levels"] == LEVELS and len(meta["edges"]) == 2 and meta["schema"] == ROUTING_SCHEMA
    assert 0 < meta["cost"]["macs_fraction"] < 1
    assert (folder / "pipeline" / "model_index.json").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))
    assert torch.equal(sample(load_routed(folder)), images)


def test_export_refuses_a_non_empty_folder(exported: tuple[Path, torch.Tensor]) -> None:
    folder, _ = exported
    with pytest.raises(ConfigError, match="not empty"):
        export_routed(folder, None, None, None)  # type: ignore[arg-type]


def test_export_refuses_a_routed_pipeline(tmp_path: Path) -> None:
    pipe = zoo_pipeline("dit-digits", trained=True)
    library = build_library(pipe, PruningConfig(stages=2, steps=4, calibration_samples=4, nested=True), progress=False)
    pipe.scheduler.set_timesteps(4)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, [3, 1])
    handle = apply(pipe, library, schedule)
    handle.router.reset()  # dense again, but still permuted: its weights are not the base model's
    with pytest.raises(ConfigError, match="a router is attached"):
        export_routed(tmp_path / "x", pipe, library, schedule)
    handle.remove()
    assert export_routed(tmp_path / "x", pipe, library, schedule).is_dir()


def test_tampered_plan(exported: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder = copy_of(exported[0], tmp_path / "t")
    plans = folder / "library" / "plans.safetensors"
    data = bytearray(plans.read_bytes())
    data[-5] ^= 0xFF
    plans.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"plans\.safetensors does not match its hash"):
        load_routed(folder)


def test_newer_schema(exported: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder = copy_of(exported[0], tmp_path / "s")
    meta = json.loads((folder / "routing.json").read_text())
    (folder / "routing.json").write_text(json.dumps({**meta, "schema": 99}))
    with pytest.raises(CheckpointError, match="schema 99 is newer"):
        load_routed(folder)


def test_different_base_model(exported: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    other = zoo_pipeline("unet-digits", trained=True)
    other.save_pretrained(tmp_path / "unet")
    with pytest.raises(CheckpointError, match="config differs"):
        load_routed(exported[0], base=tmp_path / "unet")
    same = copy_of(exported[0] / "pipeline", tmp_path / "same-base")
    assert torch.equal(sample(load_routed(exported[0], base=same)), exported[1])


def test_load_prints_nothing(exported: tuple[Path, torch.Tensor], capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    load_routed(exported[0])
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no accelerate warning, no "Loading pipeline components" bar


def test_pipeline_files_sizes_always_hashes_on_request(exported: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    folder = copy_of(exported[0], tmp_path / "p")
    meta = json.loads((folder / "routing.json").read_text())
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert set(meta["pipeline_files"]) >= {"model_index.json", weights}
    path = folder / "pipeline" / weights
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the same size: only the hash can tell
    path.write_bytes(bytes(data))
    load_routed(folder)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: does not match its SHA-256"):
        load_routed(folder, verify=True)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: \d+ bytes, \d+ at export"):
        load_routed(folder)


def test_export_modes_follow_the_umask(exported: tuple[Path, torch.Tensor]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in [exported[0], *exported[0].rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~umask, path  # save_pretrained alone gives 0600


def test_half_precision_export_loads_in_its_dtype(tmp_path: Path) -> None:
    """A bfloat16 search is served in bfloat16: routing.json records the dtype, plans are stored in it, and the
    loaded pipeline samples what the same base, loaded in that dtype and routed in memory, samples."""
    pipe = zoo_pipeline("dit-digits", trained=True).to(torch.bfloat16)
    library = build_library(pipe, PruningConfig(stages=2, steps=4, calibration_samples=2), progress=False)
    pipe.scheduler.set_timesteps(4)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, [5, 2])
    folder = export_routed(tmp_path / "bf16", pipe, library, schedule)
    assert json.loads((folder / "routing.json").read_text())["dtype"] == "bfloat16"
    routed = load_routed(folder)
    assert routed.transformer.dtype == torch.bfloat16
    base = load_pipeline_folder(folder / "pipeline", torch.bfloat16)
    handle = apply(base, library, schedule)
    images = sample(base)
    assert images.dtype == torch.bfloat16 and torch.equal(sample(routed), images)
    handle.remove()
    assert load_routed(folder, dtype="float32").transformer.dtype == torch.float32
    with pytest.raises(ConfigError, match="dtype='half'"):
        load_routed(folder, dtype="half")
