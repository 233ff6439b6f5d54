"""RunDir: the files of one search run. Every write is atomic; only JSON and safetensors.

runs/<name>/
  config.json                 the RunConfig snapshot
  library/                    the pruning library (library.json is written last)
  teacher.safetensors/.json   probe noise, labels and the dense model's images
  checkpoints/gen_NNNN.json   search state + every RNG state after generation NNNN
  logbook.jsonl               one line per generation (rewritten from the checkpoint)
  best.json                   the best schedule, its cost and fitness, the uniform schedule and the dense
                              model with the steps of equal cost (fewer_steps, fewer_steps_dpm_solver)
  export/                     the routed checkpoint of the best schedule
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, with_config
from typing_extensions import NotRequired, TypedDict

from diffes.errors import CheckpointError, ConfigError
from diffes.io import atomic_path, check_folder_path, read_json, write_json
from diffes.runs.config import RunConfig, check_run_name
from diffes.schema import RECORD, NonNegative, Positive, Uint32, reading

__all__ = ["RunDir", "check_run_name", "run_path"]

CHECKPOINT = re.compile(r"^gen_(\d{4,})\.json$")


def run_path(runs_dir: str | os.PathLike[str], name: str) -> Path:
    """``runs_dir/name``, refused unless it resolves to a direct child of ``runs_dir`` (a run name that is a
    link to elsewhere would otherwise write there)."""
    root = check_folder_path("runs_dir", runs_dir)
    path = root / check_run_name(name)
    if path.resolve().parent != root.resolve():
        raise ConfigError("name", name, f"{path} leads outside {root} (a link?); pick another name")
    return path


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, config: RunConfig) -> RunDir:
        run = cls.check_new(config)
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.config_file, config.to_dict())
        return run

    @classmethod
    def check_new(cls, config: RunConfig) -> RunDir:
        """The run ``config`` names, checked to be creatable (nothing is created)."""
        run = cls(run_path(config.runs_dir, config.name))
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError("name", config.name, f"{run.path} is a file; pick another name")
        if run.path.exists() and any(run.path.iterdir()):
            fix = f"{run.path} already exists; resume it with `diffes resume {run.path}` or pick a new name"
            raise ConfigError("name", config.name, fix)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        run = cls(path)
        if not run.config_file.is_file():
            raise CheckpointError(f"run={str(run.path)!r}: no config.json there; not a diffes run directory")
        return run

    # ---- paths ----
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def library_dir(self) -> Path:
        return self.path / "library"

    @property
    def teacher_file(self) -> Path:
        return self.path / "teacher.safetensors"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def workers_dir(self) -> Path:
        return self.path / "workers"

    def config(self) -> RunConfig:
        data = read_json(self.config_file, dict[str, Any], fix=CONFIG_FIX)
        with reading(self.config_file, CONFIG_FIX):
            return RunConfig.from_dict(data)

    def has_library(self) -> bool:
        return (self.library_dir / "library.json").is_file()

    def has_teacher(self) -> bool:
        return self.teacher_file.is_file() and self.teacher_file.with_suffix(".json").is_file()

    # ---- checkpoints ----
    def checkpoint_path(self, generation: int) -> Path:
        return self.checkpoints / f"gen_{generation:04d}.json"

    def generations(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := CHECKPOINT.match(p.name)))

    def write_checkpoint(self, generation: int, payload: dict[str, Any]) -> Path:
        path = self.checkpoint_path(generation)
        write_json(path, {"generation": generation, **payload})
        return path

    def latest_checkpoint(self) -> dict[str, Any] | None:
        gens = self.generations()
        if not gens:
            return None
        path = self.checkpoint_path(gens[-1])
        data: dict[str, Any] = read_json(path, Checkpoint, fix=CHECKPOINT_FIX)
        if data["generation"] != gens[-1]:
            found = data["generation"]
            raise CheckpointError(f"{path}: generation: {found} in the file of generation {gens[-1]}; {CHECKPOINT_FIX}")
        from diffes.runs.rng import check_rng  # torch: only once a checkpoint is read

        check_rng(data["rng"], source=f"{path}: rng")
        return data

    def write_logbook(self, records: list[dict[str, Any]]) -> None:
        with atomic_path(self.path / "logbook.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))

    def write_best(self, best: dict[str, Any]) -> None:
        write_json(self.path / "best.json", best)

    def best(self) -> dict[str, Any] | None:
        path = self.path / "best.json"
        return read_json(path, Best) if path.is_file() else None


# ---- the schemas of the files read back (diffes.schema) ----

CONFIG_FIX = "the run's config.json is damaged; fix the value in it or start a new run"
CHECKPOINT_FIX = "the checkpoint is corrupt; delete it to resume from the one before, or start a new run"


PythonState = tuple[int, Annotated[list[Uint32], Field(min_length=625, max_length=625)], float | None]
NumpyState = tuple[str, Annotated[list[Uint32], Field(min_length=624, max_length=624)], int, int, float]


@with_config(RECORD)
class RngStates(TypedDict):
    """What ``diffes.runs.rng.capture_rng`` writes."""

    python: PythonState
    numpy: NumpyState
    torch: str


@with_config(RECORD)
class Checkpoint(TypedDict):
    generation: NonNegative
    search: dict[str, Any]  # checked by SearchState.from_json
    rng: RngStates


@with_config(RECORD)
class Point(TypedDict):
    genome: list[int]
    distance: float | None
    cost: float


@with_config(RECORD)
class StepsPoint(TypedDict):
    """The dense model at ``steps`` of ``num_steps`` steps on ``sampler`` (diffes.fitness.baselines)."""

    sampler: str
    steps: Positive
    num_steps: Positive
    cost: float
    distance: float


@with_config(RECORD)
class Skipped(TypedDict):
    skipped: str


@with_config(RECORD)
class Best(TypedDict):
    generation: NonNegative
    genome: list[int]
    distance: float
    cost: float
    uniform: Point
    hall_of_fame: NotRequired[list[Point]]
    pareto: NotRequired[list[Point]]
    fewer_steps: NotRequired[StepsPoint]
    fewer_steps_dpm_solver: NotRequired[StepsPoint | Skipped]
