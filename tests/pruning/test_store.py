"""A library built into a folder: every compensated plan solved once, on disk, equal to what the in-memory library
solves on demand; solved on Ray workers it is the same library, bit for bit, even when a worker dies."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from tiny import zoo_pipeline

from diffes.pruning import LocalSolver, PruningConfig, PruningLibrary, RaySolver, build_library
from diffes.pruning.build import solve_stage

CONFIG = PruningConfig(stages=2, steps=4, calibration_samples=2, levels=(0.0, 0.25, 0.5), nested=True)


@pytest.fixture(scope="module")
def pipe() -> object:
    return zoo_pipeline("dit-digits")


def plan_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "plans").iterdir())}


def test_a_folder_build_solves_every_plan_the_in_memory_library_would(pipe: object, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the solver pins its threads; the in-memory library solves with the caller's
    memory = build_library(pipe, CONFIG, progress=False)
    disk = build_library(pipe, CONFIG, progress=False, folder=tmp_path / "lib", solver=LocalSolver(threads=1))
    assert disk.store is not None and not disk.grams and not disk.consumers
    for stage in range(2):
        for level in range(3):
            a, b = memory.plan(stage, level), disk.plan(stage, level)
            assert a.replacements.keys() == b.replacements.keys() and (level == 0) == (not b.replacements)
            assert all(torch.equal(t, b.replacements[k]) for k, t in a.replacements.items())
            assert a.kept_units == b.kept_units and a.overrides == b.overrides
    # what a worker loads: scores and metadata; the plans stay on disk, one file per (stage, level) above dense
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["library.json", "plans", "scores.safetensors"]
    assert len(plan_files(tmp_path / "lib")) == 2 * 2 and os.listdir(tmp_path) == ["lib"]
    reloaded = PruningLibrary.load(tmp_path / "lib").plan(1, 2).replacements
    assert reloaded.keys() == b.replacements.keys() and all(
        torch.equal(t, b.replacements[k]) for k, t in reloaded.items()
    )


def test_a_library_missing_a_plan_file_is_refused(pipe: object, tmp_path: Path) -> None:
    build_library(pipe, CONFIG, progress=False, folder=tmp_path / "lib")
    (tmp_path / "lib" / "plans" / "plan_001_02.safetensors").unlink()
    with pytest.raises(Exception, match=r"plan_001_02\.safetensors: plan missing"):
        PruningLibrary.load(tmp_path / "lib")


def _dies_once(folder: str, stage: int, threads: int | None) -> int:
    """``solve_stage``, but the first attempt at stage 1 kills its own worker once it has written a plan."""
    marker = Path(folder).parent / "died"
    if stage == 1 and not marker.exists():
        solve_stage(folder, stage, threads)  # the retry must cope with what the dead attempt left
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return solve_stage(folder, stage, threads)


def test_ray_build_equals_local_build_and_survives_a_killed_worker(
    ray_address: str, pipe: object, tmp_path: Path
) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    local = tmp_path / "local"
    build_library(pipe, CONFIG, progress=False, folder=local, solver=LocalSolver(threads=1))
    built = build_library(pipe, CONFIG, progress=False, folder=tmp_path / "ray", solver=RaySolver(1, task=_dies_once))
    assert (tmp_path / "died").exists()
    assert plan_files(tmp_path / "ray") == plan_files(local)
    assert (tmp_path / "ray" / "scores.safetensors").read_bytes() == (local / "scores.safetensors").read_bytes()
    assert built.store is not None and built.store.folder == tmp_path / "ray" / "plans"
