"""User mistakes: one line naming the field, exit 2, no traceback, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import TINY, diffes

from diffes.cli import main
from diffes.runs.config import RunConfig, load_config_file


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """In-process ``main``: the same code path as the console script, without a new interpreter."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("diffes: error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def test_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    result = diffes("search", "--runs-dir", str(tmp_path), "--model", "nope", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "diffes: error: model='nope': choose one of dit-digits, unet-digits, t2i-digits "
        "or give a path to a diffusers pipeline"
    )


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--model", "nope"], "model='nope'"),
        (["--metric", "fid"], "metric='fid'"),
        (["--importance", "random"], "importance='random'"),
        (["--stages", "30", "--steps", "20"], "stages=30"),
        (["--levels", "0,1.5"], "levels=1.5"),
        (["--budget", "1.5"], "budget=1.5"),
        (["--executor", "slurm"], "executor='slurm'"),
    ],
)
def test_bad_search_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], field: str) -> None:
    line = fails(capsys, "search", "--runs-dir", str(tmp_path), "--name", "bad", *TINY, *flags)
    assert field in line
    assert not (tmp_path / "bad").exists()


def test_budget_below_cheapest_schedule_leaves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails(capsys, "search", "--runs-dir", str(tmp_path), "--name", "cheap", *TINY, "--budget", "0.05")
    assert "budget=0.05" in line and "cheapest" in line
    assert not (tmp_path / "cheap").exists()


def test_existing_run_and_corrupt_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["search", "--runs-dir", str(tmp_path), "--name", "r", *TINY, "--generations", "1"]) == 0
    assert "already exists" in fails(capsys, "search", "--runs-dir", str(tmp_path), "--name", "r", *TINY)
    last = sorted((tmp_path / "r" / "checkpoints").glob("gen_*.json"))[-1]
    last.write_text(last.read_text()[:100])  # truncated
    assert "corrupt" in fails(capsys, "resume", str(tmp_path / "r"))
    assert "not a diffes run" in fails(capsys, "resume", str(tmp_path / "nothing"))


def test_generate_and_prune_mistakes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "classes" in fails(capsys, "generate", "--classes", "3-1")
    assert "classes=[12]" in fails(capsys, "generate", "--classes", "12", "--steps", "1")
    assert "steps=0" in fails(capsys, "generate", "--steps", "0")
    assert "levels" in fails(capsys, "prune", "--levels", "", "--out", str(tmp_path / "lib"))
    assert "importance='x'" in fails(capsys, "prune", "--importance", "x", "--out", str(tmp_path / "lib"))
    assert "no library.json" in fails(capsys, "inspect", str(tmp_path))


def test_config_file_keys_match_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('budget = 0.4\nstages = 5\ncalibration-samples = 8\nexecutor = "local"\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("budget: 0.4\nstages: 5\ncalibration_samples: 8\n")
    for path in (toml, yaml):
        config = RunConfig.from_dict(load_config_file(path))
        assert (config.search.budget, config.pruning.stages, config.pruning.calibration_samples) == (0.4, 5, 8)
    bad = tmp_path / "bad.toml"
    bad.write_text("budgett = 0.4\n")
    assert "budgett" in fails(capsys, "search", "--config", str(bad))
    assert RunConfig.from_dict(json.loads(json.dumps(RunConfig().to_dict()))) == RunConfig()
