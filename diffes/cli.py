"""The ``diffes`` command. Thin: parses flags and calls the library."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from diffes.errors import ConfigError, DiffesError

__all__ = ["main"]


def cmd_generate(args: argparse.Namespace) -> None:
    import torch
    from tqdm.auto import tqdm

    from diffes.cli_cache import apply_cache_file, read_cache_file
    from diffes.images import save_grid
    from diffes.io import check_file_path
    from diffes.models.adapters import Guidance, adapter_for
    from diffes.runs.config import parse_classes, read_prompts

    if args.steps is not None and args.steps < 1:
        raise ConfigError("steps", args.steps, "use at least 1 sampling step")
    if args.per_condition < 1:
        raise ConfigError("per-condition", args.per_condition, "use at least 1 sample per condition")
    check_file_path("output", args.output)
    prompts = list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
    if prompts and args.classes is not None:
        raise ConfigError("classes", args.classes, "give classes or prompts, not both")
    conditions: list[object] = list(prompts) if prompts else list(parse_classes(args.classes or "0-9"))
    cache_rule = read_cache_file(args.cache, args.cache_threshold) if args.cache else None
    pipe = _generate_pipeline(args)
    steps = args.steps or _default_steps(args)
    if cache_rule is not None:
        pipe.__dict__["_diffes_cache"] = apply_cache_file(pipe, *cache_rule, steps)
    adapter = adapter_for(pipe, args.height, args.width)
    if (adapter.conditioning == "prompts") != bool(prompts):
        wanted = "prompts (--prompt or --prompts)" if adapter.conditioning == "prompts" else "classes (--classes)"
        raise ConfigError("model", args.routed or args.model, f"{type(pipe).__name__} takes {wanted}")
    guidance = Guidance(args.guidance_kind, args.guidance, args.guidance_rescale)
    samples = [c for c in conditions for _ in range(args.per_condition)]
    generator = torch.Generator("cpu").manual_seed(args.seed)
    cond = adapter.encode(samples, guidance, args.negative_prompt)
    latents = adapter.initial_latents(len(samples), generator)
    with tqdm(total=steps, desc="sampling", unit="step") as bar:
        final = adapter.sample(cond, latents, steps, guidance, generator, on_step=lambda: bar.update(1))
    images = adapter.decode(final)
    path = save_grid(images, args.output, rows=len(conditions))
    print(f"wrote {path} ({len(samples)} samples, {steps} steps)")
    cache = pipe.__dict__.get("_diffes_cache")  # type: ignore[attr-defined]
    if cache is not None:
        s = cache.summary
        print(f"cache: {s.computed} of {steps} steps computed, {s.reused + s.extrapolated + s.residual} reused")


def _default_steps(args: argparse.Namespace) -> int:
    """A routed checkpoint's own step count (a joint search chose it), else 50."""
    if args.routed:
        from diffes.routing.checkpoint import read_routing

        return int(read_routing(Path(args.routed)).get("num_steps", 50))
    return 50


def _generate_pipeline(args: argparse.Namespace) -> object:
    from diffes.models import load_pipeline

    if args.routed:
        from diffes.routing import load_routed

        return load_routed(args.routed, device=args.device, dtype=args.dtype)
    return load_pipeline(args.model, device=args.device, dtype=args.dtype or "float32")


def cmd_prune(args: argparse.Namespace) -> None:

    from diffes.models import load_pipeline
    from diffes.pruning import LevelGrid, PruningConfig, build_library

    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        if not (out / "library.json").exists():
            raise ConfigError("out", str(out), "it is not empty and holds no library; pick a new or empty folder")
        if not args.force:
            raise ConfigError(
                "out", str(out), "a library is already there; pass --force to overwrite or pick another folder"
            )
    config = PruningConfig(
        importance=args.importance,
        levels=LevelGrid.parse(args.levels).fractions,
        axis=args.axis,
        nested=args.nested,
        compensate=not args.no_compensate,
        stages=args.stages,
        steps=args.steps,
        calibration_samples=args.calibration_samples,
        seed=args.seed,
        latency=args.latency,
    )
    pipe = load_pipeline(args.model, device=args.device)
    library = build_library(pipe, config, progress=True, folder=out, replace=args.force)
    print(f"wrote {out} ({library.num_stages} stages x {library.num_levels} levels)")
    print(format_levels(library))


def format_levels(library: object) -> str:
    costs = library.costs  # type: ignore[attr-defined]
    dense = costs[0]
    rows = [f"{'level':>5} {'sparsity':>8} {'MACs':>10} {'MACs %':>7} {'params':>10} {'params %':>8} {'latency %':>9}"]
    for i, c in enumerate(costs):
        latency = f"{100 * c.latency / dense.latency:8.1f}%" if c.latency and dense.latency else f"{'-':>9}"
        rows.append(
            f"{i:>5} {c.fraction:>8.2f} {c.macs / 1e6:>9.2f}M {100 * c.macs / dense.macs:>6.1f}% "
            f"{c.params:>10,} {100 * c.params / dense.params:>7.1f}% {latency}"
        )
    return "\n".join(rows)


