"""A `diffes search` killed with SIGKILL and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import TINY, diffes, outcome, start, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run: the outcome the interrupted ones must reach, and a finished run to inspect."""
    runs = tmp_path_factory.mktemp("runs")
    diffes("search", "--runs-dir", str(runs), "--name", "ref", *TINY)
    return runs / "ref"


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> dict[str, Any]:
    return outcome(reference_run)


def kill_then_resume(runs: Path, name: str, marker: str) -> Path:
    proc = start("search", "--runs-dir", str(runs), "--name", name, *TINY)
    wait_for(runs / name / marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (runs / name / "best.json").exists(), "killed too late: the run had already finished"
    diffes("resume", str(runs / name))
    return runs / name


def test_killed_while_preparing(tmp_path: Path, reference: dict) -> None:
    run = kill_then_resume(tmp_path, "early", "config.json")
    assert outcome(run) == reference


def test_killed_mid_search(tmp_path: Path, reference: dict) -> None:
    run = kill_then_resume(tmp_path, "mid", "checkpoints/gen_0002.json")
    assert outcome(run) == reference
    assert not list(run.rglob("*.tmp")), "a temporary file was left behind"


def test_terminated_mid_search(tmp_path: Path, reference: dict) -> None:
    # SIGTERM, as a cluster scheduler sends on preemption: a clean stop at a consistent point, then resume
    proc = start("search", "--runs-dir", str(tmp_path), "--name", "term", *TINY)
    wait_for(tmp_path / "term" / "checkpoints" / "gen_0002.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert err.strip().endswith("diffes: terminated (SIGTERM)")
    assert not (tmp_path / "term" / "best.json").exists(), "terminated too late: the run had already finished"
    diffes("resume", str(tmp_path / "term"))
    assert outcome(tmp_path / "term") == reference
    assert not list((tmp_path / "term").rglob("*.tmp")), "a temporary file was left behind"


def test_status_and_export_of_a_finished_run(tmp_path: Path, reference_run: Path) -> None:
    # the reference run: finished, never interrupted, only read here (a run of its own cost ~15 s more)
    done = reference_run
    generations = TINY[TINY.index("--generations") + 1]
    status = diffes("status", str(done)).stdout
    assert f"generation {generations}/{generations} (finished)" in status and "best so far" in status
    out = diffes("export", str(done), "--out", str(tmp_path / "exp")).stdout
    assert "wrote" in out
    routing = json.loads((tmp_path / "exp" / "routing.json").read_text())
    best = json.loads((done / "best.json").read_text())
    assert routing["levels"] == best["genome"]
    grid = tmp_path / "grid.png"
    diffes("generate", "--routed", str(tmp_path / "exp"), "--steps", "6", "--per-class", "1", "-o", str(grid))
    assert grid.stat().st_size > 500
    umask = os.umask(0)
    os.umask(umask)
    for path in [*done.rglob("*"), *(tmp_path / "exp").rglob("*")]:
        # readable by Ray workers running as another user: what open() and mkdir() give, not 0600/0700
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path
