"""The ``diffes`` command. Thin: parses flags and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diffes.errors import ConfigError, DiffesError

__all__ = ["main", "parse_classes"]


def parse_classes(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"1,4,7-9"`` to a list of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            start, end = int(lo), int(hi) if hi else int(lo)
            if end < start:
                raise ValueError
            out.extend(range(start, end + 1))
    except ValueError:
        raise ConfigError("classes", text, "use a list like 0-9 or 1,4,7-9") from None
    return out


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from diffes.images import save_grid
    from diffes.models import load_pipeline

    if args.steps < 1:
        raise ConfigError("steps", args.steps, "use at least 1 sampling step")
    if args.per_class < 1:
        raise ConfigError("per-class", args.per_class, "use at least 1 sample per class")
    classes = parse_classes(args.classes)
    if args.routed:
        from diffes.routing import load_routed

        pipe = load_routed(args.routed, device=args.device)
    else:
        pipe = load_pipeline(args.model, device=args.device)
    labels = [c for c in classes for _ in range(args.per_class)]
    generator = torch.Generator("cpu").manual_seed(args.seed)
    kwargs = {} if args.guidance is None else {"guidance_scale": args.guidance}
    images = pipe(labels, num_inference_steps=args.steps, generator=generator, output_type="pt", **kwargs).images
    path = save_grid(images, args.output, rows=len(classes))
    print(f"wrote {path} ({len(labels)} samples, {args.steps} steps)")


def build_parser() -> argparse.ArgumentParser:
    from diffes.models.zoo import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="diffes", description="Stage-wise sparsity search for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="sample an image grid from a zoo model or a routed checkpoint")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="zoo model name or diffusers pipeline folder")
    gen.add_argument("--routed", default=None, help="routed checkpoint folder (from `diffes export`)")
    gen.add_argument("--classes", default="0-9", help="class list, e.g. 0-9 or 1,3,5")
    gen.add_argument("--per-class", type=int, default=8, help="samples per class (one grid row per class)")
    gen.add_argument("--steps", type=int, default=50, help="sampling steps")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    gen.add_argument("-o", "--output", default="grid.png", help="output PNG")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DiffesError as e:
        print(f"diffes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffes: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
