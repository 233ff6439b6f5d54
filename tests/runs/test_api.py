"""diffes.search(pipe, ...) on a pipeline in memory takes the CLI's code path and gives the CLI's results."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import PROMPTS, full_sd_pipeline

import diffes
from diffes.cli import main

SETTINGS = dict(
    stages=2,
    steps=4,
    calibration_samples=2,
    probes=1,
    levels="0,0.5",
    population=2,
    offspring=2,
    generations=1,
    importance="magnitude",
    seed=3,
    export=False,
)


def _outcome(run: Path) -> tuple[dict, str]:
    best = json.loads((run / "best.json").read_text())
    keep = ("genome", "distance", "cost", "hall_of_fame", "uniform", "evaluations")
    return {k: best[k] for k in keep}, (run / "logbook.jsonl").read_text()


def test_api_matches_the_cli_on_the_same_pipeline(tmp_path: Path) -> None:
    pipe = full_sd_pipeline()
    result = diffes.search(pipe, prompts=PROMPTS, budget=1.0, name="api", runs_dir=tmp_path, progress=False, **SETTINGS)
    assert (tmp_path / "api" / "pipeline" / "model_index.json").is_file()  # workers and resume load it from here
    assert not list(tmp_path.glob(".*staging"))

    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items() if k != "export"]
    argv = ["search", "--model", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--budget", "1.0"]
    assert main([*argv, *flags, "--no-export", "--quiet", "--name", "cli", "--runs-dir", str(tmp_path)]) == 0
    assert _outcome(tmp_path / "api") == _outcome(tmp_path / "cli")

    handle = result.apply(pipe)  # the in-memory pipeline, routed by the best schedule
    assert handle.router.library.num_stages == 2
    handle.remove()
    exported = result.export(tmp_path / "export")
    assert (exported / "routing.json").is_file()
