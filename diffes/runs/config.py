"""RunConfig: one dataclass with everything a search run needs; flags and config-file keys match it.

Every check that needs no model runs here, when the config is made, before anything is created or loaded:
a model folder's pipeline class (read from its ``model_index.json``) tells whether it takes classes or prompts,
so conditions of the wrong kind, a missing prompts file and a metric the model cannot use fail at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from diffes.errors import ConfigError
from diffes.fitness.metrics import METRICS
from diffes.models.adapters import Guidance
from diffes.models.loading import is_zoo_model, model_conditioning
from diffes.pruning.levels import DEFAULT_LEVELS, LevelGrid
from diffes.pruning.library import PruningConfig
from diffes.search.config import SearchConfig

__all__ = ["RunConfig", "load_config_file", "parse_classes", "read_prompts", "default_metric", "EXECUTORS", "COSTS"]

EXECUTORS = ("local", "ray")
COSTS = ("macs", "latency")
GUIDANCE_KINDS = ("cfg", "distilled", "none")
DTYPES = ("float32", "float16", "bfloat16")


def _option(default: Any, help: str) -> Any:
    """A config field whose help text is also the flag's, so the two cannot drift apart."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RunConfig:
    name: str = _option("", "run name, one folder name (default: run-<date>-<time>)")
    runs_dir: str = _option("runs", "folder that holds the runs")
    model: str = _option("dit-digits", "zoo model name (dit-digits, unet-digits) or a diffusers pipeline folder")
    device: str | None = _option(None, "cpu, cuda, cuda:1 (default: cuda if present)")
    dtype: str = _option(
        "float32", "float32, float16 (CUDA only) or bfloat16: the dtype the pipeline is loaded and searched in"
    )
    # conditions: class ids (class-conditional models) or a prompts file, one prompt per line (text models)
    classes: str | None = _option(None, "class ids of a class-conditional model, e.g. 0-9 or 1,4,7 (zoo default: all)")
    prompts: str | None = _option(None, "text file, one prompt per line (text-to-image models)")
    negative_prompt: str | None = _option(
        None, "negative prompt of the unconditional guidance branch (text-to-image models)"
    )
    height: int | None = _option(None, "image height in pixels (default: the pipeline's)")
    width: int | None = _option(None, "image width in pixels (default: the pipeline's)")
    # budget and search
    budget: float = _option(SearchConfig.budget, "mean cost per step as a fraction of dense (e.g. 0.5)")
    cost: str = _option("macs", "budget measure: macs, or latency (measured per level on this device)")
    algorithm: str = _option(SearchConfig.algorithm, "ga, nsga2 (Pareto front over budgets) or islands")
    population: int = _option(SearchConfig.population, "survivors per generation (mu), per island")
    offspring: int = _option(SearchConfig.offspring, "children per generation (lambda), per island")
    generations: int = _option(SearchConfig.generations, "generations after the initial population")
    cxpb: float = _option(SearchConfig.cxpb, "probability that a child comes from crossover")
    mutpb: float = _option(SearchConfig.mutpb, "probability that a child comes from mutation")
    islands: int = _option(SearchConfig.islands, "populations in islands mode (ring migration)")
    migration_interval: int = _option(SearchConfig.migration_interval, "generations between migrations (islands mode)")
    hall_of_fame: int = _option(SearchConfig.hall_of_fame, "best schedules kept in the hall of fame")
    seed: int = _option(SearchConfig.seed, "seed of every random draw of the run")
    # stages and pruning
    stages: int = _option(PruningConfig.stages, "stages of the trajectory (one level each)")
    steps: int = _option(PruningConfig.steps, "sampling steps of the search trajectory")
    levels: str = _option(
        ",".join(str(x) for x in DEFAULT_LEVELS), "sparsity levels, e.g. 0,0.1,...,0.7 or heads:8,6,4,2"
    )
    importance: str = _option(PruningConfig.importance, "magnitude, taylor or activation")
    axis: str = _option(PruningConfig.axis, "width (heads, MLP units, channels) or depth (whole transformer blocks)")
    nested: bool = _option(PruningConfig.nested, "one unit order per layer for all stages: zero-copy routing")
    compensate: bool = _option(PruningConfig.compensate, "least-squares refit of the layers that consume pruned units")
    calibration_samples: int = _option(
        PruningConfig.probes, "samples of the dense trajectory used to calibrate the library"
    )
    # fitness
    probes: int = _option(2, "fitness probes per condition (class or prompt)")
    probe_seed: int = _option(0, "seed of the probes' initial noise")
    guidance: float = _option(PruningConfig.guidance_scale, "guidance scale")
    guidance_kind: str = _option("cfg", "cfg (both branches), distilled (Flux-dev's guidance input) or none")
    guidance_rescale: float = _option(0.0, "guidance rescale of SD/SDXL (0: off)")
    metric: str = _option(
        "auto",
        "fitness metric: auto (zoo: classifier; else lpips with --lpips-weights, else ssim), classifier, "
        "lpips, lpips-vgg, lpips-squeeze, clip, ssim, psnr, mse",
    )
    lpips_weights: str | None = _option(None, "a full LPIPS state dict, for clusters without internet")
    clip_weights: str | None = _option(None, "a local transformers CLIP folder")
    prefix_cache_mb: float = _option(256.0, "bound of the evaluator's cache of stage-boundary states, in MB")
    # execution
    executor: str = _option("local", "local (in-process) or ray")
    address: str | None = _option(
        None, "Ray cluster address (default: RAY_ADDRESS, a running cluster, or a new local one)"
    )
    workers: int = _option(0, "Ray workers (default: one per GPU, else one per CPU)")
    gpus_per_worker: float = _option(-1.0, "GPUs per Ray worker (default: 1 where the cluster has GPUs)")
    export: bool = _option(True, "export the best schedule as a routed checkpoint at the end")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError("executor", self.executor, f"use one of {', '.join(EXECUTORS)}")
        if self.cost not in COSTS:
            raise ConfigError("cost", self.cost, f"use one of {', '.join(COSTS)}")
        if self.probes < 1:
            raise ConfigError("probes", self.probes, "use at least 1 probe per condition")
        if self.workers < 0:
            raise ConfigError("workers", self.workers, "use 0 (automatic) or a positive count")
        if self.guidance_kind not in GUIDANCE_KINDS:
            raise ConfigError("guidance_kind", self.guidance_kind, f"use one of {', '.join(GUIDANCE_KINDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", self.dtype, f"use one of {', '.join(DTYPES)}")
        if self.metric != "auto" and self.metric not in METRICS:
            raise ConfigError("metric", self.metric, f"choose auto or one of {', '.join(METRICS)}")
        for key, size in (("height", self.height), ("width", self.width)):
            if size is not None and size < 1:
                raise ConfigError(key, size, "use a positive image size in pixels")
        self._check_model()
        self.search_config()
        self.pruning_config()

    def _check_model(self) -> None:
        """What can be known of the model from its name or folder, before it is loaded."""
        conditioning = model_conditioning(self.model)
        if conditioning == "classes":
            if self.prompts is not None or self.negative_prompt is not None:
                key = "prompts" if self.prompts is not None else "negative_prompt"
                raise ConfigError(key, getattr(self, key), f"{self.model} is class-conditional; give --classes")
            if self.classes is not None:
                parse_classes(self.classes)
            elif not is_zoo_model(self.model):
                raise ConfigError("classes", None, f"{self.model} is class-conditional; choose classes with --classes")
        else:
            if self.classes is not None:
                raise ConfigError(
                    "classes", self.classes, f"{self.model} is a text-to-image model; give --prompts FILE"
                )
            read_prompts(self.prompts)
        if self.metric == "classifier" and not is_zoo_model(self.model):
            raise ConfigError("metric", "classifier", "the digit classifier judges zoo models only; use lpips or ssim")

    def resolved(self) -> RunConfig:
        """The config as a run records it: a name, and the metric the model gets by default."""
        config = self if self.name else replace(self, name=time.strftime("run-%Y%m%d-%H%M%S"))
        if config.metric == "auto":
            config = replace(config, metric=default_metric(config.model, config.lpips_weights))
        return config

    def conditions(self, num_classes: int | None) -> list[Any]:
        """The class ids (every class of a model with at most 10, by default) or the prompts of the run."""
        if self.prompts is not None:
            return read_prompts(self.prompts)
        if self.classes is not None:
            return parse_classes(self.classes)
        if num_classes is None or num_classes > 10:
            raise ConfigError("classes", None, f"{self.model} has {num_classes} classes; choose some with --classes")
        return list(range(num_classes))

    def guidance_config(self) -> Guidance:
        return Guidance(self.guidance_kind, self.guidance, self.guidance_rescale)  # type: ignore[arg-type]

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
            probes=self.calibration_samples,
            guidance_scale=self.guidance,
            seed=self.seed,
            latency=True,  # a few seconds per run; the report's cost table shows it, and `cost = "latency"` needs it
        )

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


