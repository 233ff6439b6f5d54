"""Training of the text-to-image zoo pipeline (``diffes.models.t2i``). Used by ``scripts/train_zoo.py``; seeded
end to end. Two stages: the VAE (reconstruction plus a small KL term), then the PixArt transformer on the VAE's
latents with prompt dropout for classifier-free guidance. The T5 text encoder stays at its seeded random init
(real PixArt keeps its T5 frozen too), so prompts are encoded once."""

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
from diffes.models.data import DigitsSplit, load_digits_split
from diffes.models.t2i import DEFAULT_STEPS, T2I_MODEL, build_pipeline, prompted_accuracy, training_prompts
from diffes.models.training import class_accuracy
from diffes.models.zoo import get_entry, training_scheduler

__all__ = ["T2IConfig", "train_t2i", "train_vae", "encode_training_prompts"]


@dataclass(frozen=True)
class T2IConfig:
    steps: int = 5000  # transformer optimizer steps (100% prompted accuracy from 2000 on, in a pilot)
    vae_steps: int = 2000
    batch_size: int = 128
    lr: float = 5e-4
    vae_lr: float = 1e-3
    kl_weight: float = 1e-3  # per latent element, against the per-pixel reconstruction error
    warmup: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    seed: int = 0
    eval_every: int = 1000
    eval_steps: int = DEFAULT_STEPS


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translation, padding with background (-1): more shapes for the VAE to reconstruct."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy : dy + images.shape[-2], dx : dx + images.shape[-1]]


def train_vae(vae: Any, data: DigitsSplit, config: T2IConfig, classifier: DigitClassifier) -> dict[str, float]:
    """Train the autoencoder, then set its ``scaling_factor`` so that training latents have unit variance."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.vae_steps)
    vae.train()
    bar = tqdm(range(config.vae_steps), desc=f"{T2I_MODEL} vae")
    for _ in bar:
        idx = torch.randint(0, len(data.train_labels), (config.batch_size,), generator=gen)
        x = _shift(data.train_images[idx], gen)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.mse_loss(recon, x) + config.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        cosine.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", kl=f"{kl.item():.3f}", refresh=False)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        std = float(vae.encode(data.train_images).latent_dist.sample(generator=gen).std())
        recon = vae.decode(vae.encode(data.test_images).latent_dist.mode()).sample.clamp(-1, 1)
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    accuracy = class_accuracy(classifier, recon, data.test_labels)
    return {"reconstruction_accuracy": accuracy, "reconstruction_mse": float(F.mse_loss(recon, data.test_images))}


@torch.no_grad()
def encode_training_prompts(pipe: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T5 embeddings and attention masks of every training prompt, then of the empty prompt (the guidance
    branch), padded only to the longest prompt: masked keys are ignored, so it is the same as padding to 120."""
    prompts = [p for p, _ in training_prompts()] + [""]
    emb, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device="cpu", clean_caption=False, max_sequence_length=120
    )
    length = int(mask.sum(1).max())
    digits = torch.tensor([d for _, d in training_prompts()])
    return emb[:, :length].clone(), mask[:, :length].clone(), digits


class _Batches:
    """Seeded training batches: posterior latents of the digits, and a prompt of the digit (or the empty one)."""

    def __init__(self, pipe: Any, data: DigitsSplit, config: T2IConfig) -> None:
        with torch.no_grad():
            dist = pipe.vae.encode(data.train_images).latent_dist
        self.mean, self.std = dist.mean, dist.std
        self.scale = pipe.vae.config.scaling_factor
        self.labels = data.train_labels
        self.emb, self.mask, digits = encode_training_prompts(pipe)
        self.by_digit = [torch.nonzero(digits == d).flatten() for d in range(int(digits.max()) + 1)]
        self.config = config
        self.gen = torch.Generator().manual_seed(config.seed + 2)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, gen = self.config.batch_size, self.gen
        idx = torch.randint(0, len(self.labels), (n,), generator=gen)
        z = self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=gen)
        variant = torch.randint(0, len(self.by_digit[0]), (n,), generator=gen)
        prompt = torch.stack([self.by_digit[int(d)][int(v)] for d, v in zip(self.labels[idx], variant)])
        drop = torch.rand(n, generator=gen) < self.config.cfg_dropout
        prompt[drop] = len(self.emb) - 1  # the empty prompt
        return z * self.scale, self.emb[prompt], self.mask[prompt]


def train_t2i(config: T2IConfig, out: Path, classifier: DigitClassifier) -> dict[str, Any]:
    """Train the VAE, then the transformer (epsilon prediction, EMA of the weights); save the whole pipeline."""
    start = time.time()
    pipe = build_pipeline(config.seed)
    data = load_digits_split()
    vae_metrics = train_vae(pipe.vae, data, config, classifier)
    print({"vae": vae_metrics, "minutes": round((time.time() - start) / 60, 2)})
    history = _train_transformer(pipe, data, config, classifier, start)
    pipe.save_pretrained(out, safe_serialization=True)
    final = dict(history[-1])
    log = {"config": asdict(config), "vae": vae_metrics, "history": history, "final": final}
    write_json(out / "training.json", log)
    return final


def _train_transformer(
    pipe: Any, data: DigitsSplit, config: T2IConfig, classifier: DigitClassifier, start: float
) -> list[dict[str, float]]:
    model = pipe.transformer
    batches = _Batches(pipe, data, config)
    noise_schedule = training_scheduler()
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup))
    extras = {"resolution": None, "aspect_ratio": None}  # PixArt's size conditions exist at 1024 px only
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, config.steps + 1), desc=T2I_MODEL)
    for step in bar:
        model.train()
        z, emb, mask = batches.next()
        noise = torch.randn(z.shape, generator=batches.gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(z),), generator=batches.gen)
        zt = noise_schedule.add_noise(z, noise, t)
        pred = model(zt, encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=extras)
        loss = F.mse_loss(pred.sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warm.step()
        ema.step(model.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step % config.eval_every == 0 or step == config.steps:
            history.append(_evaluate(pipe, ema, classifier, config, step, start))
            bar.write(str(history[-1]))
    ema.copy_to(model.parameters())
    model.eval()
    return history


def _evaluate(
    pipe: Any, ema: EMAModel, classifier: DigitClassifier, config: T2IConfig, step: int, start: float
) -> dict[str, float]:
    model = pipe.transformer
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.eval()
    guidance = get_entry(T2I_MODEL).guidance_scale
    acc = prompted_accuracy(pipe, classifier, per_class=10, steps=config.eval_steps, guidance=guidance)
    ema.restore(model.parameters())
    return {"step": step, "prompt_accuracy": acc, "minutes": round((time.time() - start) / 60, 2)}
