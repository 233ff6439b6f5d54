"""The measurements of the real-size benchmark; ``build``, ``worker`` and ``speed`` each run in a fresh process
(``python -m benchmarks.real_size --part NAME ...``), so peak resident memory is their own."""

from __future__ import annotations

import argparse
import dataclasses
import random
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.real_size_models import FULL_DEPTH, MODELS, PUBLISHED_GMACS, Rig, build_model, make_call

GB = 2**30


def rss_gb() -> float:
    return _status("VmRSS")


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(key))
    return kb / 2**20


def reset_peak() -> None:
    """Start the kernel's peak-RSS counter (VmHWM) afresh from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def device_of(args: argparse.Namespace) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")


def config_for(args: argparse.Namespace) -> Any:
    from diffes.pruning import PruningConfig

    return PruningConfig(
        importance=args.importance, stages=args.stages, steps=args.steps, compensate=True, levels=args.levels
    )


def macs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per model at full size, on the meta device: parameters, MACs per call (and the attention-matmul share,
    which some published counts leave out), and the library estimate at the benchmark's stages x levels."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffes.pruning.calibration import map_tensors, run_call
    from diffes.pruning.cost import _EXTRA_FLOPS
    from diffes.pruning.estimate import estimate_library, structure_of

    rows = []
    for name in args.models.split(",") if args.models else MODELS:
        with torch.device("meta"):
            model = build_model(name)
        call = map_tensors(make_call(name, 1, 0, args.steps, torch.float32), lambda t: t.to("meta"))
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            run_call(model, call)
        ops = counter.get_flop_counts()["Global"]
        # on the meta device attention runs as its math decomposition: its score and value matmuls are the bmm
        attention = sum(v for k, v in ops.items() if "scaled_dot_product" in str(k) or str(k) == "aten.bmm") // 2
        row: dict[str, Any] = {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "gmacs": counter.get_total_flops() / 2e9,
            "attention_gmacs": attention / 1e9,
            "published_gmacs": PUBLISHED_GMACS.get(name),
        }
        try:
            est = estimate_library(model, structure_of(model, call, config_for(args)), config_for(args))
            row["estimate"] = {k: v for k, v in est.__dict__.items() if k != "plan_bytes"}
        except Exception as e:
            # torch-pruning 1.6 cannot trace a full-depth Flux (its channel inference stops after 500 graph visits
            # and a concat's split comes out None); every estimate term is linear in the block count
            row["estimate_error"] = f"{type(e).__name__}: {str(e)[:160]}"
            if name in FULL_DEPTH:
                row["estimate"] = _linear_estimate(name, args, call)
                row["estimate_from_depths"] = [1, 2]
        rows.append(row)
        print(row, flush=True)
    return rows


def _linear_estimate(name: str, args: argparse.Namespace, call: Any) -> dict[str, int]:
    from diffes.pruning.estimate import estimate_library, structure_of

    rows = []
    for depth in (1, 2):
        with torch.device("meta"):
            model = build_model(name, depth)
        est = estimate_library(model, structure_of(model, call, config_for(args)), config_for(args))
        rows.append({k: v for k, v in est.__dict__.items() if k != "plan_bytes"})
    full = FULL_DEPTH[name]
    return {k: int(rows[0][k] + (rows[1][k] - rows[0][k]) * (full - 1)) for k in rows[0]}


def build(args: argparse.Namespace) -> dict[str, Any]:
    """One library build into ``args.folder`` (calibration, then every plan solved), timed and measured."""
    from diffes.pruning import LocalSolver, build_library
    from diffes.pruning.estimate import estimate_library

    dtype, device = getattr(torch, args.dtype), device_of(args)
    model = build_model(args.model, args.depth, dtype).to(device)
    rows = 2 * args.samples
    rig = Rig(args.model, model, rows, dtype)
    times: dict[str, float] = {}

    class TimedSolver(LocalSolver):
        def __call__(self, folder: Path, stages: list[int], progress: bool) -> None:
            times["calibrated"] = time.perf_counter()
            times["calibrate_peak_rss_gb"] = _status("VmHWM")  # grows with depth; the solve's peak does not
            reset_peak()
            super().__call__(folder, stages, progress)
            times["solved"] = time.perf_counter()

    before = rss_gb()
    start = time.perf_counter()
    library = build_library(rig, config_for(args), rig.run, False, args.folder, TimedSolver(), replace=True)
    seconds = time.perf_counter() - start
    assert library.store is not None
    est = estimate_library(model, library.structure, library.config)
    active = estimate_library(model, library.structure, dataclasses.replace(library.config, plan_cache_mb=0))
    return {
        "part": "build",
        "model": args.model,
        "depth": args.depth,
        "dtype": args.dtype,
        "device": str(device),
        "steps": args.steps,
        "stages": args.stages,
        "levels": len(library.config.levels),
        "rows_per_call": rows,
        "params_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / GB,
        "rss_before_gb": before,
        "calibrate_peak_rss_gb": times["calibrate_peak_rss_gb"],
        "solve_peak_rss_gb": _status("VmHWM"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cuda_peak_gb": torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else None,
        "disk_gb": sum(p.stat().st_size for p in Path(args.folder).rglob("*") if p.is_file()) / GB,
        "calibrate_s": times["calibrated"] - start,
        "solve_s": times["solved"] - times["calibrated"],
        "build_s": seconds,
        "estimate": {k: v for k, v in est.__dict__.items() if k != "plan_bytes"},
        "estimate_worker_active_bytes": active.worker_bytes,
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """A search worker's life: the model, the library from ``args.folder``, a router bounded as a run bounds it,
    and random schedules, each stage switched to and run once. Peak RSS (mapped plan pages included) over the
    dense model's own, and how long a switch takes with plans read lazily from disk. ``--cache-mb`` overrides
    the library's ``plan_cache_mb`` (0 keeps only the active plan's table: what grows with depth)."""
    from diffes.pruning import PruningLibrary

    dtype, device = getattr(torch, args.dtype), device_of(args)
    model = build_model(args.model, args.depth, dtype).to(device)
    call = make_call(args.model, 2 * args.samples, 0, args.steps, dtype, device)
    with torch.no_grad():
        model(*call[0], **call[1])  # the allocator's working set of a dense call belongs to the dense model
    library = PruningLibrary.load(args.folder)
    row: dict[str, Any] = {
        "part": "worker",
        "model": args.model,
        "depth": args.depth,
        "dtype": args.dtype,
        "device": str(device),
        "genomes": args.genomes,
        "params_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / GB,
    }
    cache_mb = library.config.plan_cache_mb if args.cache_mb is None else args.cache_mb
    row["plan_cache_mb"] = cache_mb
    return {**row, **_worker_run(args, model, library, call, device, cache_mb)}


def _worker_run(
    args: argparse.Namespace, model: torch.nn.Module, library: Any, call: Any, device: torch.device, cache_mb: float
) -> dict[str, Any]:
    from diffes.routing.router import Router

    base = rss_gb()
    reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    router = Router(model, library, cache_mb=cache_mb)
    rng = random.Random(0)
    cold, warm, forward = [], [], []
    with torch.no_grad():
        for _ in range(args.genomes):
            for stage in range(library.num_stages):
                level = rng.randrange(library.num_levels)
                known = (stage, level) in router.tables or router.current == (stage, level)
                t0 = time.perf_counter()
                router.set_level(stage, level)
                _sync(device)
                t1 = time.perf_counter()
                model(*call[0], **call[1])
                _sync(device)
                (warm if known else cold).append(t1 - t0)
                forward.append(time.perf_counter() - t1)
    out = {
        "library_rss_gb": _status("VmHWM") - base,
        "library_cuda_gb": (torch.cuda.max_memory_allocated() - cuda_base) / GB if device.type == "cuda" else None,
        "switch_cold_ms": 1000 * statistics.median(cold) if cold else None,
        "switch_warm_ms": 1000 * statistics.median(warm) if warm else None,
        "forward_ms": 1000 * statistics.median(forward),
        "tables_kept": len(router.tables),
    }
    if library.store is not None and cache_mb == 0:
        out.update(_switch_from_disk(args, model, library, router, call, device))
    router.remove()
    return out


def _switch_from_disk(
    args: argparse.Namespace, model: torch.nn.Module, library: Any, router: Any, call: Any, device: torch.device
) -> dict[str, Any]:
    """Switch time to a plan whose file is out of the page cache (as on a node that has not read it yet): routed
    to directly, and announced with ``router.prefetch`` before the previous stage's call, as a search does."""
    import os

    rng, times = random.Random(1), {True: [], False: []}  # type: ignore[var-annotated]
    with torch.no_grad():
        for genome in range(2 * args.genomes):
            prefetch = bool(genome % 2)
            levels = [rng.randrange(1, library.num_levels) for _ in range(library.num_stages)]
            for stage, level in enumerate(levels):
                if stage + 1 < len(levels):
                    path = library.store.path(stage + 1, levels[stage + 1])
                    fd = os.open(path, os.O_RDONLY)
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
                    os.close(fd)
                    if prefetch:
                        router.prefetch(stage + 1, levels[stage + 1])
                t0 = time.perf_counter()
                router.set_level(stage, level)
                _sync(device)
                if stage:
                    times[prefetch].append(time.perf_counter() - t0)
                model(*call[0], **call[1])
                _sync(device)
    return {
        "switch_disk_ms": 1000 * statistics.median(times[False]),
        "switch_prefetched_ms": 1000 * statistics.median(times[True]),
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """One trajectory of one call per stage (a switch before every call where levels change: the worst case),
    dense, routed (one shared model) and stitched (one torch-pruning copy per stage): seconds per trajectory,
    interleaved, median of repeats. Routed in both storage modes, each on its own 4-stage library: gather
    (the default, non-nested library: sliced weights copied into buffers at a switch) and bank (a nested
    library: prefix views and prepared replacements, a switch assigns pointers)."""
    from diffes.pruning import LocalSolver, PruningConfig, build_library

    dtype, device = getattr(torch, args.dtype), device_of(args)
    model = build_model(args.model, args.depth, dtype).to(device)
    rig = Rig(args.model, model, 2, dtype)
    out: dict[str, Any] = {"part": "speed", "model": args.model, "depth": args.depth, "device": str(device), "rows": []}
    levels = (0.0, 0.3, 0.5, 0.7)
    schedules = {"uniform 50%": [2, 2, 2, 2], "mixed": [3, 2, 1, 0]}  # mixed: sparse first, dense last
    for nested, mode in ((False, "gather"), (True, "bank")):
        config = PruningConfig(importance="magnitude", stages=4, steps=4, levels=levels, nested=nested)
        folder = Path(args.folder).with_name(f"speed-{mode}")
        library = build_library(rig, config, rig.run, False, folder, LocalSolver(), replace=True)
        for label, schedule in schedules.items():
            for row in _speed_rows(args, model, library, mode, schedule, device, dtype):
                out["rows"].append({"schedule": label, **row})
                print(out["rows"][-1], flush=True)
    return out


def _speed_rows(
    args: argparse.Namespace,
    model: torch.nn.Module,
    library: Any,
    mode: str,
    levels: list[int],
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    from diffes.pruning import prune_copy
    from diffes.routing.router import Router

    plans = [library.plan(s, lv) for s, lv in enumerate(levels)]
    copies = [prune_copy(model, library.structure, p).to(device) if not p.is_dense else model for p in plans]
    router = Router(model, library, mode=mode)  # every stage's table kept, as a served schedule's are
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        call = make_call(args.model, batch, 0, args.steps, dtype, device)
        variants = {
            "dense": lambda c=call: _trajectory([model] * len(levels), c, device),
            "stitched": lambda c=call: _trajectory(copies, c, device),
            "routed": lambda c=call: _routed(router, levels, model, c, device),
        }
        for f in variants.values():
            f()  # warm-up: routing tables, allocator
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, f in variants.items():
                times[k].append(f())
        med = {k: statistics.median(v) for k, v in times.items()}
        row: dict[str, Any] = {"mode": mode, "levels": levels, "batch": batch}
        row["macs_speedup"] = 1 / library.stage_cost(levels)
        row.update({f"{k}_s": v for k, v in med.items()})
        row["routed_speedup"] = med["dense"] / med["routed"]
        row["stitched_speedup"] = med["dense"] / med["stitched"]
        row["routed_over_stitched"] = row["routed_speedup"] / row["stitched_speedup"]
        rows.append(row)
    router.remove()
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def _trajectory(models: list[torch.nn.Module], call: Any, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for m in models:
        m(*call[0], **call[1])
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def _routed(router: Any, levels: list[int], model: torch.nn.Module, call: Any, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for stage, level in enumerate(levels):
        router.set_level(stage, level)
        model(*call[0], **call[1])
    _sync(device)
    router.reset()
    return time.perf_counter() - start
