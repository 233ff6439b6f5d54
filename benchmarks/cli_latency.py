"""How fast does the ``diffes`` command answer when it has no real work to do? ``--help`` of every command and
the validation errors that need no torch, each a fresh process (the user's experience), median of repeats.

    python -m benchmarks.cli_latency [--repeats 5]

Goal (issue 12): under 1 s each on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import save

GOAL_SECONDS = 1.0


def cases(tmp: Path) -> dict[str, list[str]]:
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text('probes = "two"\n')
    runs = str(tmp / "runs")
    return {
        "diffes --help": ["--help"],
        "diffes search --help": ["search", "--help"],
        "diffes generate --help": ["generate", "--help"],
        "diffes prune --help": ["prune", "--help"],
        "search --budget -1": ["search", "--budget", "-1", "--runs-dir", runs],
        "search --budget half (flag type)": ["search", "--budget", "half", "--runs-dir", runs],
        "search --model nope": ["search", "--model", "nope", "--runs-dir", runs],
        "search --config (wrong type in file)": ["search", "--config", str(bad_toml), "--runs-dir", runs],
        "search --stages 30 --steps 20": ["search", "--stages", "30", "--steps", "20", "--runs-dir", runs],
        "search --name ../escape": ["search", "--name", "../escape", "--runs-dir", runs],
    }


def timed(args: list[str], repeats: int) -> dict[str, object]:
    runs, codes = [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "diffes.cli", *args], capture_output=True, text=True)
        runs.append(time.perf_counter() - start)
        codes.add(result.returncode)
    return {"seconds": statistics.median(runs), "max_seconds": max(runs), "exit_codes": sorted(codes)}


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: timed(argv, args.repeats) for name, argv in cases(Path(tmp)).items()}
    lines = ["| command | median (s) | max (s) | exit | goal < 1 s |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        met = "met" if float(r["seconds"]) < GOAL_SECONDS else "missed"  # type: ignore[arg-type]
        lines.append(f"| `{name}` | {r['seconds']:.2f} | {r['max_seconds']:.2f} | {r['exit_codes']} | {met} |")
    slowest = max(float(r["seconds"]) for r in results.values())  # type: ignore[arg-type]
    lines += ["", f"Slowest median {slowest:.2f} s: goal {'met' if slowest < GOAL_SECONDS else 'missed'}."]
    save("cli_latency", {"repeats": args.repeats, "goal_seconds": GOAL_SECONDS, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    main(parser.parse_args())
