"""Runs: the run directory, checkpoints, resume, export and status of a search job."""

from diffes.runs.config import RunConfig, load_config_file
from diffes.runs.export import export_run
from diffes.runs.job import SearchResult, resume_run, start_run
from diffes.runs.rundir import RunDir

__all__ = ["RunConfig", "RunDir", "SearchResult", "export_run", "load_config_file", "resume_run", "start_run"]
