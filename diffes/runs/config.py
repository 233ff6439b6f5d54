"""RunConfig: one nested configuration of a search run (model, pruning, search, fitness, execution).

Torch-free, so that ``diffes search`` checks every flag and config-file value before any heavy import and
before anything is created. Flags and config-file keys are the fields that carry help text, by their plain
names (``--budget``, ``budget = 0.5``); a file may also group them in tables (``[search] budget = 0.5``).
pydantic checks types (strictly: ``"5"`` is no int, ``"false"`` no bool); each section's ``__post_init__``
checks ranges and cross-field rules; ``RunConfig`` adds what concerns the model: its conditioning (read
from a folder's ``model_index.json``), conditions of the wrong kind, and a metric the model cannot use.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from diffes.errors import ConfigError, DiffesError
from diffes.families import family_of, is_zoo_name, model_conditioning, pipeline_class
from diffes.fields import Bool, Int, Number, Text, option
from diffes.pruning.config import PruningConfig
from diffes.search.config import SearchConfig

__all__ = [
    "RunConfig",
    "ModelConfig",
    "FitnessConfig",
    "ExecutionConfig",
    "FLAGS",
    "check_run_name",
    "flag_help",
    "section_class",
    "load_config_file",
    "parse_classes",
    "read_prompts",
    "default_metric",
]

Dtype = Literal["float32", "float16", "bfloat16"]
DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?")  # the form; whether it exists is checked with torch
GuidanceKind = Literal["cfg", "distilled", "none"]
MetricName = Literal["auto", "classifier", "lpips", "lpips-vgg", "lpips-squeeze", "clip", "ssim", "psnr", "mse"]
ExecutorKind = Literal["local", "ray"]


@dataclass(frozen=True)
class ModelConfig:
    model: Text = option("dit-digits", "zoo model (dit-digits, unet-digits, t2i-digits) or a diffusers pipeline folder")
    device: Text | None = option(None, "cpu, cuda, cuda:1 (default: cuda if present)")
    dtype: Dtype = option("float32", "float32, float16 (CUDA only) or bfloat16: the dtype the pipeline runs in")
    classes: Text | None = option(None, "class ids of a class-conditional model, e.g. 0-9 or 1,4,7 (zoo: all)")
    prompts: Text | None = option(None, "text file, one prompt per line (text-to-image models)")
    negative_prompt: Text | None = option(None, "negative prompt of the unconditional branch (text-to-image)")
    height: Int | None = option(None, "image height in pixels (default: the pipeline's)")
    width: Int | None = option(None, "image width in pixels (default: the pipeline's)")

    def __post_init__(self) -> None:
        if self.device is not None and not DEVICE.fullmatch(self.device):
            raise ConfigError("device", self.device, "use cpu, cuda or cuda:N (default: cuda if present)")
        for key, size in (("height", self.height), ("width", self.width)):
            if size is not None and size < 1:
                raise ConfigError(key, size, "use a positive image size in pixels")
        if self.classes is not None:
            parse_classes(self.classes)
        conditioning = model_conditioning(self.model)  # unknown names and unsupported classes fail here
        if conditioning == "classes":
            if self.prompts is not None or self.negative_prompt is not None:
                key = "prompts" if self.prompts is not None else "negative_prompt"
                raise ConfigError(key, getattr(self, key), f"{self.model} is class-conditional; give --classes")
            if self.classes is None and not is_zoo_name(self.model):
                raise ConfigError("classes", None, f"{self.model} is class-conditional; choose classes with --classes")
        else:
            if self.classes is not None:
                raise ConfigError(
                    "classes", self.classes, f"{self.model} is a text-to-image model; give --prompts FILE"
                )
            read_prompts(self.prompts)

    def conditions(self, num_classes: int | None) -> list[Any]:
        """The class ids (every class of a model with at most 10, by default) or the prompts of the run."""
        if self.prompts is not None:
            return read_prompts(self.prompts)
        if self.classes is not None:
            return parse_classes(self.classes)
        if num_classes is None or num_classes > 10:
            raise ConfigError("classes", None, f"{self.model} has {num_classes} classes; choose some with --classes")
        return list(range(num_classes))


@dataclass(frozen=True)
class FitnessConfig:
    probes: Int = option(2, "fitness probes per condition (class or prompt)")
    probe_seed: Int = option(0, "seed of the probes' initial noise")
    guidance: Number = option(2.0, "guidance scale")
    guidance_kind: GuidanceKind = option("cfg", "cfg (both branches), distilled (Flux-dev's guidance input) or none")
    guidance_rescale: Number = option(0.0, "guidance rescale of SD/SDXL (0: off)")
    metric: MetricName = option(
        "auto",
        "fitness metric: auto (zoo: classifier; else lpips with --lpips-weights, else ssim), classifier, "
        "lpips, lpips-vgg, lpips-squeeze, clip, ssim, psnr, mse",
    )
    lpips_weights: Text | None = option(None, "a full LPIPS state dict, for clusters without internet")
    clip_weights: Text | None = option(None, "a local transformers CLIP folder")
    prefix_cache_mb: Number = option(256.0, "bound of the evaluator's cache of stage-boundary states, in MB")
    reference_steps: Int = option(50, "joint search: steps of the dense reference run the teacher samples")
    sensitivity_seeds: Bool = option(
        False, "seed the search with per-stage levels from each block's measured pruning sensitivity (transformers)"
    )

    def __post_init__(self) -> None:
        if self.probes < 1:
            raise ConfigError("probes", self.probes, "use at least 1 probe per condition")
        if not 0 <= self.probe_seed < 2**63:
            raise ConfigError("probe_seed", self.probe_seed, "use a seed in [0, 2**63)")
        if self.guidance < 0 or self.guidance_rescale < 0:
            key = "guidance" if self.guidance < 0 else "guidance_rescale"
            raise ConfigError(key, getattr(self, key), "use a value >= 0")
        if self.reference_steps < 1:
            raise ConfigError("reference_steps", self.reference_steps, "use at least 1 sampling step")
        if self.prefix_cache_mb < 0:
            raise ConfigError("prefix_cache_mb", self.prefix_cache_mb, "use a size in MB >= 0")

    def guidance_config(self) -> Any:
        from diffes.models.adapters.base import Guidance  # torch: only when a run is prepared

        return Guidance(self.guidance_kind, self.guidance, self.guidance_rescale)


@dataclass(frozen=True)
class ExecutionConfig:
    executor: ExecutorKind = option("local", "local (in-process) or ray")
    address: Text | None = option(None, "Ray cluster address (default: RAY_ADDRESS, a running cluster, or a new one)")
    workers: Int = option(0, "Ray workers (default: one per GPU, else one per CPU)")
    gpus_per_worker: Number = option(-1.0, "GPUs per Ray worker (default: 1 where the cluster has GPUs)")
    export: Bool = option(True, "export the best schedule as a routed checkpoint at the end")

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError("workers", self.workers, "use 0 (automatic) or a positive count")


@dataclass(frozen=True)
class RunConfig:
    name: Text = option("", "run name, one folder name (default: run-<date>-<time>)")
    runs_dir: Text = option("runs", "folder that holds the runs")
    model: ModelConfig = field(default_factory=ModelConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __post_init__(self) -> None:
        if self.name:
            check_run_name(self.name)
        # the library's calibration seed is the run's seed: one seed per run, not one per section
        if self.pruning.seed != self.search.seed:
            object.__setattr__(self, "pruning", replace(self.pruning, seed=self.search.seed, latency=True))
        elif not self.pruning.latency:  # a few seconds; the report's cost table and `cost = "latency"` need it
            object.__setattr__(self, "pruning", replace(self.pruning, latency=True))
        if self.search.joint:
            from diffes.search.joint import parse_steps_grid

            parse_steps_grid(self.search.steps_grid, self.fitness.reference_steps)  # a bad grid fails here
        if self.fitness.metric == "classifier" and not is_zoo_name(self.model.model):
            raise ConfigError("metric", "classifier", "the digit classifier judges zoo models only; use lpips or ssim")
        if self.fitness.sensitivity_seeds and _has_unet(self.model.model):
            fix = f"{self.model.model} has a UNet; sensitivity is measured per transformer block: drop it"
            raise ConfigError("sensitivity_seeds", True, fix)

    def resolved(self) -> RunConfig:
        """The config as a run records it: a name, and the metric the model gets by default."""
        config = self if self.name else replace(self, name=time.strftime("run-%Y%m%d-%H%M%S"))
        if config.fitness.metric == "auto":
            metric: Any = default_metric(config.model.model, config.fitness.lpips_weights)
            config = replace(config, fitness=replace(config.fitness, metric=metric))
        return config

    @property
    def teacher_steps(self) -> int:
        """The steps of the dense run the teacher samples: the run's own, or the joint search's reference."""
        return self.fitness.reference_steps if self.search.joint else self.pruning.steps

    def with_generations(self, generations: int) -> RunConfig:
        return replace(self, search=replace(self.search, generations=generations))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """A config from nested tables (``config.json``), flat keys (flags, config files), or both."""
        nested = _nest(values)
        try:
            return TypeAdapter(cls).validate_python(nested)
        except ValidationError as e:
            raise _config_error(e) from None

    def flat(self) -> dict[str, Any]:
        """Every flag's value by its flat name."""
        out = {}
        for key, (section, name) in FLAGS.items():
            out[key] = getattr(getattr(self, section) if section else self, name)
        return out