def cmd_inspect(args: argparse.Namespace) -> None:
    from diffes.pruning import PruningLibrary

    library = PruningLibrary.load(args.library)
    c = library.config
    print(
        f"{args.library}: importance={c.importance} axis={c.axis} nested={c.nested} compensate={c.compensate} "
        f"stages={library.num_stages} steps={library.schedule.num_steps} groups={len(library.structure.groups)}"
    )
    print(format_levels(library))


def build_parser() -> argparse.ArgumentParser:
    from diffes.families import DEFAULT_MODEL

    parser = OneLineParser(prog="diffes", description="Stage-wise sparsity search for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="sample an image grid from a model or a routed checkpoint")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="zoo model name or diffusers pipeline folder")
    gen.add_argument("--routed", default=None, help="routed checkpoint folder (from `diffes export`)")
    gen.add_argument("--classes", default=None, help="class list of a class-conditional model, e.g. 0-9 or 1,3,5")
    gen.add_argument("--prompt", action="append", help="a prompt (text-to-image models; repeat for more)")
    gen.add_argument("--prompts", default=None, help="text file with one prompt per line")
    gen.add_argument("--negative-prompt", default=None, help="negative prompt (text-to-image models)")
    gen.add_argument(
        "--per-condition",
        "--per-class",
        type=int,
        default=8,
        dest="per_condition",
        help="samples per class or prompt (one grid row each)",
    )
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (default: a routed checkpoint's, else 50)")
    gen.add_argument("--guidance", type=float, default=2.0, help="guidance scale")
    gen.add_argument("--guidance-kind", default="cfg", choices=("cfg", "distilled", "none"), help="guidance kind")
    gen.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale (SD/SDXL)")
    gen.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    gen.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")
    gen.add_argument(
        "--dtype", default=None, help="float32 (default; a routed checkpoint's own), float16 (CUDA) or bfloat16"
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    gen.add_argument("--cache", default=None, help="a cache rule JSON, or a calibration from calibrate-cache")
    gen.add_argument("--cache-threshold", type=float, default=None, help="override the cache rule's threshold")
    gen.add_argument("-o", "--output", default="grid.png", help="output PNG")
    gen.set_defaults(func=cmd_generate)

    prune = sub.add_parser("prune", help="build a pruning library: a plan and its cost for every (stage, level)")
    prune.add_argument("--model", default=DEFAULT_MODEL, help="zoo model name or diffusers pipeline folder")
    prune.add_argument("--importance", default="taylor", help="magnitude, taylor or activation")
    prune.add_argument("--levels", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7", help="sparsities, or heads:8,6,4,...")
    prune.add_argument("--axis", default="width", help="width (heads, MLP units, channels) or depth (blocks)")
    prune.add_argument("--nested", action="store_true", help="one unit order for all stages (zero-copy routing)")
    prune.add_argument("--no-compensate", action="store_true", help="skip the least-squares refit of consumers")
    prune.add_argument("--stages", type=int, default=10)
    prune.add_argument("--steps", type=int, default=20, help="sampling steps of the calibration trajectory")
    prune.add_argument(
        "--calibration-samples", type=int, default=32, help="samples of the dense trajectory to calibrate on"
    )
    prune.add_argument("--latency", action="store_true", help="also measure each level's latency on this device")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--device", default=None)
    prune.add_argument("--force", action="store_true", help="overwrite an existing library")
    prune.add_argument("--out", required=True, help="output folder")
    prune.set_defaults(func=cmd_prune)

    inspect = sub.add_parser("inspect", help="print a pruning library's levels with MACs, params and latency")
    inspect.add_argument("library")
    inspect.set_defaults(func=cmd_inspect)

    from diffes.cli_cache import add_cache_commands
    from diffes.cli_report import add_report_command
    from diffes.cli_search import add_search_commands

    add_search_commands(sub)
    add_report_command(sub)
    add_cache_commands(sub)
    return parser


class OneLineParser(argparse.ArgumentParser):
    """A flag error is one line like every diffes error, not a usage dump (``--help`` stays full).
    ``add_subparsers`` makes subparsers of the parser's own class, so every command answers this way."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        text = text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."
        self.exit(2, f"diffes: error: {text}; see `{self.prog} --help`\n")


MAX_ERROR = 200  # argparse echoes the bad value, which may be a whole pasted file


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, ``kill``) raised where Ctrl-C would be: the run stops at a
    consistent point (every checkpoint write is atomic) and ``diffes resume`` continues it."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) and flag errors (2), already printed
        return e.code if isinstance(e.code, int) else 2
    # Handlers can only be set from the main thread; None: a handler set outside Python, which we leave alone.
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
    except DiffesError as e:
        print(f"diffes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"diffes: {name}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
