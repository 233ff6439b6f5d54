"""`diffes search --dry-run`: the run's checks and what it will need, nothing created; a run whose library
would not fit the disk stops before building it."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from cli_helpers import TINY

from diffes.cli import main

Usage = namedtuple("Usage", "total used free")


def test_dry_run_prints_what_the_run_needs_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert main(["search", *TINY, "--runs-dir", str(runs), "--name", "r", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for what in ("library on disk:", "disk during the build:", "driver during the build:", "per search worker:"):
        assert what in out
    assert "3 stages x 8 levels, compensated" in out and not runs.exists()


def test_a_run_without_disk_for_its_library_stops_before_building_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    runs = tmp_path / "runs"
    for extra in (["--dry-run"], []):
        capsys.readouterr()
        assert main(["search", *TINY, "--runs-dir", str(runs), "--name", "r", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"diffes: error: runs_dir='{runs}': building the library needs") and "\n" not in err
        assert not (runs / "r").exists()
