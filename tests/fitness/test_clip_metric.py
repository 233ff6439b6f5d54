from __future__ import annotations

import shutil
import string
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from diffes.errors import MissingWeightsError
from diffes.fitness import clip_text_score, get_metric


def _tiny_tokenizer() -> CLIPTokenizer:
    """Characters as tokens, no merges: enough BPE to tokenize test prompts offline."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def _tiny_clip(vocab_size: int) -> CLIPModel:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    config = CLIPConfig(text_config=text, vision_config=vision | {"patch_size": 8}, projection_dim=8)
    # transformers initializes weights from the global generator; fork it so the test leaks no seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CLIPModel(config)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = _tiny_tokenizer()
    _tiny_clip(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _images(n: int = 3, channels: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


def test_clip_distance_per_probe(clip_dir: Path) -> None:
    metric = get_metric("clip", weights=clip_dir)
    student, teacher = _images(seed=0), _images(seed=1)
    distances = metric(student, teacher)
    assert distances.shape == (3,) and distances.dtype == torch.float32
    assert bool(((distances > 0) & (distances <= 2)).all())
    torch.testing.assert_close(metric(student, student), torch.zeros(3), atol=1e-6, rtol=0)
    # Large RGB images are resized and center-cropped to the model's input size.
    big = _images(channels=3, side=48)
    assert metric(big, big.flip(-1)).shape == (3,)


def test_clip_text_score(clip_dir: Path) -> None:
    images = _images(n=2)
    scores = clip_text_score(images, ["a digit 7", "a digit 1"], weights=clip_dir)
    assert scores.shape == (2,) and bool((scores.abs() <= 1 + 1e-6).all())
    broadcast = clip_text_score(images, "a digit 7", weights=clip_dir)
    torch.testing.assert_close(broadcast[0], scores[0])
    with pytest.raises(ValueError, match="one prompt or one per image"):
        clip_text_score(images, ["a", "b", "c"], weights=clip_dir)


@pytest.mark.parametrize("weights", [None, "missing-dir"])
def test_missing_clip_weights_is_a_one_line_error(tmp_path: Path, weights: str | None) -> None:
    given = None if weights is None else tmp_path / weights
    with pytest.raises(MissingWeightsError) as info:
        get_metric("clip", weights=given)
    assert "\n" not in str(info.value) and "--clip-weights DIR" in str(info.value)


def test_clip_folder_without_weights_file_names_it(tmp_path: Path, clip_dir: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(clip_dir / "config.json", folder)
    with pytest.raises(MissingWeightsError, match=r"no weights file \(model\.safetensors"):
        get_metric("clip", weights=folder)


def test_text_score_without_tokenizer_files_names_them(tmp_path: Path, clip_dir: Path) -> None:
    folder = tmp_path / "model-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, folder)
    assert get_metric("clip", weights=folder)(_images(), _images()).shape == (3,)
    with pytest.raises(MissingWeightsError, match="tokenizer files") as info:
        clip_text_score(_images(), "a digit", weights=folder)
    assert "\n" not in str(info.value)
