"""`diffes search --joint` end to end on the zoo DiT: the teacher is the high-step reference, the best schedule
chooses steps, caching and levels on one cost axis, and the export carries all three into load_routed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffes.cli import main
from diffes.fitness.teacher import Teacher
from diffes.routing import load_routed

JOINT = "--joint --reference-steps 12 --steps-grid 8,6,4,3 --cache-every 2 --stages 2 --steps 6 --probes 1 "
JOINT += "--calibration-samples 2 --classes 1,7 --levels 0,0.5 --population 4 --offspring 4 --generations 1 --quiet"
JOINT_FLAGS = [*JOINT.split(), "--budget", "0.4"]


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("joint")
    assert main(["search", *JOINT_FLAGS, "--runs-dir", str(root), "--name", "run"]) == 0
    return root / "run"


def test_the_printout_names_the_choice_and_each_method_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from diffes.cli_search import print_result

    fewer = {"cost": 0.25, "distance": 0.05, "joint": {"steps": 3, "every": [1, 1], "levels": [0, 0]}}
    best = {
        "genome": [1, 1, 0, 0, 0], "cost": 0.25, "distance": 0.02, "samples": "s.png",
        "joint": {"steps": 6, "every": [2, 1], "levels": [0, 0]}, "single_methods": {"fewer_steps": fewer},
        "uniform": {"genome": [0, 0, 0, 1, 1], "cost": 0.2, "distance": 0.4},
    }  # fmt: skip
    print_result(SimpleNamespace(run=SimpleNamespace(path=tmp_path), exported=None, best=best))
    out = capsys.readouterr().out
    assert "choice:   6 steps, compute every [2, 1] step per stage, levels [0, 0]" in out
    assert "fewer_steps alone (3 steps" in out


def test_joint_search_scores_against_the_reference_and_reports_its_choice(joint_run: Path) -> None:
    teacher = Teacher.load(joint_run / "teacher.safetensors")
    assert teacher.steps == 12  # the 12-step reference, not the library's 6 steps
    best = json.loads((joint_run / "best.json").read_text())
    choice = best["joint"]
    assert choice["steps"] in (8, 6, 4, 3) and len(choice["every"]) == len(choice["levels"]) == 2
    assert best["cost"] <= 0.4 + 1e-9
    # the pure methods seed the search and are reported on the same axis
    assert best["fewer_steps"]["steps"] == 4 and best["fewer_steps"]["cost"] == pytest.approx(4 / 12)
    assert best["distance"] <= best["fewer_steps"]["distance"] + 1e-12  # fewer steps alone is in the population


def test_joint_report_shows_the_choice(joint_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(joint_run), "--no-baselines"]) == 0
    page = (joint_run / "report" / "report.html").read_text()
    assert "of 12 reference steps, compute every" in page


def test_joint_export_loads_with_its_steps_and_cache(joint_run: Path, tmp_path: Path) -> None:
    best = json.loads((joint_run / "best.json").read_text())
    choice = best["joint"]
    meta = json.loads((Path(best["export"]) / "routing.json").read_text())
    assert meta["num_steps"] == choice["steps"] and meta["levels"] == choice["levels"]
    assert ("cache" in meta) == (max(choice["every"]) > 1)
    pipe = load_routed(best["export"])
    pipe([1], num_inference_steps=choice["steps"], generator=torch.Generator().manual_seed(0), output_type="pt")
    if "cache" in meta:
        assert pipe.__dict__["_diffes_cache"].summary.computed < choice["steps"]
    grid = tmp_path / "grid.png"
    assert (
        main(["generate", "--routed", best["export"], "--classes", "1", "--per-condition", "1", "-o", str(grid)]) == 0
    )
    assert grid.is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps-grid", "20,5"], "steps_grid='20,5': use step counts in 1..reference_steps=12"),
        (["--steps-grid", "a"], "steps_grid='a'"),
        (["--cache-every", "0"], "cache_every=0"),
        (["--reference-steps", "0"], "reference_steps=0"),
        (["--budget", "0.01"], "budget=0.01: the cheapest joint schedule costs"),
    ],
)
def test_bad_joint_settings_are_one_line_errors(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["search", *JOINT_FLAGS, *flags, "--runs-dir", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
