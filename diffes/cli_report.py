"""``diffes report runs/<name>``: an HTML page with the run's progress, best schedule, costs and samples."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_report_command", "cmd_report"]


def add_report_command(sub: Any) -> None:
    report = sub.add_parser("report", help="write an HTML report of a run: progress, schedule, costs, samples")
    report.add_argument("run", help="the run directory (runs/<name>)")
    report.add_argument("--out", default=None, help="output folder (default: <run>/report)")
    report.add_argument(
        "--per-class", type=int, default=4, help="samples per class in each sample grid (0: no sample grids)"
    )
    report.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample the dense model with fewer steps at several costs for the cost plot (--no-baselines: only the "
        "one `diffes search` measured at the budget)",
    )
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from diffes.runs.report import write_report
    from diffes.runs.rundir import RunDir

    run = RunDir.open(args.run)
    out = Path(args.out) if args.out else run.path / "report"
    path = write_report(run, out, per_class=args.per_class, baselines=args.baselines)
    print(f"wrote {path}  (open it in a browser: file://{path.resolve()})")
