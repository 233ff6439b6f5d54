"""``diffes.search(pipe, ...)``: the main job on a pipeline already in memory (fine-tuned, LoRA fused, custom
scheduler), through the same code path as ``diffes search``.

The pipeline is saved into the run directory (``save_pretrained``, safetensors), so every later step (Ray
workers, resume, export) loads it from there exactly as it loads a user's folder; the search then runs as if
``--model <run>/pipeline`` had been given.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["search"]


def search(
    pipe: Any,
    *,
    prompts: Sequence[str] | None = None,
    classes: Sequence[int] | str | None = None,
    budget: float = 0.5,
    name: str = "",
    runs_dir: str | os.PathLike[str] = "runs",
    progress: bool = True,
    **settings: Any,
) -> Any:
    """Search a schedule for ``pipe`` under ``budget``; ``settings`` are ``RunConfig`` fields (``steps``,
    ``stages``, ``generations``, ``executor``, ...). Returns a ``SearchResult`` with ``.apply(pipe)``,
    ``.export(dir)``, ``.best`` and ``.run``."""
    from diffes.errors import ConfigError
    from diffes.io import write_json
    from diffes.runs.config import RunConfig
    from diffes.runs.job import run_new
    from diffes.runs.rundir import RunDir, check_run_name

    if (prompts is None) == (classes is None):
        raise ConfigError("conditions", None, "give prompts= (text-to-image) or classes= (class-conditional)")
    name = name or time.strftime("run-%Y%m%d-%H%M%S")
    check_run_name(name)  # the staging folder is named after it
    staging = Path(runs_dir) / f".{name}.pipeline-staging"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted call for the same name
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        prompts_file = staging / "prompts.txt"
        if prompts is not None:
            prompts_file.write_text("\n".join(str(p) for p in prompts) + "\n", encoding="utf-8")
        if classes is not None and not isinstance(classes, str):
            classes = ",".join(str(int(c)) for c in classes)
        conditions = {"prompts": str(prompts_file)} if prompts is not None else {"classes": classes}
        values = {"model": str(staging), "budget": budget, "name": name, "runs_dir": str(runs_dir)}
        config = RunConfig.from_dict({**values, **conditions, **settings}).resolved()
        run = RunDir.create(config)
        final = run.path / "pipeline"
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    moved: dict[str, Any] = {"model": str(final)} | (
        {"prompts": str(final / "prompts.txt")} if prompts is not None else {}
    )
    config = replace(config, model=replace(config.model, **moved))
    write_json(run.config_file, config.to_dict())
    return run_new(run, progress)
