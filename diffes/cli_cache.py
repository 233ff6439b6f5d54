"""``diffes calibrate-cache``: fit TeaCache or MagCache on the user's model and probes, report the fit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_type_hints

from diffes.errors import ConfigError

__all__ = ["add_cache_commands", "read_cache_file", "apply_cache_file"]

# the run-config flags this command shares with `diffes search` (same names, help and validation)
SHARED = ("probes", "probe_seed", "guidance", "guidance_kind", "guidance_rescale")


def add_cache_commands(sub: Any) -> None:
    from diffes.caching.kinds import CALIBRATED
    from diffes.cli_search import _flag_type
    from diffes.runs.config import FLAGS, flag_help, section_class

    cal = sub.add_parser("calibrate-cache", help="fit a cache rule (teacache, magcache) on your model and probes")
    cal.add_argument("--rule", required=True, choices=CALIBRATED, help="the rule to calibrate")
    cal.add_argument("--steps", type=int, default=20, help="sampling steps (a rule is valid at this count only)")
    for key, (section, name) in FLAGS.items():
        if section == "model" or key in SHARED:
            kind = _flag_type(get_type_hints(section_class(section))[name])
            cal.add_argument("--" + key.replace("_", "-"), type=kind, default=None, dest=key, help=flag_help(key))
    cal.add_argument("--run", default=None, help="a run directory: write the calibration there")
    cal.add_argument("--out", default=None, help="output JSON file (default: cache-RULE.json)")
    cal.set_defaults(func=cmd_calibrate_cache)


def _config(args: argparse.Namespace) -> Any:
    from diffes.runs.config import FLAGS, RunConfig

    ours = [key for key, (section, _) in FLAGS.items() if section == "model" or key in SHARED]
    return RunConfig.from_dict({key: getattr(args, key) for key in ours if getattr(args, key) is not None})


def _output(args: argparse.Namespace) -> tuple[Path, int | None]:
    """Where the calibration goes, and the step count of the run it is for (None: no run)."""
    from diffes.io import check_file_path

    if args.run is not None:
        if args.out is not None:
            raise ConfigError("out", args.out, "give --run or --out, not both")
        from diffes.runs import RunDir

        run = RunDir.open(args.run)
        return run.path / f"cache-{args.rule}.json", run.config().pruning.steps
    return check_file_path("out", args.out or f"cache-{args.rule}.json"), None


def cmd_calibrate_cache(args: argparse.Namespace) -> None:
    if args.steps < 3:
        raise ConfigError("steps", args.steps, "calibrate on at least 3 steps")
    config = _config(args)  # checks that need no torch first
    out, run_steps = _output(args)
    from diffes.caching.calibration import calibrate
    from diffes.runs.context import load_adapter, run_conditions

    adapter = load_adapter(config)
    guidance = config.fitness.guidance_config()
    adapter.check_guidance(guidance)
    conditions = [c for c in run_conditions(config, adapter) for _ in range(config.fitness.probes)]
    made = calibrate(
        adapter,
        args.rule,
        conditions,
        args.steps,
        guidance,
        config.model.model,
        seed=config.fitness.probe_seed,
        negative_prompt=config.model.negative_prompt,
    )
    made.save(out)
    print(
        f"{args.rule} on {config.model.model} ({made.denoiser}), {made.num_steps} steps, "
        f"{made.probes} probes ({made.heldout} held out)"
    )
    print(
        f"fit R^2 {made.r2:.3f}, held-out R^2 {made.heldout_r2:.3f}, held-out mean abs error {made.heldout_error:.4f}"
    )
    print(f"wrote {out}")
    warnings = made.warnings()
    if run_steps is not None and run_steps != args.steps:
        warnings.append(f"the run samples {run_steps} steps but this calibration is for {args.steps}")
    for line in warnings:
        print(f"warning: {line}")


def read_cache_file(path: str, threshold: float | None) -> tuple[Any, Any]:
    """A cache rule from a JSON file (a rule's ``to_dict()`` or a ``calibrate-cache`` output), with the threshold
    overridden, and the calibration it came from (None for a plain rule). Checked before any model loads."""
    import dataclasses

    from diffes.caching import Calibration, rule_from_dict
    from diffes.errors import CheckpointError
    from diffes.io import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a cache rule or calibration (a JSON object with a rule); write one")
    calibration = Calibration.from_dict(data, path) if "calibration" in data else None
    rule = calibration.rule if calibration is not None else rule_from_dict(data)
    if threshold is not None:
        if not hasattr(rule, "threshold"):
            raise ConfigError("cache_threshold", threshold, f"the {rule.name} rule has no threshold; drop the flag")
        rule = dataclasses.replace(rule, threshold=threshold)
    return rule, calibration


def apply_cache_file(pipe: Any, rule: Any, calibration: Any, steps: int) -> Any:
    """Attach ``rule`` to ``pipe`` (inside its routing, if it is routed) once it fits the model and step count."""
    from diffes.caching import apply_cache
    from diffes.models.steps import find_denoiser

    if calibration is not None:
        calibration.check_for(type(find_denoiser(pipe)[1]).__name__, steps)
    rule.check_steps(steps)  # a mask of another length, a calibration for other steps: refused before sampling
    if "_diffes_cache" in pipe.__dict__:
        raise ConfigError("cache", "given twice", "this routed checkpoint carries its own cache rule; drop --cache")
    return apply_cache(pipe, rule, pipe.__dict__.get("_diffes_routing"))
