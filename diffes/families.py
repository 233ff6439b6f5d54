"""What diffes knows of a model before loading it: zoo names, and pipeline classes by family.

Torch-free on purpose: the CLI checks a model's name, class and conditioning before any heavy import, and
``diffes.models.adapters`` builds its registry from this table, so the two cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from diffes.errors import ConfigError, MissingWeightsError, UnsupportedModelError

__all__ = [
    "Conditioning",
    "Family",
    "FAMILIES",
    "ZOO_GENERATORS",
    "JUDGE",
    "DEFAULT_MODEL",
    "family_of",
    "is_zoo_name",
    "model_conditioning",
    "pipeline_class",
]

Conditioning = Literal["classes", "prompts"]


@dataclass(frozen=True)
class Family:
    """A pipeline family: the pipeline classes it covers, what it is conditioned on, and its adapter class."""

    name: str
    pipeline_classes: tuple[str, ...]
    conditioning: Conditioning
    adapter: str  # "module:Class", imported only when a pipeline of the family is adapted


# a new family is one new entry here (and its adapter class)
FAMILIES: tuple[Family, ...] = (
    Family("zoo", ("ZooPipeline",), "classes", "diffes.models.adapters.classes:ZooAdapter"),
    Family("dit", ("DiTPipeline",), "classes", "diffes.models.adapters.classes:DiTAdapter"),
    Family(
        "pixart", ("PixArtAlphaPipeline", "PixArtSigmaPipeline"), "prompts", "diffes.models.adapters.text:PixArtAdapter"
    ),
    Family("sd", ("StableDiffusionPipeline",), "prompts", "diffes.models.adapters.text:StableDiffusionAdapter"),
    Family("sdxl", ("StableDiffusionXLPipeline",), "prompts", "diffes.models.adapters.text:StableDiffusionXLAdapter"),
    Family("sd3", ("StableDiffusion3Pipeline",), "prompts", "diffes.models.adapters.text:SD3Adapter"),
    Family("flux", ("FluxPipeline",), "prompts", "diffes.models.adapters.flux:FluxAdapter"),
)
_BY_CLASS = {name: family for family in FAMILIES for name in family.pipeline_classes}

# zoo generators and what they are conditioned on; the judge classifier is not a generator
ZOO_GENERATORS: dict[str, Conditioning] = {"dit-digits": "classes", "unet-digits": "classes", "t2i-digits": "prompts"}
JUDGE = "digits-classifier"
DEFAULT_MODEL = "dit-digits"


def family_of(pipeline_class_name: str) -> Family:
    family = _BY_CLASS.get(pipeline_class_name)
    if family is None:
        supported = ", ".join(sorted(_BY_CLASS))
        raise UnsupportedModelError(f"pipeline={pipeline_class_name}: not supported; diffes runs {supported}")
    return family


def is_zoo_name(model: str) -> bool:
    return model in ZOO_GENERATORS or model == JUDGE


def pipeline_class(path: Path) -> str:
    """The pipeline class a ``save_pretrained`` folder names in its ``model_index.json``."""
    index = path / "model_index.json"
    if not index.is_file():
        raise MissingWeightsError(f"model={str(path)!r}: {index} is missing; not a diffusers pipeline folder")
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (ValueError, UnicodeDecodeError, AttributeError):
        name = None
    if not isinstance(name, str):
        raise MissingWeightsError(f"model={str(path)!r}: {index} names no _class_name; re-save the pipeline")
    return name


def model_conditioning(model: str) -> Conditioning:
    """What a zoo name or a pipeline folder is conditioned on, without loading it; an unknown name or an
    unsupported pipeline class is a one-line error."""
    if model == JUDGE:
        raise ConfigError("model", model, f"that is the judge classifier; pick a generator such as {DEFAULT_MODEL}")
    if model in ZOO_GENERATORS:
        return ZOO_GENERATORS[model]
    path = Path(model)
    if not path.is_dir():
        names = ", ".join(ZOO_GENERATORS)
        raise ConfigError("model", model, f"choose one of {names} or give a path to a diffusers pipeline")
    return family_of(pipeline_class(path)).conditioning
