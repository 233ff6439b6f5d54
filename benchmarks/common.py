"""Shared helpers of the benchmark scripts: result files and environment facts."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diffes.io import write_json
from diffes.models.loading import fast_cpu_math
from diffes.runs.config import RunConfig
from diffes.runs.context import prepare
from diffes.runs.rundir import RunDir

RESULTS = Path(__file__).parent / "results"


def environment() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def save(name: str, payload: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/<name>.json and <name>.md (the table the README quotes)."""
    write_json(RESULTS / f"{name}.json", {"environment": environment(), **payload})
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def prepared_run(config: RunConfig, threads: int) -> RunDir:
    """A run directory (in a temporary folder) with its pruning library and teacher built, as `diffes search` would."""
    fast_cpu_math()
    torch.set_num_threads(threads)
    run = RunDir.create(config)
    prepare(run, config, progress=False)
    return run


def temp_config(name: str, generations: int, **extra: Any) -> RunConfig:
    values = {"name": name, "runs_dir": tempfile.mkdtemp(), "generations": generations, "export": False, **extra}
    return RunConfig.from_dict(values).resolved()
