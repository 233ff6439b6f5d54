"""Pruning library, level by level, on the built-in DiT and UNet: what a level saves (MACs, measured CPU latency,
both relative to dense) and what it costs in quality (distance of uniformly pruned samples to the dense samples),
with and without compensation, for magnitude and Taylor importance.

    python -m benchmarks.pruning_cost            # full run, a few minutes on 2 CPU cores
    python -m benchmarks.pruning_cost --quick    # smoke run (numbers not meaningful, nothing saved)

Samples: 10 per class (100), the same initial noise and classes for every row, DDIM, guidance 2.0. A pruned row
routes the shared model with ``diffes.routing.apply`` and a uniform schedule (the level's plan in every stage; each
stage keeps its own units, as the library is not nested). Distances to the dense samples: pixel MSE (images in
[0, 1]) and the digit classifier's feature distance (``get_metric("classifier")``), averaged over samples; class
accuracy is the judge classifier's. For scale, "dense, other noise" is the distance between two dense sample sets
drawn from different noise: a pruned model at that distance has forgotten the trajectory but may still draw digits.

The library with and without compensation share one calibration (compensation only adds the least-squares refit of
the consumer layers, so ``build_library`` would compute the same scores for both). Latency is the median time of one
denoiser call of torch-pruning's pruned copy of each level at ``--latency-batch`` rows, levels taking turns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks.common import save
from benchmarks.routing import variant
from diffes.fitness import class_accuracy, get_metric
from diffes.fitness.pixel import mse
from diffes.models.loading import fast_cpu_math, load_pipeline
from diffes.pruning import PruningConfig, PruningLibrary, build_library, prune_copy
from diffes.routing import RoutingSchedule, apply

MODELS = ("dit-digits", "unet-digits")
IMPORTANCES = ("magnitude", "taylor")
GUIDANCE = 2.0
SUMMARY_LEVELS = (3, 4, 5)  # 30-50% of the width pruned


def sample(pipe: Any, labels: list[int], latents: torch.Tensor, steps: int) -> torch.Tensor:
    out = pipe(labels, num_inference_steps=steps, guidance_scale=GUIDANCE, latents=latents.clone(), output_type="pt")
    return out.images


def routed_sample(
    pipe: Any, library: PruningLibrary, level: int, labels: list[int], latents: torch.Tensor, steps: int
) -> torch.Tensor:
    """Samples with every stage routed to ``level`` (each stage its own plan)."""
    pipe.scheduler.set_timesteps(steps)
    levels = [level] * library.num_stages
    handle = apply(pipe, library, RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, levels))
    try:
        return sample(pipe, labels, latents, steps)
    finally:
        handle.remove()


def quality(images: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "mse": float(mse(images, dense).mean()),
        "classifier_distance": float(get_metric("classifier")(images, dense).mean()),
        "class_accuracy": class_accuracy(images, labels),
    }


def latency_ratios(pipe: Any, library: PruningLibrary, batch: int, repeats: int, seed: int) -> list[float]:
    """Median seconds of one denoiser call of each level's pruned copy, over dense; levels take turns."""
    model = pipe.denoiser
    copies = [model] + [
        prune_copy(model, library.structure, library.shape_plan(level)) for level in range(1, library.num_levels)
    ]
    cfg = model.config
    x = torch.randn(
        batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=torch.Generator().manual_seed(seed)
    )
    t = torch.full((batch,), 500)
    classes = torch.arange(batch) % (pipe.num_classes + 1)  # the conditional and the null class, as with guidance
    times: list[list[float]] = [[] for _ in copies]
    with torch.no_grad():
        for r in range(repeats + 1):
            for level, copy in enumerate(copies):
                start = time.perf_counter()
                copy(x, t, class_labels=classes)
                if r > 0:
                    times[level].append(time.perf_counter() - start)
    seconds = [statistics.median(ts) for ts in times]
    return [s / seconds[0] for s in seconds]


