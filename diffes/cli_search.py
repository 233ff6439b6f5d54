"""``diffes search | resume | status | export``: flags are generated from RunConfig, so they match config keys."""

from __future__ import annotations

import argparse
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from diffes.errors import ConfigError

__all__ = ["add_search_commands"]


def _flag_type(hint: Any) -> Any:
    """argparse's type for a config field: bool (an on/off flag), int or float; anything else (text, choices,
    level grids) stays a string for the config's own validation."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return hint if hint in (bool, int, float) else str


def add_search_commands(sub: Any) -> None:
    from diffes.runs.config import FLAGS, flag_help, section_class

    search = sub.add_parser("search", help="evolve per-stage sparsity under a compute budget (the main job)")
    search.add_argument("--config", default=None, help="TOML or YAML file; its keys are these flags' names")
    for key, (section, name) in FLAGS.items():
        owner = section_class(section)
        kind = _flag_type(get_type_hints(owner)[name])
        kw: dict[str, Any] = {"default": None, "dest": key, "help": flag_help(key)}
        flag = "--" + key.replace("_", "-")
        if kind is bool:
            search.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            search.add_argument(flag, type=kind, metavar=key.upper(), **kw)
    search.add_argument("--quiet", action="store_true", help="no progress bars")
    search.add_argument(
        "--dry-run", action="store_true", help="check everything, print the memory and disk the run needs, run nothing"
    )
    search.set_defaults(func=cmd_search)

    resume = sub.add_parser("resume", help="continue a run from its last complete generation")
    resume.add_argument("run")
    resume.add_argument("--generations", type=int, default=None, help="run to this many generations instead")
    resume.add_argument("--quiet", action="store_true")
    resume.set_defaults(func=cmd_resume)

    status = sub.add_parser("status", help="print a run's progress and best schedule so far")
    status.add_argument("run")
    status.set_defaults(func=cmd_status)

    export = sub.add_parser("export", help="write a routed checkpoint of a run's best schedule")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="output folder (must not exist)")
    export.add_argument("--budget", type=float, default=None, help="the best schedule within this cost (Pareto point)")
    export.set_defaults(func=cmd_export)


def _run_config(args: argparse.Namespace) -> Any:
    from diffes.runs.config import FLAGS, RunConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    values.update({key: getattr(args, key) for key in FLAGS if getattr(args, key) is not None})
    return RunConfig.from_dict(values)


def cmd_search(args: argparse.Namespace) -> None:
    config = _run_config(args)  # every check that needs no torch, before torch is imported
    if args.dry_run:
        from diffes.runs.dry_run import dry_run

        print("\n".join(dry_run(config)))
        return
    from diffes.runs import start_run

    result = start_run(config, progress=not args.quiet)
    print_result(result)


def cmd_resume(args: argparse.Namespace) -> None:
    from diffes.runs import resume_run

    print_result(resume_run(args.run, generations=args.generations, progress=not args.quiet))


def print_result(result: Any) -> None:
    b = result.best
    print(f"run:      {result.run.path}")
    print(f"best:     {b['genome']}  cost {b['cost']:.3f} of dense MACs  fitness {b['distance']:.5f}")
    if "joint" in b:  # the step count and caching the joint search chose, and each method alone
        c = b["joint"]
        print(f"choice:   {c['steps']} steps, compute every {c['every']} step per stage, levels {c['levels']}")
        for name, p in b.get("single_methods", {}).items():
            c = p["joint"]
            what = f"{name} alone ({c['steps']} steps, every {c['every']}, levels {c['levels']})"
            print(f"{'':<10}{what}  cost {p['cost']:.3f}  fitness {p['distance']:.5f}")
    u = b["uniform"]
    print(f"uniform:  {u['genome']}  cost {u['cost']:.3f} of dense MACs  fitness {u['distance']:.5f}")
    for line in fewer_steps_lines(b):
        print(line)
    if result.exported:
        print(f"export:   {result.exported}  (sample: diffes generate --routed {result.exported} -o grid.png)")
    print(f"samples:  {b['samples']}  (dense | best | uniform, same noise)")


def fewer_steps_lines(best: dict[str, Any]) -> list[str]:
    """The honest baselines of a finished run: the dense model with the steps of equal cost, on the pipeline's
    sampler and on DPM-Solver++, against the same teacher; a note when one beats the searched schedule."""
    own, dpm = best.get("fewer_steps"), best.get("fewer_steps_dpm_solver") or {}
    if own is None:
        return []
    points = [own] + ([dpm] if "distance" in dpm else [])
    lines = [
        f"{'fewer:' if p is own else 'dpm++:':<10}dense with {p['steps']} of {p['num_steps']} steps ({p['sampler']})  "
        f"cost {p['cost']:.3f} of dense MACs  fitness {p['distance']:.5f}"
        for p in points
    ]
    if "skipped" in dpm:
        lines.append(f"dpm++:    skipped: {dpm['skipped']}")
    winner = min(points, key=lambda p: p["distance"])
    if winner["distance"] < best["distance"]:
        lines.append(
            f"note:     at this cost the dense model with {winner['steps']} steps ({winner['sampler']}) is closer to "
            "the teacher than the searched schedule"
        )
    return lines


def cmd_status(args: argparse.Namespace) -> None:
    from diffes.runs import RunDir
    from diffes.search import SearchState, best

    run = RunDir.open(args.run)
    config = run.config()
    checkpoint = run.latest_checkpoint()
    print(
        f"run {run.path}: model={config.model.model} budget={config.search.budget} algorithm={config.search.algorithm}"
    )
    if checkpoint is None:
        print("no generation finished yet (preparing the library and teacher)")
        return
    state = SearchState.from_json(checkpoint["search"])
    genome, distance, cost = best(state)
    done = "finished" if run.best() is not None and state.generation >= config.search.generations else "in progress"
    print(f"generation {state.generation}/{config.search.generations} ({done}), {len(state.cache)} schedules evaluated")
    print(f"best so far: {list(genome)}  cost {cost:.3f}  fitness {distance:.5f}")


def cmd_export(args: argparse.Namespace) -> None:
    from diffes.runs import RunDir, export_run

    if args.budget is not None and not 0 < args.budget <= 1:
        raise ConfigError("budget", args.budget, "use a fraction of the dense cost in (0, 1]")
    path = export_run(RunDir.open(args.run), out=args.out, budget=args.budget)
    print(f"wrote {path}")
