"""Every pipeline family through the CLI, end to end: search -> resume -> export -> load_routed -> generate.

In-process through ``main(argv)`` with the tiny pipelines saved once per session, so the whole walk costs seconds
per family. The routed denoiser's exactness against torch-pruning copies is tested in tests/pruning and
tests/routing; here the question is whether every stage of a run talks to the family's adapter alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import FAMILIES, FAMILY_SIZE, PROMPTS

from diffes.cli import main
from diffes.routing import load_routed

# budget 0.8: every family's half-width level is cheaper, so the schedules found prune
SMALL = "--stages 2 --steps 4 --calibration-samples 2 --probes 1 --levels 0,0.5 --population 2 --offspring 2 "
SMALL += "--importance magnitude --budget 0.8 --quiet"
SAVED = sorted(f for f in FAMILIES if f != "zoo")


@pytest.fixture(scope="session")
def saved_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny pipeline saved with save_pretrained (tokenizers and text encoders included), as a user's folder."""
    root = tmp_path_factory.mktemp("pipelines")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = {}
    for family in SAVED:
        FAMILIES[family][0]().save_pretrained(root / family, safe_serialization=True)
        out[family] = root / family
    return out


def _condition_flags(family: str, root: Path) -> list[str]:
    if isinstance(FAMILIES[family][1][0], int):
        return ["--classes", "1,2"]
    flags = ["--prompts", str(root / "prompts.txt")]
    if family in FAMILY_SIZE:
        height, width = FAMILY_SIZE[family]
        flags += ["--height", str(height), "--width", str(width)]
    if family == "flux":
        flags += ["--guidance-kind", "distilled", "--guidance", "3.5"]
    return flags


@pytest.mark.slow
@pytest.mark.parametrize("family", SAVED)
def test_search_resume_export_generate(family: str, saved_pipelines: dict[str, Path], tmp_path: Path) -> None:
    model = saved_pipelines[family]
    flags = [
        "--model",
        str(model),
        *_condition_flags(family, model.parent),
        *SMALL.split(),
        "--runs-dir",
        str(tmp_path),
    ]
    assert main(["search", *flags, "--name", "run", "--generations", "1", "--no-export"]) == 0
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["fitness"]["metric"] == "ssim"  # a non-zoo model gets a metric that needs no weights
    # the encoded conditions live in the run directory: workers load no text encoder
    assert (run / "teacher.json").is_file()
    assert main(["resume", str(run), "--generations", "2", "--quiet"]) == 0
    best = json.loads((run / "best.json").read_text())
    assert best["generation"] == 2 and len(best["genome"]) == 2
    assert any(best["genome"]) and best["cost"] <= 0.8  # the schedule prunes this family's denoiser
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    pipe = load_routed(tmp_path / "export")
    assert type(pipe).__name__ == type(FAMILIES[family][0]()).__name__
    grid = tmp_path / "grid.png"
    generate = [
        "generate",
        "--routed",
        str(tmp_path / "export"),
        "--steps",
        "4",
        "--per-condition",
        "1",
        "-o",
        str(grid),
    ]
    conditions = _condition_flags(family, model.parent)
    if "--prompts" in conditions:
        generate += [c for c in conditions if c != "--prompts" and not c.endswith(".txt")]
        generate += ["--prompt", PROMPTS[0]]
    else:
        generate += conditions
    assert main(generate) == 0
    assert grid.is_file()


def test_dense_teacher_scores_zero(saved_pipelines: dict[str, Path], tmp_path: Path) -> None:
    """The adapter's dense run is the teacher's, so the dense schedule's distance is exactly 0."""
    from diffes.runs import RunDir
    from diffes.runs.context import load_context

    model = saved_pipelines["sd"]
    flags = ["--model", str(model), *_condition_flags("sd", model.parent), *SMALL.split(), "--runs-dir", str(tmp_path)]
    assert main(["search", *flags, "--name", "run", "--generations", "0", "--no-export"]) == 0
    context = load_context(str(RunDir.open(tmp_path / "run").path))
    assert context.evaluator.evaluate([(0, 0)]) == [0.0]
    assert torch.equal(context.evaluator.sample((0, 0)), context.teacher.images)