def parse_classes(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"1,4,7-9"`` to a list of ints (at most 100,000)."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            lo, _, hi = part.strip().partition("-")
            start, end = int(lo), int(hi) if hi else int(lo)
            if end < start or start < 0 or end - start > 100_000:
                raise ValueError
            out.extend(range(start, end + 1))
    except ValueError:
        raise ConfigError("classes", text, "use a list like 0-9 or 1,4,7-9") from None
    return out


def read_prompts(path: str | None) -> list[str]:
    """The prompts of a file, one per line (blank lines skipped)."""
    if path is None:
        raise ConfigError("prompts", None, "a text-to-image model needs prompts: --prompts FILE, one per line")
    file = Path(path)
    if not file.is_file():
        raise ConfigError("prompts", path, "no such file; give a text file with one prompt per line")
    try:
        prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ConfigError("prompts", path, "not a UTF-8 text file; give one prompt per line") from None
    if not prompts:
        raise ConfigError("prompts", path, "the file holds no prompt; write one prompt per line")
    return prompts


def default_metric(model: str, lpips_weights: str | None) -> str:
    """The zoo classifier for zoo models; LPIPS where its weights are at hand; else SSIM (needs no weights)."""
    if is_zoo_model(model):
        return "classifier"
    return "lpips" if lpips_weights else "ssim"
