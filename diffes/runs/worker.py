"""The Ray worker factory: an evaluator built from the run directory, on this worker's device."""

from __future__ import annotations

import os

import torch

from diffes.fitness.evaluator import Evaluator
from diffes.io import write_json
from diffes.models.loading import fast_cpu_math
from diffes.runs.context import load_context
from diffes.runs.rundir import RunDir

__all__ = ["worker_evaluator"]


def worker_evaluator(run_path: str, threads: int, worker_id: int) -> Evaluator:
    """Runs inside the actor: pins threads (scores must not depend on the worker), loads the run's files."""
    torch.set_num_threads(threads)
    fast_cpu_math()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = RunDir.open(run_path)
    write_json(run.workers_dir / f"worker-{worker_id}.json", {"pid": os.getpid(), "device": device})
    return load_context(run_path, device=device).evaluator
