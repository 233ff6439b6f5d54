"""Run the real ``diffes`` command in a subprocess, and wait for files it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TINY = [
    "--stages", "3", "--steps", "6", "--calibration-samples", "4", "--probes", "1",
    "--population", "4", "--offspring", "4", "--generations", "4", "--no-export", "--quiet",
]  # fmt: skip


def diffes(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "diffes.cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "diffes.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended before {path} appeared:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.02)


def outcome(run: Path) -> dict[str, Any]:
    """What must not depend on interruptions: best schedule, hall of fame, logbook, final search state."""
    best = json.loads((run / "best.json").read_text())
    last = sorted((run / "checkpoints").glob("gen_*.json"))[-1]
    return {
        "best": {k: best[k] for k in ("genome", "distance", "cost", "hall_of_fame", "uniform")},
        "logbook": (run / "logbook.jsonl").read_text(),
        "search": json.loads(last.read_text())["search"],
    }
