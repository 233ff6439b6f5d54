"""The text-to-image zoo pipeline: a ``PixArtAlphaPipeline`` of real diffusers and transformers classes
(``AutoencoderKL``, ``PixArtTransformer2DModel``, ``T5EncoderModel`` and a T5 tokenizer built offline), shrunk
to scikit-learn's 8x8 digits and prompted with a few templates per digit. It is saved with ``save_pretrained``
and loaded with ``DiffusionPipeline.from_pretrained`` like any user's folder, so every text-to-image code path
(prompt encoding, attention masks, latents, VAE decoding) runs on a model that is trained, not random.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from diffes.errors import MissingWeightsError
from diffes.models.classifier import DigitClassifier
from diffes.models.data import NUM_CLASSES
from diffes.models.zoo import get_entry, sampling_scheduler, weights_dir

__all__ = [
    "T2I_MODEL",
    "DEFAULT_STEPS",
    "NUMBER_WORDS",
    "TEMPLATES",
    "prompt_for",
    "training_prompts",
    "benchmark_prompts",
    "build_tokenizer",
    "build_pipeline",
    "load_t2i_pipeline",
    "prompted_accuracy",
]

T2I_MODEL = "t2i-digits"
DEFAULT_STEPS = 20  # PixArt-alpha's own default; DDIM
MAX_SEQUENCE_LENGTH = 120  # PixArt-alpha's default, which the PixArt sampling adapter also uses

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# digits as numerals ({d}) and as words ({w}); every template of every digit is a training prompt
TEMPLATES = (
    "a handwritten digit {d}",
    "the number {w}",
    "digit {d}",
    "a handwritten {w}",
    "the digit {w}",
    "number {d}",
)


def prompt_for(digit: int, variant: int) -> str:
    """Template ``variant`` (cycling) filled in with ``digit``."""
    return TEMPLATES[variant % len(TEMPLATES)].format(d=digit, w=NUMBER_WORDS[digit])


def training_prompts() -> list[tuple[str, int]]:
    """Every (prompt, digit) pair the pipeline is trained on."""
    return [(prompt_for(d, k), d) for d in range(NUM_CLASSES) for k in range(len(TEMPLATES))]


def benchmark_prompts(per_class: int) -> tuple[list[str], list[int]]:
    """``per_class`` prompts per digit, the templates in turn: the quality benchmark's conditions."""
    pairs = [(prompt_for(d, k), d) for d in range(NUM_CLASSES) for k in range(per_class)]
    return [p for p, _ in pairs], [d for _, d in pairs]


def build_tokenizer() -> Any:
    """A T5 tokenizer from a ``tokenizers`` Unigram model (no sentencepiece, no download): the templates' words
    are single pieces; letters and numerals spell out any other word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5Tokenizer  # transformers 5: backed by `tokenizers` (4.x: T5TokenizerFast)

    words = sorted({w for t in TEMPLATES for w in t.split() if "{" not in w} | set(NUMBER_WORDS))
    words += [str(d) for d in range(10)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in words]  # whole words win over spelling (-10 per character)
    pieces += [(c, -10.0) for c in "\u2581abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return T5Tokenizer(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def build_pipeline(seed: int = 0) -> Any:
    """The untrained pipeline: every component freshly initialized from ``seed``, DDIM on the zoo's schedule."""
    from diffusers import AutoencoderKL, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    config = get_entry(T2I_MODEL).config
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)  # diffusers and transformers initialize weights from the global generator
    vae = AutoencoderKL(**config["vae"])
    transformer = PixArtTransformer2DModel(**config["transformer"])
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **config["text_encoder"]))
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval().requires_grad_(False),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=sampling_scheduler(),
    )


def load_t2i_pipeline(path: str | os.PathLike[str] | None = None, dtype: torch.dtype | None = None) -> Any:
    """The trained pipeline, from the package's folder or ``path``, exactly as a user's folder is loaded."""

    folder = Path(path) if path is not None else weights_dir(T2I_MODEL)
    if not (folder / "model_index.json").is_file():
        raise MissingWeightsError(
            f"model={T2I_MODEL!r}: {folder / 'model_index.json'} is missing; "
            f"train it with `python scripts/train_zoo.py {T2I_MODEL}` or reinstall diffes"
        )
    from diffes.models.loading import load_pipeline_folder

    return load_pipeline_folder(folder, dtype)


@torch.no_grad()
def prompted_accuracy(
    pipe: Any, classifier: DigitClassifier, per_class: int, steps: int, guidance: float, seed: int = 1234
) -> float:
    """Fraction of prompted samples (``per_class`` per digit, fixed seed) that the classifier labels as the digit
    the prompt names. One ``pipe(...)`` call, as a user would make it."""
    prompts, labels = benchmark_prompts(per_class)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompts,
        negative_prompt="",
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        use_resolution_binning=False,  # its aspect-ratio bins exist for 256 to 2048 pixels only
        clean_caption=False,
        output_type="pt",
    ).images
    classifier.eval()
    predictions = classifier(images.float() * 2 - 1).argmax(-1)
    return float((predictions == torch.tensor(labels)).float().mean())
