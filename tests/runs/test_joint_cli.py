"""`diffes search --joint` end to end on the zoo DiT: the teacher is the high-step reference, the best schedule
chooses steps, caching and levels on one cost axis, and the export carries all three into load_routed. Resume,
Ray workers and NSGA-II run it as they run a plain search; sensitivity seeds join its first population."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from diffes.cli import main
from diffes.fitness.teacher import Teacher
from diffes.io import write_json
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
        (["--sensitivity-seeds", "--model", "unet-digits"], "sensitivity_seeds=True: unet-digits has a UNet"),
    ],
)
def test_bad_joint_settings_are_one_line_errors(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["search", *JOINT_FLAGS, *flags, "--runs-dir", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def _outcome(run: Path) -> dict:
    """The best schedule, its hall of fame, the logbook and the final search state (rng included)."""
    best = json.loads((run / "best.json").read_text())
    last = sorted((run / "checkpoints").glob("gen_*.json"))[-1]
    keys = ("genome", "distance", "cost", "hall_of_fame", "uniform", "joint")
    search = json.loads(last.read_text())["search"]
    return {"best": {k: best[k] for k in keys}, "logbook": (run / "logbook.jsonl").read_text(), "search": search}


def _beside(joint_run: Path, tmp_path: Path, name: str, fitness: Any = None, **search: Any) -> Any:
    """A new run of ``joint_run``'s config, changed by ``search`` and ``fitness`` keys, over its library, teacher
    and step grid (built once: the run under test only scores). It is not started; ``run_new`` runs it."""
    from diffes.runs import RunDir

    config = RunDir.open(joint_run).config()
    sections = {"search": replace(config.search, **search), "fitness": replace(config.fitness, **(fitness or {}))}
    run = RunDir.create(replace(config, name=name, runs_dir=str(tmp_path), **sections))
    shutil.copytree(joint_run / "library", run.library_dir)
    for file in ("teacher.safetensors", "teacher.json", "joint.json"):
        shutil.copy(joint_run / file, run.path / file)
    return run


def test_a_resumed_joint_run_ends_as_an_uninterrupted_one(joint_run: Path, tmp_path: Path) -> None:
    from diffes.runs.job import run_new

    run_new(_beside(joint_run, tmp_path, "cut", generations=0), progress=False)  # stopped after generation 0
    assert main(["resume", str(tmp_path / "cut"), "--generations", "1", "--quiet"]) == 0
    assert _outcome(tmp_path / "cut") == _outcome(joint_run)


@pytest.mark.slow
def test_a_joint_run_on_ray_workers_matches_the_local_one(joint_run: Path, ray_address: str, tmp_path: Path) -> None:
    from diffes.runs import RunDir
    from diffes.runs.job import run_new

    run = _beside(joint_run, tmp_path, "ray", generations=0)
    config = run.config()
    execution = replace(config.execution, executor="ray", address=ray_address, workers=1)
    write_json(run.config_file, replace(config, execution=execution).to_dict())
    run_new(run, progress=False)
    on_ray, local = (json.loads(r.checkpoint_path(0).read_text())["search"] for r in (run, RunDir.open(joint_run)))
    # the same schedules, scored on the worker's one thread: distances equal up to float summation order
    assert on_ray["populations"] == local["populations"] and on_ray["hall_of_fame"] == local["hall_of_fame"]
    for ray_point, local_point in zip(on_ray["cache"], local["cache"], strict=True):
        assert ray_point[0] == local_point[0] and ray_point[1] == pytest.approx(local_point[1], rel=1e-5)
    assert [json.loads(p.read_text())["device"] for p in run.workers_dir.glob("worker-*.json")] == ["cpu"]


def test_a_joint_nsga2_run_returns_a_front_of_joint_schedules(joint_run: Path, tmp_path: Path) -> None:
    from diffes.runs.job import run_new

    front = run_new(_beside(joint_run, tmp_path, "front", algorithm="nsga2"), progress=False).best["pareto"]
    costs, distances = [p["cost"] for p in front], [p["distance"] for p in front]
    assert len(front) >= 2 and costs == sorted(costs) and distances == sorted(distances, reverse=True)
    assert costs[0] < 0.25 and costs[-1] <= 0.4 + 1e-9  # spread from the cheap end up to the budget
    assert all(len(p["genome"]) == 5 and p["joint"]["steps"] in (8, 6, 4, 3) for p in front)


def test_sensitivity_seeds_start_the_search_and_are_measured_once(
    joint_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffes.pruning.library import PruningLibrary
    from diffes.runs.context import make_budget, sensitivity_seeds
    from diffes.runs.job import run_new

    run = _beside(joint_run, tmp_path, "seeded", {"sensitivity_seeds": True}, generations=0, budget=0.52)
    run_new(run, progress=False)
    measured = json.loads((run.path / "sensitivity.json").read_text())
    assert measured["steps"] == 6 and len(measured["pruned"]) == 6 and measured["probes"] == 2
    library, config = PruningLibrary.load(run.library_dir), run.config()
    budget = make_budget(run, config, library)
    [seed] = sensitivity_seeds(run, library, budget)
    first = json.loads(run.checkpoint_path(0).read_text())["search"]["populations"]
    assert list(seed) in first[0] and seed not in budget.named_genomes().values()
    # killed before generation 0 was scored: the resume seeds from the saved measurement, not a new one
    for path in (*run.checkpoints.iterdir(), run.path / "logbook.jsonl", run.path / "best.json"):
        path.unlink()

    def measure(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sensitivity was measured again")

    monkeypatch.setattr("diffes.caching.sensitivity.measure_sensitivity", measure)
    assert main(["resume", str(run.path), "--quiet"]) == 0
    assert json.loads(run.checkpoint_path(0).read_text())["search"]["populations"] == first


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"steps": 2, "probes": 1, "blocks": ["b"], "cached": [[0.0], [0.1]], "pruned": [[0.1], [0.2, 0.3]]}',
            "ValueError",
        ),
        (
            '{"steps": 3, "probes": 1, "blocks": ["b"], "cached": [[0.0], [0.1]], "pruned": [[0.1], [0.2]]}',
            "not steps x blocks (3, 1)",
        ),
        ('{"steps": 2, "probes": 1, "blocks": ["b"]}', "cached: field required"),
    ],
    ids=["ragged", "shape", "missing"],
)
def test_a_damaged_sensitivity_file_is_one_line(content: str, message: str, tmp_path: Path) -> None:
    from diffes.errors import CheckpointError
    from diffes.runs import RunDir
    from diffes.runs.context import load_sensitivity

    (tmp_path / "sensitivity.json").write_text(content)
    with pytest.raises(CheckpointError) as error:
        load_sensitivity(RunDir(tmp_path))
    text = str(error.value)
    assert text.startswith(f"{tmp_path / 'sensitivity.json'}: ") and message in text and "\n" not in text
    assert text.endswith("delete it and resume to measure it again")
