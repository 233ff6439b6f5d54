"""The text-to-image zoo pipeline: the shipped folder, its adapter, the judge on its images, its training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from diffes.fitness.classifier_metric import class_accuracy
from diffes.models.adapters import Guidance, adapter_for
from diffes.models.loading import is_zoo_model, load_pipeline, model_conditioning
from diffes.models.t2i import T2I_MODEL, TEMPLATES, build_tokenizer, prompt_for
from diffes.models.t2i_training import T2IConfig, train_t2i
from diffes.models.zoo import load_model, weights_dir

MAX_WEIGHTS_BYTES = 7 * 10**6
PROMPTS = ["a handwritten digit 3", "the number seven"]


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipe = load_pipeline(T2I_MODEL, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_shipped_folder_is_a_diffusers_pipeline_within_7_mb(pipe: Any) -> None:
    folder = weights_dir(T2I_MODEL)
    assert type(pipe).__name__ == "PixArtAlphaPipeline"
    assert {"model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler"} <= {
        p.name for p in folder.iterdir()
    }
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(folder.rglob("*.bin"))
    assert sum(p.stat().st_size for p in weights) <= MAX_WEIGHTS_BYTES
    assert model_conditioning(T2I_MODEL) == "prompts" and is_zoo_model(T2I_MODEL)


def test_template_words_are_single_tokens() -> None:
    tokenizer = build_tokenizer()
    for digit in range(10):
        for variant in range(len(TEMPLATES)):
            prompt = prompt_for(digit, variant)
            assert len(tokenizer(prompt).input_ids) == len(prompt.split()) + 1  # and </s>


@pytest.mark.parametrize("guidance", [Guidance("cfg", 4.5), Guidance("none", 1.0)])
def test_dense_adapter_run_equals_pipe_call(pipe: Any, guidance: Guidance) -> None:
    adapter = adapter_for(pipe)
    assert (adapter.height, adapter.width) == (8, 8)
    reference = adapter.pipe_call(PROMPTS, 4, guidance, torch.Generator().manual_seed(7))
    cond = adapter.encode(PROMPTS, guidance)
    generator = torch.Generator().manual_seed(7)
    latents = adapter.initial_latents(len(PROMPTS), generator)
    images = adapter.decode(adapter.sample(cond, latents, 4, guidance, generator=generator))
    assert images.shape == (2, 1, 8, 8)
    assert torch.equal(images, reference)


def test_the_judge_reads_its_images(pipe: Any) -> None:
    """Gray 8x8 images in [0, 1]: what the digit classifier (the zoo's default metric) judges."""
    adapter = adapter_for(pipe)
    guidance = Guidance("cfg", 4.5)
    generator = torch.Generator().manual_seed(0)
    latents = adapter.initial_latents(len(PROMPTS), generator)
    images = adapter.decode(adapter.sample(adapter.encode(PROMPTS, guidance), latents, 20, guidance, generator))
    assert class_accuracy(images, torch.tensor([3, 7])) == 1.0


def _train(out: Path) -> dict[str, bytes]:
    config = T2IConfig(steps=2, vae_steps=2, batch_size=4, eval_every=2, eval_steps=1)
    train_t2i(config, out, load_model("digits-classifier"))
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


def test_training_is_deterministic(tmp_path: Path) -> None:
    first, second = _train(tmp_path / "a"), _train(tmp_path / "b")
    assert len(first) == 3 and first == second
