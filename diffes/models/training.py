"""Training of the zoo models. Used by ``scripts/train_zoo.py``; seeded end to end."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffes.io import write_json
from diffes.models.classifier import DigitClassifier
from diffes.models.data import NUM_CLASSES, DigitsSplit, load_digits_split
from diffes.models.pipeline import ZooPipeline
from diffes.models.zoo import build_model, get_entry, sampling_scheduler, training_scheduler

__all__ = ["TrainConfig", "train_generator", "train_classifier", "class_accuracy", "sample_accuracy"]


@dataclass(frozen=True)
class TrainConfig:
    model: str
    steps: int = 8000
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    seed: int = 0
    eval_every: int = 1000
    eval_steps: int = 20


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translation, padding with background (-1)."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy : dy + images.shape[-2], dx : dx + images.shape[-1]]


@torch.no_grad()
def class_accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    classifier.eval()
    pred = classifier(images).argmax(-1)
    return float((pred == labels).float().mean())


@torch.no_grad()
def sample_accuracy(
    pipe: ZooPipeline, classifier: DigitClassifier, per_class: int, steps: int, seed: int = 1234
) -> float:
    """Fraction of class-conditional samples that the classifier labels as the class asked for."""
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    generator = torch.Generator().manual_seed(seed)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(labels, num_inference_steps=steps, generator=generator, output_type="pt").images  # type: ignore[union-attr]
    return class_accuracy(classifier, images * 2 - 1, torch.tensor(labels))


def train_classifier(out: Path, epochs: int = 60, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)  # model init draws from the global generator
    data = load_digits_split()
    model = build_model("digits-classifier")
    assert isinstance(model, DigitClassifier)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    n = len(data.train_labels)
    for _ in tqdm(range(epochs), desc="classifier"):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(64):
            x = _shift(data.train_images[idx], gen)
            loss = F.cross_entropy(model(x), data.train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    acc = class_accuracy(model, data.test_images, data.test_labels)
    model.eval().save_pretrained(out, safe_serialization=True)
    metrics = {"test_accuracy": acc, "epochs": epochs, "seed": seed}
    write_json(out / "training.json", metrics)
    return metrics


def _denoiser_inputs(
    config: TrainConfig, data: DigitsSplit, null_class: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, len(data.train_labels), (config.batch_size,), generator=gen)
    labels = data.train_labels[idx].clone()
    drop = torch.rand(config.batch_size, generator=gen) < config.cfg_dropout
    labels[drop] = null_class
    return data.train_images[idx], labels


def train_generator(config: TrainConfig, out: Path, classifier: DigitClassifier) -> dict[str, float]:
    """Epsilon-prediction training with classifier-free guidance dropout and an EMA of the weights."""
    entry = get_entry(config.model)
    torch.manual_seed(config.seed)  # model init draws from the global generator
    model: Any = build_model(config.model)
    pipe = ZooPipeline(sampling_scheduler(), **{entry.kind: model})
    null_class = pipe.null_class
    if entry.kind == "transformer":
        for block in model.transformer_blocks:  # we drop labels ourselves, from our generator
            block.norm1.emb.class_embedder.dropout_prob = 0.0
    data = load_digits_split()
    noise_schedule = training_scheduler()
    gen = torch.Generator().manual_seed(config.seed)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup))
    history: list[dict[str, float]] = []
    start = time.time()
    bar = tqdm(range(1, config.steps + 1), desc=config.model)
    for step in bar:
        model.train()
        x0, labels = _denoiser_inputs(config, data, null_class, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(x0),), generator=gen)
        xt = noise_schedule.add_noise(x0, noise, t)
        loss = F.mse_loss(model(xt, t, class_labels=labels).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warm.step()
        ema.step(model.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step % config.eval_every == 0 or step == config.steps:
            history.append(_evaluate(model, ema, pipe, classifier, config, step, start))
            bar.write(str(history[-1]))
    ema.copy_to(model.parameters())
    model.eval().save_pretrained(out, safe_serialization=True)
    metrics = dict(history[-1])
    write_json(out / "training.json", {"config": asdict(config), "history": history, "final": metrics})
    return metrics


def _evaluate(
    model: torch.nn.Module,
    ema: EMAModel,
    pipe: ZooPipeline,
    classifier: DigitClassifier,
    config: TrainConfig,
    step: int,
    start: float,
) -> dict[str, float]:
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.eval()
    acc = sample_accuracy(pipe, classifier, per_class=10, steps=config.eval_steps)
    ema.restore(model.parameters())
    return {"step": step, "sample_accuracy": acc, "minutes": round((time.time() - start) / 60, 2)}
