"""`diffes search --executor ray` on the session's Ray cluster: a worker killed mid-run changes nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from cli_helpers import TINY, diffes, outcome, start, wait_for

pytestmark = pytest.mark.slow


def test_killing_a_worker_mid_search_changes_nothing(ray_address: str, tmp_path: Path) -> None:
    # enough generations that the kill lands before the end, whichever generation it hits
    ray_flags = ["--executor", "ray", "--address", ray_address, "--runs-dir", str(tmp_path)]
    tiny = [*TINY, "--generations", "12", "--probes", "2"]
    # the uninterrupted run on the driver itself: `diffes` runs with one torch thread, as each Ray worker does,
    # so its scores are the workers' bit for bit, without the ~10 s of starting two workers. A stricter
    # comparison than with a calm Ray run: the killed run must also equal a run that never used Ray.
    diffes("search", "--runs-dir", str(tmp_path), "--name", "calm", *tiny)
    proc = start("search", *ray_flags, "--name", "hit", *tiny)
    run = tmp_path / "hit"
    wait_for(run / "checkpoints" / "gen_0001.json", proc)
    worker = json.loads(sorted((run / "workers").glob("worker-*.json"))[0].read_text())
    os.kill(worker["pid"], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    last = sorted((run / "checkpoints").glob("gen_*.json"))[-1]
    assert json.loads(last.read_text())["worker_restarts"] >= 1
    assert outcome(run) == outcome(tmp_path / "calm")
    # the dense model with the steps of equal cost, measured on the driver once the workers are gone
    fewer = json.loads((run / "best.json").read_text())["fewer_steps"]
    assert fewer["num_steps"] == 6 and fewer["distance"] > 0
    workers = [json.loads(p.read_text()) for p in (run / "workers").glob("worker-*.json")]
    assert len(workers) == 3 and all(w["device"] == "cpu" for w in workers)  # two GPU slots, CPU fallback
