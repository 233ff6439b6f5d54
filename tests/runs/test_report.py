"""`diffes report`: a self-contained HTML page whose figures and table match the run they describe."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffes.cli_report import add_report_command
from diffes.cli_search import print_result
from diffes.errors import CheckpointError, ConfigError
from diffes.fitness.baselines import equal_cost_steps
from diffes.io import write_json
from diffes.models.loading import fast_cpu_math
from diffes.pruning.library import PruningLibrary
from diffes.runs import RunConfig, RunDir, job, start_run
from diffes.runs.context import plain_budget
from diffes.runs.report import Scored, load_report_data, population_share, render_html, write_figures, write_report
from diffes.runs.rng import capture_rng
from diffes.search import SearchState, make_toolbox, run_search

TINY = dict(
    stages=3, steps=6, calibration_samples=4, probes=1, population=4, offspring=4, generations=2, export=False
)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    """A real tiny GA run, and an NSGA-II search over its library with a stand-in fitness (checkpoints only)."""
    root = tmp_path_factory.mktemp("runs")
    with one_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(job, "write_samples", lambda run, summary: run.path / "samples.png")  # not tested here: skip it
        ga = start_run(RunConfig.from_dict({"name": "ga", "runs_dir": str(root), **TINY}), progress=False).run
    return {"ga": ga, "nsga": nsga2_run(ga, root / "nsga")}


@contextmanager
def one_thread() -> Iterator[None]:
    """Module fixtures run before conftest's function-scoped settings. One torch thread: on 2 cores shared with
    other jobs, two spinning OpenMP threads made this module 50x slower (2 s alone, 125 s next to a busy job)."""
    threads = torch.get_num_threads()
    fast_cpu_math()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nsga2_run(source: RunDir, path: Path) -> RunDir:
    """A run directory with the checkpoints of a 2-generation NSGA-II search, fitness 1 - cost (+ a tie breaker)."""
    config = source.config()
    config = replace(config, name=path.name, search=replace(config.search, algorithm="nsga2"))
    run = RunDir(path)
    shutil.copytree(source.library_dir, run.library_dir)
    write_json(run.config_file, config.to_dict())
    budget = plain_budget(config, PruningLibrary.load(run.library_dir))
    fitness = lambda genomes: [1 - budget.cost(g) + 0.01 * (g[0] - g[-1]) ** 2 for g in genomes]  # noqa: E731
    toolbox = make_toolbox(config.search, budget, fitness)

    def checkpoint(state: SearchState) -> None:
        run.write_checkpoint(state.generation, {"search": state.to_json(), "rng": capture_rng(), "worker_restarts": 0})

    run_search(config.search, budget, toolbox, on_generation=checkpoint)
    return run


@pytest.fixture(scope="module")
def report(runs: dict[str, RunDir], tmp_path_factory: pytest.TempPathFactory) -> Path:
    with one_thread():
        return write_report(runs["ga"], tmp_path_factory.mktemp("report"), per_class=2)


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_html_is_self_contained_and_references_existing_files(report: Path) -> None:
    page = report.read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs, "the page shows no images"
    for ref in refs:
        assert "/" not in ref and ":" not in ref, f"{ref} is not a file beside the page"
        assert (report.parent / ref).is_file(), f"{ref} is referenced but missing"
    assert "<script" not in page.lower() and "http" not in page.lower()
    assert {p.name for p in pngs(report.parent)} == set(refs), "every PNG is shown"


def test_every_png_is_a_real_picture(report: Path) -> None:
    names = {p.name for p in pngs(report.parent)}
    expected = {"progress", "schedule", "hall_of_fame", "schedules", "samples_dense", "samples_best", "samples_uniform"}
    assert names == {f"{n}.png" for n in expected}
    for path in pngs(report.parent):
        assert path.stat().st_size > 2048, f"{path.name} is suspiciously small"
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        assert pixels.std() > 8, f"{path.name} is blank"


def test_table_and_figures_match_the_run(runs: dict[str, RunDir], report: Path) -> None:
    run = runs["ga"]
    best = run.best()
    assert best is not None
    table = re.search(r'<table class="stages">(.*?)</table>', report.read_text(), re.S)
    assert table is not None
    rows = re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>L(\d+)</td><td>(\d+)%</td>", table.group(1))
    assert [int(level) for _, level, _ in rows] == best["genome"]
    levels = run.config().pruning.levels
    assert [int(pct) for _, _, pct in rows] == [round(100 * levels[lv]) for lv in best["genome"]]
    # every run measures each level's latency on its device, so the cost table has it
    assert "<th>Latency / call</th>" in table.group(1)
    assert len(re.findall(r"<td>[\d.]+ [mµ]?s \([\d.]+%\)</td>", table.group(1))) == len(rows)
    data = load_report_data(run)
    assert list(data.best.genome) == best["genome"] and data.best.distance == best["distance"]
    assert list(data.uniform.genome) == best["uniform"]["genome"]
    assert [list(s.genome) for s in data.hall_of_fame] == [p["genome"] for p in best["hall_of_fame"]]
    logbook = [json.loads(line) for line in (run.path / "logbook.jsonl").read_text().splitlines()]
    assert [c.generation for c in data.curve] == [r["gen"] for r in logbook] == [0, 1, 2]
    assert [min(c.population) for c in data.curve] == [r["min"] for r in logbook]
    assert [c.best for c in data.curve] == [min(r["min"] for r in logbook[: i + 1]) for i in range(len(logbook))]
    share = population_share(data.state, len(levels))
    assert share.shape == (len(levels), 3) and np.allclose(share.sum(axis=0), 1)
    assert f"{best['distance']:.4f}" in report.read_text()


def test_the_dense_model_with_fewer_steps_is_in_the_summary_the_printout_and_the_report(
    runs: dict[str, RunDir], report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["ga"]
    best, config = run.best(), run.config()
    assert best is not None
    k, n = equal_cost_steps(config.pruning.steps, config.search.budget), config.pruning.steps
    own, dpm = best["fewer_steps"], best["fewer_steps_dpm_solver"]
    assert (own["sampler"], own["steps"], own["num_steps"], own["cost"]) == ("DDIM", k, n, k / n)
    assert (dpm["sampler"], dpm["steps"], dpm["num_steps"]) == ("DPM-Solver++", k, n)
    assert own["distance"] > 0 and dpm["distance"] > 0  # neither sampler with fewer steps is the teacher
    print_result(job.SearchResult(run, best, None))
    printed = capsys.readouterr().out
    assert (
        f"dense with {k} of {n} steps (DDIM)  cost {k / n:.3f} of dense MACs  fitness {own['distance']:.5f}" in printed
    )
    assert f"dense with {k} of {n} steps (DPM-Solver++)" in printed
    page = report.read_text()
    section = re.search(r"<h2>Baselines: the dense model with fewer steps</h2>(.*?)</section>", page, re.S)
    assert section is not None
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+) of (\d+)", section.group(1))
    assert {(sampler, int(steps)) for sampler, steps, _ in rows} >= {("DDIM", k), ("DPM-Solver++", k)}
    assert f"<td>{own['distance']:.4f}</td>" in section.group(1)  # the report's own sampling matches the run's
    assert f"dense with {k} of {n} steps (DDIM, same cost)" in page


def test_nsga2_run_gets_a_pareto_plot(runs: dict[str, RunDir], tmp_path: Path) -> None:
    page = write_report(runs["nsga"], tmp_path, per_class=0)
    assert (tmp_path / "pareto.png").is_file() and not (tmp_path / "schedules.png").exists()
    assert 'src="pareto.png"' in page.read_text() and "Pareto front" in page.read_text()
    assert 'Baselines: fewer steps</h2><p class="note">Not measured' in page.read_text()  # no teacher, no best.json
    data = load_report_data(runs["nsga"])
    front = {s.genome for s in data.front}
    assert [c.generation for c in data.curve] == [0, 1, 2] and len(front) > 1
    for point in data.evaluated:
        beaten = any(dominates(other, point) for other in data.evaluated)
        assert beaten != (point.genome in front), f"{point} is misplaced on or off the front"
    assert not data.finished and pngs(tmp_path) and all(p.stat().st_size > 2048 for p in pngs(tmp_path))


def test_a_uniform_schedule_never_evaluated_is_said_so(runs: dict[str, RunDir], tmp_path: Path) -> None:
    data = load_report_data(runs["nsga"])
    data = replace(data, uniform=replace(data.uniform, distance=None))
    page = render_html(data, write_figures(data, tmp_path), {})
    assert "the uniform schedule was not evaluated" in page and "--per-class 0" in page


def dominates(a: Scored, b: Scored) -> bool:
    assert a.distance is not None and b.distance is not None
    return a.cost <= b.cost and a.distance <= b.distance and (a.cost, a.distance) != (b.cost, b.distance)


def command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diffes")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["report", *argv])


def test_run_without_checkpoints_is_a_one_line_error(runs: dict[str, RunDir], tmp_path: Path) -> None:
    (tmp_path / "young").mkdir()
    shutil.copy(runs["ga"].config_file, tmp_path / "young" / "config.json")
    args = command(str(tmp_path / "young"))
    with pytest.raises(CheckpointError, match="no checkpoints") as err:
        args.func(args)
    assert "\n" not in str(err.value) and "diffes resume" in str(err.value)
    assert not (tmp_path / "young" / "report").exists()


def test_bad_arguments_name_the_field(runs: dict[str, RunDir], tmp_path: Path) -> None:
    args = command(str(runs["ga"].path), "--per-class", "-1", "--out", str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="per-class=-1"):
        args.func(args)
    with pytest.raises(CheckpointError, match="not a diffes run"):
        write_report(RunDir.open(tmp_path), tmp_path / "r")
