"""CLIP image-image distance and text-image score, from a local transformers ``CLIPModel`` folder only."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from diffes.errors import ConfigError, MissingWeightsError, UnsupportedModelError
from diffes.fitness.base import FrozenNet, PairMetric, as_rgb, check_images

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPTextConfig, CLIPVisionConfig

__all__ = ["ClipMetric", "ClipEncoder", "clip_text_score"]

# OpenAI's normalization, used when the folder has no preprocessor_config.json saying otherwise.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HOW = "pass --clip-weights DIR, a local transformers CLIPModel folder (save one with save_pretrained)"


class ClipEncoder:
    """Unit-norm CLIP embeddings of images in [0, 1] and of prompts; the tokenizer loads on first text use."""

    def __init__(self, folder: Path) -> None:
        try:
            from transformers import CLIPModel
        except ImportError:
            raise ConfigError("metric", "clip", "install transformers (pip install 'diffes[clip]')") from None
        _require_model_files(folder)
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
        except OSError as e:
            raise MissingWeightsError(f"clip-weights={str(folder)!r}: {_first_line(e)}; {_HOW}") from None
        self.folder = folder
        self._net: FrozenNet[CLIPModel] = FrozenNet(model.float())
        # The config's annotations admit dicts; CLIPConfig has turned them into config objects by now.
        vision = cast("CLIPVisionConfig", model.config.vision_config)
        text = cast("CLIPTextConfig", model.config.text_config)
        if not isinstance(vision.image_size, int):
            raise UnsupportedModelError(
                f"clip-weights={str(folder)!r}: image_size={vision.image_size!r}; diffes takes square CLIP inputs"
            )
        self.image_size = vision.image_size
        self.max_tokens = int(text.max_position_embeddings)
        self.mean, self.std = _normalization(folder)
        self._tokenizer: Any = None

    def embed_images(self, images01: Tensor) -> Tensor:
        check_images(images01)
        model = self._net.on(images01.device)
        pixels = _preprocess(images01.float(), self.image_size, self.mean, self.std)
        return F.normalize(_pooled(model.get_image_features(pixel_values=pixels)), dim=-1)

    def embed_texts(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        model = self._net.on(device)
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        features = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(_pooled(features), dim=-1)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.folder)
        return self._tokenizer


class ClipMetric(PairMetric):
    """Distance ``1 - cos`` between the CLIP image embeddings of student and teacher, per probe."""

    name = "clip"

    def __init__(self, weights: str | os.PathLike[str] | None = None) -> None:
        self._encoder = _encoder(_folder(weights))

    def distance(self, student: Tensor, teacher: Tensor) -> Tensor:
        a, b = self._encoder.embed_images(torch.cat([student, teacher])).chunk(2)
        # Unit vectors can have a dot product a rounding error above 1; a distance is never negative.
        return (1.0 - (a * b).sum(-1)).clamp_min(0.0)


@torch.no_grad()
def clip_text_score(
    images01: Tensor, prompts: str | Sequence[str], weights: str | os.PathLike[str] | None = None
) -> Tensor:
    """Cosine similarity in [-1, 1] (higher is better) of each image with its prompt, float32 (N,) on CPU.

    One prompt is compared with every image. The raw cosine is returned; CLIPScore's ``2.5 * max(cos, 0)`` or
    torchmetrics' ``100 * max(cos, 0)`` follow from it.
    """
    encoder = _encoder(_folder(weights))
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(texts) not in (1, images01.shape[0]):
        raise ValueError(f"give one prompt or one per image: {len(texts)} prompts for {images01.shape[0]} images")
    image_embeddings = encoder.embed_images(images01)
    text_embeddings = encoder.embed_texts(texts, image_embeddings.device)
    return (image_embeddings * text_embeddings).sum(-1).float().cpu()


def _folder(weights: str | os.PathLike[str] | None) -> Path:
    if weights is None:
        raise MissingWeightsError(f"clip: no CLIP weights given and diffes never downloads them; {_HOW}")
    folder = Path(weights).expanduser().resolve()
    if not folder.is_dir():
        raise MissingWeightsError(f"clip-weights={str(weights)!r}: folder not found; {_HOW}")
    return folder


@lru_cache(maxsize=2)
def _encoder(folder: Path) -> ClipEncoder:
    # The metric and clip_text_score share one model per folder: loading a real CLIP takes seconds.
    return ClipEncoder(folder)


def _require_model_files(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"clip-weights={str(folder)!r}: config.json missing in that folder; {_HOW}")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise MissingWeightsError(
            f"clip-weights={str(folder)!r}: no weights file ({' or '.join(_WEIGHT_FILES)}) in that folder; {_HOW}"
        )


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        raise MissingWeightsError(
            f"clip-weights={str(folder)!r}: tokenizer files (tokenizer.json, or vocab.json and merges.txt) missing; "
            f"text scores need them: save the CLIP tokenizer into that folder with save_pretrained"
        )
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as e:
        raise MissingWeightsError(f"clip-weights={str(folder)!r}: {_first_line(e)}; {_HOW}") from None


def _normalization(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    config_file = folder / "preprocessor_config.json"
    if not config_file.is_file():
        return OPENAI_MEAN, OPENAI_STD
    config = json.loads(config_file.read_text())
    return tuple(config.get("image_mean", OPENAI_MEAN)), tuple(config.get("image_std", OPENAI_STD))


def _preprocess(images01: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """CLIP's preprocessing in torch: shorter side to ``size`` (bicubic), center crop, normalize."""
    rgb = as_rgb(images01)
    h, w = rgb.shape[-2:]
    scale = size / min(h, w)
    resized_h, resized_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = F.interpolate(rgb, size=(resized_h, resized_w), mode="bicubic", align_corners=False, antialias=scale < 1)
    top, left = (resized_h - size) // 2, (resized_w - size) // 2
    # Bicubic overshoots at edges; CLIP saw pixels in [0, 1].
    cropped = resized[..., top : top + size, left : left + size].clamp(0, 1)
    mean_t = torch.tensor(mean, device=rgb.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=rgb.device).view(1, -1, 1, 1)
    return (cropped - mean_t) / std_t


def _pooled(output: Any) -> Tensor:
    # transformers 4 returns the projected embedding; transformers 5 wraps it in the output's pooler_output.
    return output if isinstance(output, Tensor) else output.pooler_output


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
