"""RunDir: the files of one search run. Every write is atomic; only JSON and safetensors.

runs/<name>/
  config.json                 the RunConfig snapshot
  library/                    the pruning library (library.json is written last)
  teacher.safetensors/.json   probe noise, labels and the dense model's images
  checkpoints/gen_NNNN.json   search state + every RNG state after generation NNNN
  logbook.jsonl               one line per generation (rewritten from the checkpoint)
  best.json                   the best schedule, its cost and fitness, and the uniform baseline
  export/                     the routed checkpoint of the best schedule
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from diffes.errors import CheckpointError, ConfigError
from diffes.io import atomic_path, read_json, write_json
from diffes.runs.config import RunConfig

__all__ = ["RunDir"]

CHECKPOINT = re.compile(r"^gen_(\d{4,})\.json$")


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, config: RunConfig) -> RunDir:
        run = cls(Path(config.runs_dir) / config.name)
        if run.path.exists() and any(run.path.iterdir()):
            fix = f"{run.path} already exists; resume it with `diffes resume {run.path}` or pick a new name"
            raise ConfigError("name", config.name, fix)
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.config_file, config.to_dict())
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
        return RunConfig.from_dict(read_json(self.config_file))

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
        data = read_json(self.checkpoint_path(gens[-1]))
        if not isinstance(data, dict) or data.get("generation") != gens[-1] or "search" not in data:
            raise CheckpointError(f"{self.checkpoint_path(gens[-1])}: not a diffes checkpoint; the file is corrupt")
        return data

    def write_logbook(self, records: list[dict[str, Any]]) -> None:
        with atomic_path(self.path / "logbook.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))

    def write_best(self, best: dict[str, Any]) -> None:
        write_json(self.path / "best.json", best)

    def best(self) -> dict[str, Any] | None:
        path = self.path / "best.json"
        return read_json(path) if path.is_file() else None