def _has_unet(model: str) -> bool:
    """Whether the model's denoiser is a UNet, as far as its name or its folder's pipeline class tells."""
    if is_zoo_name(model):
        return model == "unet-digits"
    return family_of(pipeline_class(Path(model))).name in ("sd", "sdxl")  # the folder was checked by ModelConfig


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(RunConfig) if dataclasses.is_dataclass(f.default_factory)}  # type: ignore[misc]


def _flags() -> dict[str, tuple[str | None, str]]:
    """Flat key -> (section, field) for every field with help text; names are unique across sections."""
    out: dict[str, tuple[str | None, str]] = {}
    owners: list[tuple[str | None, type]] = [(None, RunConfig), *_sections().items()]
    for section, cls in owners:
        for f in fields(cls):
            if "help" in f.metadata:
                assert f.name not in out, f"flag {f.name} is defined twice"
                out[f.name] = (section, f.name)
    return out


FLAGS = _flags()


def section_class(section: str | None) -> type:
    """The dataclass of a section (``None``: RunConfig's own fields)."""
    return _sections()[section] if section else RunConfig


def flag_help(key: str) -> str:
    section, name = FLAGS[key]
    return str(next(f for f in fields(section_class(section)) if f.name == name).metadata["help"])


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    sections = _sections()
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in sections and isinstance(value, dict):
            known = {f.name for f in fields(sections[key])}
            for inner, v in value.items():
                name = str(inner).replace("-", "_")
                if name not in known:
                    raise ConfigError(name, v, f"unknown key of [{key}]; known keys: {', '.join(sorted(known))}")
                nested.setdefault(key, {})[name] = v
        elif key in FLAGS:
            section, name = FLAGS[key]
            if section is None:
                nested[name] = value
            else:
                nested.setdefault(section, {})[name] = value
        else:
            fix = f"unknown config key; known keys: {', '.join(sorted(FLAGS))}"
            raise ConfigError(key, value, fix)
    return nested


