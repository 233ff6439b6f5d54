"""Real sizes: MACs, library build, search-worker memory, switch time and routed speed on full-width denoisers
with random weights (real shapes from the published configs; weights change neither speed nor memory).

    python -m benchmarks.real_size                       # everything, about 40 minutes on 2 CPU cores
    python -m benchmarks.real_size --build-models dit-xl-2 --depths 2 --no-save

1. MACs per denoiser call of DiT-XL/2 (256 px), PixArt-Sigma (512 px), Flux.1-dev (1024 px) and the SD 1.5 and
   SDXL UNets (512 / 1024 px), counted on meta-device models at full size, against published figures; with the
   library estimate (``diffes.pruning.estimate``: the formulas ``diffes search --dry-run`` prints) at
   ``--stages`` x levels.
2. For DiT-XL/2 and PixArt-Sigma cut to ``--depths`` of their 28 blocks (the full shape's library does not fit
   this machine's time): a library build into a folder (calibration, then every compensated plan solved to
   disk) with its peak RSS, disk and seconds; a search worker's peak RSS over the dense model's (router bounded
   by ``plan_cache_mb``, random schedules, one call per stage) with the switch time; and the routed model's
   speed-up against the stitched torch-pruning copies, batch 1/4/16, for a uniform and a mixed schedule.
   Build and worker numbers are fitted linearly in depth and read at 28 blocks; each runs in a fresh process.

The JSON records probes, steps, batch, dtype and device; on a CUDA machine every part runs there (``--cpu``
forces the CPU). Without ``--no-save`` it writes benchmarks/results/real_size.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks import real_size_parts as parts
from benchmarks.real_size_models import FULL_DEPTH, MODELS

RESULTS = Path(__file__).parent / "results"

PARTS = {"build": parts.build, "worker": parts.worker, "speed": parts.speed}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="models of the MACs table")
    p.add_argument("--build-models", default="dit-xl-2,pixart-sigma")
    p.add_argument("--depths", default="2,4", help="blocks kept, for DiT-XL/2 (PixArt-Sigma: half, at least 1)")
    p.add_argument("--speed-depth", type=int, default=2)
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--genomes", type=int, default=4, help="random schedules a worker runs")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--stages", type=int, default=10)
    p.add_argument("--samples", type=int, default=1, help="samples per call (rows: twice, with guidance)")
    p.add_argument("--importance", default="magnitude")
    p.add_argument("--levels", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu", action="store_true", help="measure on the CPU even where CUDA is present")
    p.add_argument(
        "--parts",
        default="macs,build,speed",
        help="what to measure (worker runs with build); the parts not measured are kept from the saved results",
    )
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--tables", action="store_true", help="only rewrite the markdown from the saved JSON")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)  # child process: one measurement
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--cache-mb", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child(argv: list[str], part: str, model: str, depth: int, folder: str, *extra: str) -> dict[str, Any]:
    flags = ["--part", part, "--model", model, "--depth", str(depth), "--folder", folder, *extra]
    cmd = [sys.executable, "-m", "benchmarks.real_size", *argv, *flags]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{part} {model} depth {depth} failed:\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _depths(model: str, depths: list[int]) -> list[int]:
    # PixArt-Sigma at 512 px runs 4x DiT-XL/2's tokens per block: half the blocks keep its build time alike
    return depths if model == "dit-xl-2" else sorted({max(1, d // 2) for d in depths})


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    if args.tables:
        (RESULTS / "real_size.md").write_text(tables(json.loads((RESULTS / "real_size.json").read_text())) + "\n")
        return
    own = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-save"]
    wanted = set(args.parts.split(","))
    result: dict[str, Any] = {"macs": [], "build": [], "worker": [], "speed": []}
    if wanted != {"macs", "build", "speed"} and (RESULTS / "real_size.json").is_file():
        result.update(json.loads((RESULTS / "real_size.json").read_text()))  # keep what is not measured now
    result["args"] = vars(args)
    if "macs" in wanted:
        result["macs"] = parts.macs(args)
    for part in ("build", "worker", "speed"):
        if part in wanted or (part == "worker" and "build" in wanted):
            result[part] = []
    for model in args.build_models.split(","):
        for depth in _depths(model, [int(d) for d in args.depths.split(",")]):
            speed = "speed" in wanted and depth == _depths(model, [args.speed_depth])[0]
            if "build" not in wanted and not speed:
                continue
            folder = tempfile.mkdtemp(prefix="diffes-real-size-") + "/library"
            try:
                if "build" in wanted:
                    result["build"].append(_child(own, "build", model, depth, folder))
                    # one process each: what one router frees, the allocator may keep for the next
                    result["worker"].append(_child(own, "worker", model, depth, folder, "--cache-mb", "0"))
                    result["worker"].append(_child(own, "worker", model, depth, folder))
                if speed:
                    result["speed"].append(_child(own, "speed", model, depth, folder))
            finally:
                shutil.rmtree(folder.rsplit("/", 1)[0], ignore_errors=True)
    markdown = tables(result)
    if args.no_save:
        print(markdown)
    else:
        from benchmarks.common import save

        save("real_size", result, markdown)


def fit(depths: list[int], values: list[float], at: int) -> float:
    """The least-squares line through (depth, value), read at ``at``."""
    n = len(depths)
    mean_d, mean_v = sum(depths) / n, sum(values) / n
    var = sum((d - mean_d) ** 2 for d in depths)
    slope = sum((d - mean_d) * (v - mean_v) for d, v in zip(depths, values)) / var if var else 0.0
    return mean_v + slope * (at - mean_d)


def tables(result: dict[str, Any]) -> str:
    gb = 2**30
    lines = [
        "| model | params (M) | GMACs per call | of which attention matmuls | published | library on disk GB "
        "| build disk GB | build driver (x params) | worker (x params) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["macs"]:
        e = r.get("estimate")
        pub = f"{r['published_gmacs']:.1f}" if r["published_gmacs"] else "-"
        cells = (
            [
                f"{e['library_disk_bytes'] / gb:.1f}",
                f"{e['build_disk_bytes'] / gb:.1f}",
                f"{e['driver_bytes'] / e['dense_bytes']:.2f}",
                f"{e['worker_bytes'] / e['dense_bytes']:.2f}",
            ]
            if e
            else ["not traced"] * 4
        )
        lines.append(
            f"| {r['model']}{' (estimate from 1-2 blocks, linear)' if r.get('estimate_from_depths') else ''} | "
            f"{r['params'] / 1e6:.0f} | {r['gmacs']:.1f} | {r['attention_gmacs']:.1f} | {pub} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", _build_table(result), "", _speed_table(result)]
    return "\n".join(lines)


def _build_table(result: dict[str, Any]) -> str:
    """Measured per depth (the estimate in brackets), and the linear fit read at full depth. A worker is measured
    keeping only its active plan (what grows with depth) and with the default 256 MB plan cache; switching to a
    plan whose file is out of the page cache, directly and announced one call ahead (``Router.prefetch``)."""
    gb = 2**30
    lines = [
        "| model | depth | params GB | build peak RSS GB: calibrating / solving | calibrate s | solve s "
        "| library disk GB (est.) "
        "| worker, active plan only: GB (est.) | worker, 256 MB plan cache: GB | switch ms cold / warm "
        "| switch ms from disk: direct / prefetched | call ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in sorted({r["model"] for r in result["build"]}):
        builds = [r for r in result["build"] if r["model"] == model]
        active = {w["depth"]: w for w in result["worker"] if w["model"] == model and w["plan_cache_mb"] == 0}
        cached = {w["depth"]: w for w in result["worker"] if w["model"] == model and w["plan_cache_mb"] > 0}
        for b in builds:
            e = b["estimate"]
            lines.append(
                f"| {model} | {b['depth']} | {b['params_gb']:.2f} | "
                f"{b['calibrate_peak_rss_gb']:.2f} / {b['solve_peak_rss_gb']:.2f} | "
                f"{b['calibrate_s']:.0f} | {b['solve_s']:.0f} | "
                f"{b['disk_gb']:.2f} ({e['library_disk_bytes'] / gb:.2f}) | "
                + _worker_cells(b, active.get(b["depth"]), cached.get(b["depth"]))
            )
        if len(builds) > 1:
            d, full = [b["depth"] for b in builds], FULL_DEPTH[model]
            keys = ("params_gb", "calibrate_peak_rss_gb", "solve_peak_rss_gb", "disk_gb")
            f = {k: fit(d, [b[k] for b in builds], full) for k in keys}
            f.update({k: fit(d, [b[k] for b in builds], full) for k in ("calibrate_s", "solve_s")})
            measured = [x for x in d if x in active]  # a build may have run without its workers
            lib = fit(measured, [active[x]["library_rss_gb"] for x in measured], full)
            p = f["params_gb"]
            lines.append(
                f"| {model} | **{full}** (linear fit) | {p:.2f} | {f['calibrate_peak_rss_gb']:.2f} / "
                f"{f['solve_peak_rss_gb']:.2f} (**{max(f['calibrate_peak_rss_gb'], f['solve_peak_rss_gb']) / p:.2f}x** "
                f"params) | {f['calibrate_s']:.0f} | {f['solve_s']:.0f} | "
                f"{f['disk_gb']:.1f} | {lib:.2f} (**{lib / p:.2f}x** params) | | | | |"
            )
    return "\n".join(lines)


def _worker_cells(build: dict[str, Any], w0: dict[str, Any] | None, w: dict[str, Any] | None) -> str:
    if w0 is None or w is None:
        return "not run | | | | |"
    return (
        f"{w0['library_rss_gb']:.3f} ({build['estimate_worker_active_bytes'] / 2**30:.3f}) | "
        f"{w['library_rss_gb']:.3f} | {w0['switch_cold_ms']:.0f} / {w['switch_warm_ms'] or 0:.0f} | "
        f"{_disk_switch(w0)} | {w['forward_ms']:.0f} |"
    )


def _disk_switch(worker: dict[str, Any]) -> str:
    if worker.get("switch_disk_ms") is None:
        return "-"
    return f"{worker['switch_disk_ms']:.0f} / {worker['switch_prefetched_ms']:.0f}"


def _speed_table(result: dict[str, Any]) -> str:
    lines = [
        "| model | depth | routing | schedule | batch | MACs speed-up | stitched copies | routed | routed / stitched |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result["speed"]:
        for r in s["rows"]:
            lines.append(
                f"| {s['model']} | {s['depth']} | {r['mode']} | {r['schedule']} | {r['batch']} | "
                f"{r['macs_speedup']:.2f}x | {r['stitched_speedup']:.2f}x | {r['routed_speedup']:.2f}x | "
                f"{r['routed_over_stitched']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
