"""RunConfig: one dataclass with everything a search run needs; flags and config-file keys match it."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from diffes.errors import ConfigError
from diffes.fitness.metrics import METRICS
from diffes.models.loading import is_zoo_model
from diffes.models.zoo import get_entry
from diffes.pruning.levels import DEFAULT_LEVELS, LevelGrid
from diffes.pruning.library import PruningConfig
from diffes.search.config import SearchConfig

__all__ = ["RunConfig", "load_config_file", "EXECUTORS", "COSTS"]

EXECUTORS = ("local", "ray")
COSTS = ("macs", "latency")


@dataclass(frozen=True)
class RunConfig:
    name: str = ""
    runs_dir: str = "runs"
    model: str = "dit-digits"
    device: str | None = None
    # budget and search
    budget: float = SearchConfig.budget
    cost: str = "macs"
    algorithm: str = SearchConfig.algorithm
    population: int = SearchConfig.population
    offspring: int = SearchConfig.offspring
    generations: int = SearchConfig.generations
    cxpb: float = SearchConfig.cxpb
    mutpb: float = SearchConfig.mutpb
    islands: int = SearchConfig.islands
    migration_interval: int = SearchConfig.migration_interval
    hall_of_fame: int = SearchConfig.hall_of_fame
    seed: int = SearchConfig.seed
    # stages and pruning
    stages: int = PruningConfig.stages
    steps: int = PruningConfig.steps
    levels: str = ",".join(str(x) for x in DEFAULT_LEVELS)
    importance: str = PruningConfig.importance
    axis: str = PruningConfig.axis
    nested: bool = PruningConfig.nested
    compensate: bool = PruningConfig.compensate
    calibration_probes: int = PruningConfig.probes
    # fitness
    probes: int = 2  # per class
    probe_seed: int = 0
    guidance: float = PruningConfig.guidance_scale
    metric: str = "classifier"
    lpips_weights: str | None = None
    clip_weights: str | None = None
    cache_mb: float = 256.0
    # execution
    executor: str = "local"
    address: str | None = None
    workers: int = 0  # 0: one per GPU, else one per CPU slot
    gpus_per_worker: float = -1.0  # -1: 1 where the cluster has GPUs, else 0
    export: bool = True

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError("executor", self.executor, f"use one of {', '.join(EXECUTORS)}")
        if self.cost not in COSTS:
            raise ConfigError("cost", self.cost, f"use one of {', '.join(COSTS)}")
        if self.probes < 1:
            raise ConfigError("probes", self.probes, "use at least 1 probe per class")
        if self.workers < 0:
            raise ConfigError("workers", self.workers, "use 0 (automatic) or a positive count")
        if self.metric not in METRICS:
            raise ConfigError("metric", self.metric, f"choose one of {', '.join(METRICS)}")
        if not (is_zoo_model(self.model) or Path(self.model).is_dir()):
            get_entry(self.model)  # the unknown-name error, listing the zoo
        self.search_config()
        self.pruning_config()

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            algorithm=self.algorithm,
            population=self.population,
            offspring=self.offspring,
            generations=self.generations,
            cxpb=self.cxpb,
            mutpb=self.mutpb,
            islands=self.islands,
            migration_interval=self.migration_interval,
            budget=self.budget,
            seed=self.seed,
            hall_of_fame=self.hall_of_fame,
        )

    def pruning_config(self) -> PruningConfig:
        return PruningConfig(
            importance=self.importance,
            levels=LevelGrid.parse(self.levels).fractions,
            axis=self.axis,
            nested=self.nested,
            compensate=self.compensate,
            stages=self.stages,
            steps=self.steps,
            probes=self.calibration_probes,
            guidance_scale=self.guidance,
            seed=self.seed,
            latency=True,  # a few seconds per run; the report's cost table shows it, and `cost = "latency"` needs it
        )

    def with_name(self) -> RunConfig:
        return self if self.name else replace(self, name=time.strftime("run-%Y%m%d-%H%M%S"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key.replace("-", "_") not in known:
                raise ConfigError(key, d[key], f"unknown config key; known keys: {', '.join(sorted(known))}")
        return cls(**{k.replace("-", "_"): v for k, v in d.items()})


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Keys of a TOML or YAML file (the same names as the flags; dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "no such file; give a .toml or .yaml config")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError("config", str(path), "use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise ConfigError("config", str(path), f"cannot parse it: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "the file must hold a table of key = value pairs")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