def _config_error(error: ValidationError) -> DiffesError:
    """The first problem as a one-line ConfigError (a section's own ConfigError passes through)."""
    first = error.errors(include_url=False)[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, DiffesError):
        return cause
    message = str(cause) if cause is not None else first["msg"]
    loc = [str(p) for p in first["loc"] if not isinstance(p, int)]
    key = loc[-1] if loc else "config"
    kind = first["type"]
    if kind == "unexpected_keyword_argument":
        return ConfigError(key, first["input"], f"unknown config key; known keys: {', '.join(sorted(FLAGS))}")
    fixes = {
        "literal_error": f"use one of {first.get('ctx', {}).get('expected')}",
        "int_type": "use a whole number (no quotes)",
        "bool_type": "use true or false (no quotes)",
        "string_type": "use a text value (in quotes)",
        "dataclass_type": "use a table of key = value pairs",
    }
    return ConfigError(key, first["input"], fixes.get(kind, message[0].lower() + message[1:]))


NAME_FIX = "use one plain folder name such as my-run (no '/', '\\', '.', '..' or control characters)"


def check_run_name(name: str) -> str:
    """``name`` as one plain path component: it cannot point anywhere but a child of the runs directory."""
    bad = (
        not name
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/"))
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(os.fsencode(name)) > 255  # the longest file name Linux and macOS file systems take
    )
    if bad:
        raise ConfigError("name", name, NAME_FIX)
    return name


def parse_classes(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"1,4,7-9"`` to a list of ints (ranges of at most 100,000)."""
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
    if is_zoo_name(model):
        return "classifier"
    return "lpips" if lpips_weights else "ssim"


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Keys of a TOML or YAML file (the flags' names, dashes or underscores; or tables per section)."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "no such file; give a .toml or .yaml config")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError("config", str(path), "use a .toml, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "not a text file; give a TOML or YAML config") from None
    if path.suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", str(path), f"cannot parse it: {e}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
            raise ConfigError("config", str(path), f"cannot parse it ({where}): {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "the file must hold a table of key = value pairs")
    return dict(data)
