"""Library build at real sizes: peak resident memory and time of ``build_library`` on full-width denoisers
with random weights (real shapes from the published configs; weights change neither speed nor memory).

    python -m benchmarks.real_size                                  # DiT-XL/2 and PixArt-Sigma, 2 and 4 blocks
    python -m benchmarks.real_size --models dit-xl-2 --depths 2,4 --steps 10 --no-save

Each (model, depth) is built in a fresh process, so its peak RSS (``ru_maxrss``) is its own: the model is cut to
``depth`` of its 28 blocks and the build's numbers are fitted linearly in depth and extrapolated to the full
depth (the memory a build holds grows with the number of consumer layers, hence with depth). The calibration run
makes ``steps`` denoiser calls of ``2 * samples`` rows (classifier-free guidance) with seeded random inputs of
the real shapes: DiT-XL/2 at 256 px (32x32x4 latents, class labels), PixArt-Sigma at 512 px (64x64x4 latents,
300 T5 tokens of width 4096). Reported per depth: dense parameter bytes, RSS before the build (interpreter,
torch, the model), peak RSS, what the library keeps (consumer Grams in float32), the inputs of one denoiser call
(what a calibration that kept every call would hold ``steps`` times), and build seconds. ``--dtype bfloat16``
builds a half-precision model. Without ``--no-save`` the rows go to benchmarks/results/real_size.json.

This is the library-build part of the real-size benchmark; MACs against published figures, worker memory during
a search, switch time and routed speed are still to come.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch

MODELS = ("dit-xl-2", "pixart-sigma")
FULL_DEPTH = 28

# published architecture facts (diffusers configs of facebook/DiT-XL-2-256 and PixArt-Sigma-XL-2-512-MS)
CONFIGS: dict[str, dict[str, Any]] = {
    "dit-xl-2": dict(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
    ),
    "pixart-sigma": dict(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        sample_size=64,
        patch_size=2,
        cross_attention_dim=1152,
        caption_channels=4096,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,
    ),
}
TEXT_TOKENS = 300  # PixArt-Sigma's T5 prompt length


def build_model(name: str, depth: int, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    cls = DiTTransformer2DModel if name == "dit-xl-2" else PixArtTransformer2DModel
    torch.manual_seed(0)
    return cls(num_layers=depth, **CONFIGS[name]).eval().to(dtype)


def make_call(name: str, rows: int, step: int, steps: int, dtype: torch.dtype) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(step)
    side = CONFIGS[name]["sample_size"]
    latents = torch.randn(rows, 4, side, side, generator=g).to(dtype)
    t = torch.full((rows,), 999 - step * (1000 // steps))
    if name == "dit-xl-2":
        labels = torch.randint(0, 1000, (rows,), generator=g)
        return (latents, t), {"class_labels": labels, "return_dict": False}
    text = torch.randn(rows, TEXT_TOKENS, 4096, generator=g).to(dtype)
    added = {"resolution": None, "aspect_ratio": None}
    return (latents,), {"encoder_hidden_states": text, "timestep": t, "added_cond_kwargs": added, "return_dict": False}


class _Clock:
    """The step tracker counts ``scheduler.step`` calls; nothing else of a scheduler is needed."""

    timesteps: torch.Tensor | None = None

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = torch.arange(steps, 0, -1).float()

    def step(self) -> None:
        return None


class Rig:
    """The smallest "pipeline" ``build_library`` accepts: a denoiser, a clock, one fresh call per step."""

    def __init__(self, name: str, model: torch.nn.Module, rows: int, dtype: torch.dtype) -> None:
        self.name, self.transformer, self.rows, self.dtype = name, model, rows, dtype
        self.scheduler = _Clock()

    def run(self, pipe: Rig, steps: int) -> None:
        self.scheduler.set_timesteps(steps)
        for step in range(steps):
            args, kwargs = make_call(self.name, self.rows, step, steps, self.dtype)
            self.transformer(*args, **kwargs)
            self.scheduler.step()


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 2**20


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One build in this process (the child side)."""
    from diffes.pruning import PruningConfig, build_library

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.model, args.depth, dtype)
    rows = 2 * args.samples
    call_args, call_kwargs = make_call(args.model, rows, 0, args.steps, dtype)
    tensors = [t for t in [*call_args, *call_kwargs.values()] if isinstance(t, torch.Tensor)]
    call_bytes = sum(t.numel() * t.element_size() for t in tensors)
    rig = Rig(args.model, model, rows, dtype)
    config = PruningConfig(
        importance=args.importance, stages=args.stages, steps=args.steps, compensate=True, levels=args.levels
    )
    before = _rss_gb()
    start = time.perf_counter()
    library = build_library(rig, config, run=rig.run, progress=False)
    seconds = time.perf_counter() - start
    gb = 2**30
    return {
        "model": args.model,
        "depth": args.depth,
        "dtype": args.dtype,
        "steps": args.steps,
        "stages": args.stages,
        "levels": len(config.levels),
        "importance": args.importance,
        "rows_per_call": rows,
        "params_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / gb,
        "rss_before_gb": before,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "grams_gb": sum(t.numel() * t.element_size() for d in library.grams for t in d.values()) / gb,
        "call_inputs_gb": call_bytes / gb,
        "build_s": seconds,
    }


def _fit(depths: list[int], values: list[float], at: int) -> float:
    """The least-squares line through (depth, value), read at ``at``."""
    n = len(depths)
    mean_d, mean_v = sum(depths) / n, sum(values) / n
    var = sum((d - mean_d) ** 2 for d in depths)
    slope = sum((d - mean_d) * (v - mean_v) for d, v in zip(depths, values)) / var if var else 0.0
    return mean_v + slope * (at - mean_d)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--depths", default="2,4")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1, help="samples per call (rows: twice, with guidance)")
    parser.add_argument("--importance", default="magnitude")
    parser.add_argument("--levels", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # child process: one build
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model:
        print(json.dumps(measure(args)))
        return
    rows = []
    for model in args.models.split(","):
        for depth in [int(d) for d in args.depths.split(",")]:
            child = [*(sys.argv[1:] if argv is None else argv), "--model", model, "--depth", str(depth)]
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.real_size", *child],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| model | depth | params GB | RSS before GB | peak RSS GB | build GB (peak - before) | Grams GB "
        "| one call's inputs GB | build s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in args.models.split(","):
        measured = [r for r in rows if r["model"] == model]
        for r in measured:
            lines.append(
                f"| {model} | {r['depth']} | {r['params_gb']:.3f} | {r['rss_before_gb']:.2f} | "
                f"{r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] - r['rss_before_gb']:.2f} | {r['grams_gb']:.3f} | "
                f"{r['call_inputs_gb']:.4f} | {r['build_s']:.0f} |"
            )
        if len(measured) > 1:
            depths = [r["depth"] for r in measured]
            fit = {k: _fit(depths, [r[k] for r in measured], FULL_DEPTH) for k in ("params_gb", "grams_gb", "build_s")}
            build = _fit(depths, [r["peak_rss_gb"] - r["rss_before_gb"] for r in measured], FULL_DEPTH)
            lines.append(
                f"| {model} | {FULL_DEPTH} (linear fit) | {fit['params_gb']:.3f} | | | {build:.2f} | "
                f"{fit['grams_gb']:.3f} | | {fit['build_s']:.0f} |"
            )
    markdown = "\n".join(lines)
    if args.no_save:
        print(markdown)
    else:
        from benchmarks.common import save

        save("real_size", {"args": vars(args), "rows": rows}, markdown)


if __name__ == "__main__":
    main()