def model_rows(pipe: Any, name: str, levels: list[int], args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every (importance, compensation, level) row of one model, and its dense reference numbers."""
    pipe.set_progress_bar_config(disable=True)
    labels = [c for c in range(pipe.num_classes) for _ in range(args.per_class)]
    label_tensor = torch.tensor(labels)
    latents = pipe.prepare_latents(len(labels), torch.Generator().manual_seed(args.seed))
    dense = sample(pipe, labels, latents, args.steps)
    other = sample(
        pipe, labels, pipe.prepare_latents(len(labels), torch.Generator().manual_seed(args.seed + 1)), args.steps
    )
    reference = {
        "dense_class_accuracy": class_accuracy(dense, label_tensor),
        "dense_other_noise": quality(other, dense, label_tensor),
    }
    rows: list[dict] = []
    latency: list[float] | None = None
    for importance in IMPORTANCES:
        config = PruningConfig(
            importance=importance,
            compensate=True,
            calibration_samples=args.calibration_probes,
            steps=args.steps,
            seed=args.seed,
        )
        start = time.perf_counter()
        print(f"{name}: {importance} library, then {2 * len(levels)} pruned sample sets", file=sys.stderr, flush=True)
        library = build_library(pipe, config, progress=False)
        reference[f"build_s_{importance}"] = time.perf_counter() - start
        if latency is None:
            latency = latency_ratios(pipe, library, args.latency_batch, args.latency_repeats, args.seed)
            reference["latency_ratio"] = latency
            reference["macs_ratio"] = [c.macs / library.dense_macs for c in library.costs]
        for compensate in (False, True):
            lib = library if compensate else variant(library, nested=False, compensate=False)
            for level in levels:
                images = routed_sample(pipe, lib, level, labels, latents, args.steps)
                rows.append(
                    {
                        "model": name,
                        "importance": importance,
                        "compensate": compensate,
                        "level": level,
                        "fraction": library.config.levels[level],
                        "macs_ratio": library.costs[level].macs / library.dense_macs,
                        "latency_ratio": latency[level],
                        **quality(images, dense, label_tensor),
                    }
                )
    return rows, reference


def compensation_gains(rows: list[dict]) -> list[dict[str, Any]]:
    """Per model and importance, over the summary levels: distance without / with compensation, and accuracies."""
    out = []
    keys = sorted({(r["model"], r["importance"]) for r in rows}, key=lambda k: (MODELS.index(k[0]), k[1]))
    for model, importance in keys:
        pick = {
            (r["compensate"], r["level"]): r
            for r in rows
            if r["model"] == model and r["importance"] == importance and r["level"] in SUMMARY_LEVELS
        }
        levels = sorted({lv for _, lv in pick})
        if not levels:
            continue
        out.append(
            {
                "model": model,
                "importance": importance,
                "levels": levels,
                "classifier_distance_ratio": [
                    pick[(False, lv)]["classifier_distance"] / pick[(True, lv)]["classifier_distance"] for lv in levels
                ],
                "mse_ratio": [pick[(False, lv)]["mse"] / pick[(True, lv)]["mse"] for lv in levels],
                "accuracy_without": [pick[(False, lv)]["class_accuracy"] for lv in levels],
                "accuracy_with": [pick[(True, lv)]["class_accuracy"] for lv in levels],
            }
        )
    return out


def markdown(payload: dict[str, Any]) -> str:
    setup = payload["setup"]
    lines = [
        f"{setup['samples']} samples (10 classes x {setup['per_class']}), {setup['steps']} DDIM steps, guidance "
        f"{GUIDANCE}, same noise as the dense samples; latency = one denoiser call of the pruned copy at batch "
        f"{setup['latency_batch']}, relative to dense; load average {payload['load_average']['before'][0]:.1f} "
        f"before, {payload['load_average']['after'][0]:.1f} after.",
        "",
        "| model | importance | compensation | level (width pruned) | MACs | latency | pixel MSE | classifier "
        "distance | class accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, ref in payload["reference"].items():
        other = ref["dense_other_noise"]
        lines.append(f"| {name} | - | - | dense | 1.00 | 1.00 | 0 | 0 | {100 * ref['dense_class_accuracy']:.0f}% |")
        lines.append(
            f"| {name} | - | - | dense, other noise (for scale) | 1.00 | 1.00 | {other['mse']:.4f} | "
            f"{other['classifier_distance']:.3f} | {100 * other['class_accuracy']:.0f}% |"
        )
        for r in (r for r in payload["rows"] if r["model"] == name):
            lines.append(
                f"| {r['model']} | {r['importance']} | {'yes' if r['compensate'] else 'no'} | {r['level']} "
                f"({100 * r['fraction']:.0f}%) | {r['macs_ratio']:.2f} | {r['latency_ratio']:.2f} | {r['mse']:.4f} | "
                f"{r['classifier_distance']:.3f} | {100 * r['class_accuracy']:.0f}% |"
            )
    gains = [x for g in payload["compensation_gains"] for x in g["classifier_distance_ratio"]]
    lines += [
        "",
        "Compensation at 30-50% width pruning: distance without / with compensation, and class accuracy without -> "
        + (f"with (classifier distance cut {min(gains):.1f}x to {max(gains):.1f}x):" if gains else "with:"),
        "",
    ]
    for g in payload["compensation_gains"]:
        per_level = "; ".join(
            f"level {lv}: classifier x{c:.1f}, MSE x{m:.1f}, accuracy {100 * a:.0f}% -> {100 * b:.0f}%"
            for lv, c, m, a, b in zip(
                g["levels"], g["classifier_distance_ratio"], g["mse_ratio"], g["accuracy_without"], g["accuracy_with"]
            )
        )
        lines.append(f"- {g['model']}, {g['importance']}: {per_level}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    fast_cpu_math()
    started, load_before = time.perf_counter(), os.getloadavg()
    rows: list[dict] = []
    reference: dict[str, dict] = {}
    for name in MODELS:
        levels = args.dit_levels if name.startswith("dit") else args.unet_levels
        start = time.perf_counter()
        model_rows_, ref = model_rows(load_pipeline(name, device="cpu"), name, levels, args)
        ref["seconds"] = time.perf_counter() - start
        rows += model_rows_
        reference[name] = ref
    payload: dict[str, Any] = {
        "setup": {
            "models": list(MODELS),
            "importances": list(IMPORTANCES),
            "per_class": args.per_class,
            "samples": 10 * args.per_class,
            "steps": args.steps,
            "guidance_scale": GUIDANCE,
            "calibration": {"probes": args.calibration_probes, "stages": 10, "nested": False},
            "latency_batch": args.latency_batch,
            "latency_repeats": args.latency_repeats,
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
        },
        "reference": reference,
        "rows": rows,
        "compensation_gains": compensation_gains(rows),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "runtime_s": time.perf_counter() - started,
    }
    if args.quick:
        print(markdown(payload))
    else:
        save("pruning_cost", payload, markdown(payload))


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (also the library's calibration steps)")
    parser.add_argument("--dit-levels", type=_levels, default=[1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--unet-levels", type=_levels, default=[1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--calibration-probes", type=int, default=32)
    parser.add_argument("--latency-batch", type=int, default=64, help="denoiser batch of the latency measurement")
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 levels per model, tiny calibration")
    cli = parser.parse_args()
    if cli.quick:
        cli.per_class, cli.calibration_probes, cli.latency_repeats = 2, 2, 2
        cli.dit_levels, cli.unet_levels = [3, 5], [3]
    torch.set_num_threads(cli.threads)
    main(cli)
