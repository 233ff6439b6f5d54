"""``diffes search --dry-run``: every check a run makes before it starts, and the memory and disk it will need,
without creating anything. A real run makes the same disk check before it builds its library."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffes.errors import ConfigError

if TYPE_CHECKING:
    from diffes.pruning.estimate import LibraryEstimate
    from diffes.runs.config import RunConfig

__all__ = ["dry_run", "estimate_for", "check_free_disk", "free_disk"]

GB = 2**30


def dry_run(config: RunConfig) -> list[str]:
    """Check ``config`` as ``diffes search`` would (run name, device, dtype, metric weights, model files, guidance)
    and return the lines that say what the run will need; raises the error the run would raise."""
    from diffes.runs.context import load_adapter, run_conditions
    from diffes.runs.job import check_runtime
    from diffes.runs.rundir import RunDir

    config = config.resolved()
    run = RunDir.check_new(config)
    check_runtime(config)
    adapter = load_adapter(config)
    adapter.check_guidance(config.fitness.guidance_config())
    estimate = estimate_for(adapter, run_conditions(config, adapter), config)
    free = check_free_disk(run.path, estimate.build_disk_bytes)
    pruning = config.pruning
    head = [
        f"run:       {run.path} (not created: dry run)",
        f"library:   {pruning.stages} stages x {len(pruning.levels)} levels, "
        f"{'compensated' if pruning.compensate else 'uncompensated'}, {pruning.axis} pruning",
    ]
    return [*head, *estimate.lines(), f"free disk:                 {free / GB:.2f} GB at {_existing(run.path)}"]


def estimate_for(adapter: Any, conditions: list[Any], config: RunConfig) -> LibraryEstimate:
    """The library estimate for the run's denoiser, traced on the first call of a one-sample calibration run."""
    from diffes.models.adapters import calibration_runner
    from diffes.pruning.calibration import first_call
    from diffes.pruning.estimate import estimate_library, structure_of

    guidance, negative = config.fitness.guidance_config(), config.model.negative_prompt
    run = calibration_runner(adapter, conditions, 1, config.search.seed, guidance, negative)
    call = first_call(adapter.pipe, run, config.pruning.steps)
    structure = structure_of(adapter.denoiser, call, config.pruning)
    return estimate_library(adapter.denoiser, structure, config.pruning)


def free_disk(folder: Path) -> int:
    """Free bytes where ``folder`` is (or will be)."""
    return shutil.disk_usage(_existing(folder)).free


def check_free_disk(folder: Path, needed: int) -> int:
    """Free bytes where ``folder`` is (or will be); a ConfigError when fewer than ``needed``."""
    free = free_disk(folder)
    if free < needed:
        fix = (
            f"building the library needs {needed / GB:.2f} GB of disk and {free / GB:.2f} GB are free; free some, "
            f"or choose fewer stages or levels, or another runs_dir"
        )
        raise ConfigError("runs_dir", str(folder.parent), fix)
    return free


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
