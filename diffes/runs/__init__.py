"""Runs: the run directory, checkpoints, resume, export and status of a search job."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffes._lazy import lazy_exports

if TYPE_CHECKING:
    from diffes.runs.config import RunConfig, load_config_file
    from diffes.runs.export import export_run
    from diffes.runs.job import SearchResult, resume_run, start_run
    from diffes.runs.rundir import RunDir

_EXPORTS = {
    "RunConfig": "config",
    "load_config_file": "config",
    "export_run": "export",
    "SearchResult": "job",
    "resume_run": "job",
    "start_run": "job",
    "RunDir": "rundir",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["RunConfig", "RunDir", "SearchResult", "export_run", "load_config_file", "resume_run", "start_run"]
