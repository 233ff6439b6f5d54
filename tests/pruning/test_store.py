"""A library built into a folder: every compensated plan solved once, on disk, equal to what the in-memory library
solves on demand; solved on Ray workers it is the same library, bit for bit, even when a worker dies."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import zoo_pipeline

from diffes.pruning import LocalSolver, PruningConfig, PruningLibrary, RaySolver, build_library, store
from diffes.pruning.build import solve_stage
from diffes.routing import RoutingSchedule, apply
from diffes.routing.router import Router

CONFIG = PruningConfig(stages=2, steps=4, calibration_samples=2, levels=(0.0, 0.25, 0.5), nested=True)


@pytest.fixture(scope="module")
def pipe() -> object:
    return zoo_pipeline("dit-digits")


@pytest.fixture(scope="module")
def built(pipe: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[PruningLibrary, PruningLibrary]:
    """The same library in memory and built into a folder (the solver pinned to one thread, the in-memory
    library solving on demand with one thread too)."""
    torch.set_num_threads(1)
    memory = build_library(pipe, CONFIG, progress=False)
    folder = tmp_path_factory.mktemp("built") / "lib"
    return memory, build_library(pipe, CONFIG, progress=False, folder=folder, solver=LocalSolver(threads=1))


def plan_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "plans").iterdir())}


def test_a_folder_build_solves_every_plan_the_in_memory_library_would(
    built: tuple[PruningLibrary, PruningLibrary],
) -> None:
    torch.set_num_threads(1)
    memory, disk = built
    assert disk.store is not None
    folder = disk.store.folder.parent
    assert disk.store is not None and not disk.grams and not disk.consumers
    for stage in range(2):
        for level in range(3):
            a, b = memory.plan(stage, level), disk.plan(stage, level)
            assert a.replacements.keys() == b.replacements.keys() and (level == 0) == (not b.replacements)
            assert all(torch.equal(t, b.replacements[k]) for k, t in a.replacements.items())
            assert a.kept_units == b.kept_units and a.overrides == b.overrides
    # what a worker loads: scores and metadata; the plans stay on disk, one file per (stage, level) above dense
    assert sorted(p.name for p in folder.iterdir()) == ["library.json", "plans", "scores.safetensors"]
    assert len(plan_files(folder)) == 2 * 2 and os.listdir(folder.parent) == ["lib"]
    reloaded = PruningLibrary.load(folder).plan(1, 2).replacements
    assert reloaded.keys() == b.replacements.keys() and all(
        torch.equal(t, b.replacements[k]) for k, t in reloaded.items()
    )


def test_a_library_missing_a_plan_file_is_refused(built: tuple[PruningLibrary, PruningLibrary], tmp_path: Path) -> None:
    assert built[1].store is not None
    shutil.copytree(built[1].store.folder.parent, tmp_path / "lib")
    (tmp_path / "lib" / "plans" / "plan_001_02.safetensors").unlink()
    with pytest.raises(Exception, match=r"plan_001_02\.safetensors: plan missing"):
        PruningLibrary.load(tmp_path / "lib")


def _dies_once(folder: str, stage: int, threads: int | None) -> int:
    """``solve_stage``, but the first attempt at stage 1 kills its own worker (SIGKILL) mid-stage, right after
    writing its first plan: the retry keeps that plan and solves the rest."""
    from diffes.pruning.store import PlanStore

    marker = Path(folder).parent / "died"
    if stage == 1 and not marker.exists():
        marker.touch()
        write = PlanStore.write

        def write_then_die(self: PlanStore, *args: Any) -> None:
            write(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)

        PlanStore.write = write_then_die  # type: ignore[method-assign]  # this worker dies with it
    return solve_stage(folder, stage, threads)


def test_ray_build_equals_local_build_and_survives_a_killed_worker(
    ray_address: str, pipe: object, built: tuple[PruningLibrary, PruningLibrary], tmp_path: Path
) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    assert built[1].store is not None
    local = built[1].store.folder.parent  # the local build, one solver thread
    on_ray = build_library(pipe, CONFIG, progress=False, folder=tmp_path / "ray", solver=RaySolver(1, task=_dies_once))
    assert (tmp_path / "died").exists()
    assert plan_files(tmp_path / "ray") == plan_files(local)
    assert (tmp_path / "ray" / "scores.safetensors").read_bytes() == (local / "scores.safetensors").read_bytes()
    assert on_ray.store is not None and on_ray.store.folder == tmp_path / "ray" / "plans"


def test_a_bounded_router_keeps_only_the_active_table_and_routes_exactly(
    pipe: object, built: tuple[PruningLibrary, PruningLibrary]
) -> None:
    torch.set_num_threads(1)
    memory, disk = built
    model = pipe.transformer  # type: ignore[attr-defined]
    x, t, y = (
        torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.tensor([500]),
        torch.tensor([3]),
    )
    pairs = [(0, 1), (1, 2), (0, 2), (1, 1), (0, 1)]
    router = Router(model, memory)
    expected = []
    for stage, level in pairs:
        router.set_level(stage, level)
        expected.append(model(x, t, class_labels=y).sample)
    router.remove()
    bounded = Router(model, disk, cache_mb=0)
    for (stage, level), want in zip(pairs, expected):
        bounded.set_level(stage, level)
        assert torch.equal(model(x, t, class_labels=y).sample, want) and list(bounded.tables) == [(stage, level)]
    bounded.remove()


def test_the_estimate_matches_what_the_build_and_a_router_hold(
    pipe: object, built: tuple[PruningLibrary, PruningLibrary]
) -> None:
    from diffes.pruning.estimate import estimate_library

    memory, disk = built
    model = pipe.transformer  # type: ignore[attr-defined]
    gather = dataclasses.replace(CONFIG, nested=False)  # gather routing: a non-nested library
    est, est_gather = (estimate_library(model, memory.structure, c) for c in (CONFIG, gather))
    assert est.grams_stage_bytes == sum(g.numel() * 8 for g in memory.grams[0].values())
    stored = [disk.plan(s, lv).replacements for s in range(2) for lv in range(3)]
    scores = sum(t.numel() * 4 for stage in disk.scores for t in stage.values())
    assert est.library_disk_bytes == sum(t.numel() * 4 for r in stored for t in r.values()) + scores
    assert est.plan_bytes[0] == 0 < est.plan_bytes[2] < est.plan_bytes[1]
    router = Router(model, memory, mode="gather")
    router.set_level(0, 1)
    buffers = sum(b.numel() * 4 for b in router.buffers.values())
    assert est_gather.worker_bytes == buffers + 2 * sum(est.plan_bytes)  # every plan fits the default cache
    router.remove()


def test_routing_reads_the_next_stages_plan_ahead(
    pipe: Any, built: tuple[PruningLibrary, PruningLibrary], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While stage 0 runs, the hook has stage 1's plan file read into the page cache (on a thread of its own);
    a plan already prepared, dense, or absent is not read, and sampling is unchanged."""
    _, disk = built
    assert disk.store is not None
    read: list[tuple[Path, int]] = []
    read_through = store.read_through

    def spy(path: Path) -> int:
        read.append((path, read_through(path)))
        return read[-1][1]

    monkeypatch.setattr(store, "read_through", spy)
    pipe.scheduler.set_timesteps(4)
    schedule = RoutingSchedule.from_stages(disk.schedule, pipe.scheduler.timesteps, [2, 1])
    images = []
    for prepare in (False, True):
        handle = apply(pipe, disk, schedule, prepare=prepare)
        gen = torch.Generator().manual_seed(0)
        images.append(pipe([3], num_inference_steps=4, generator=gen, output_type="pt").images)
        handle.remove()
    for thread in threading.enumerate():
        if thread.name == "diffes-plan-prefetch":
            thread.join()
    path = disk.store.path(1, 1)
    # once, before stage 0, all of the file; nothing when every table is prepared
    assert read == [(path, path.stat().st_size)]
    assert torch.equal(images[0], images[1])
    assert disk.store.prefetch(5, 5) is None  # a missing file: reported when routed to, not here
