"""Text-to-image families in latent space: PixArt-alpha/Sigma, Stable Diffusion 1.x/2.x and XL, SD3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffes.errors import ConfigError
from diffes.models.adapters.base import Cond, Guidance, SamplingAdapter

__all__ = ["TextAdapter", "PixArtAdapter", "StableDiffusionAdapter", "StableDiffusionXLAdapter", "SD3Adapter"]


def _cfg_batch(prepared: dict[str, Any], pairs: Sequence[tuple[str, str]], guidance: Guidance) -> dict[str, Any]:
    """Replace each (positive, negative) pair by [negative; positive] under the positive key, as the pipelines
    batch both guidance branches (unconditional first)."""
    out = {k: v for k, v in prepared.items() if k not in {n for _, n in pairs}}
    if guidance.cfg:
        for pos, neg in pairs:
            out[pos] = torch.cat([prepared[neg], prepared[pos]])
    return out


def _guide(noise: torch.Tensor, guidance: Guidance) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, then the optional rescale of SD/SDXL."""
    if not guidance.cfg:
        return noise
    uncond, text = noise.chunk(2)
    guided = uncond + guidance.scale * (text - uncond)
    if guidance.rescale > 0:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

        guided = rescale_noise_cfg(guided, text, guidance_rescale=guidance.rescale)
    return guided


class TextAdapter(SamplingAdapter):
    """Prompts encoded by the pipeline's own ``encode_prompt``; latents by its own ``prepare_latents``."""

    def check_prompts(self, conditions: Sequence[Any]) -> list[str]:
        prompts = [str(p) for p in conditions]
        if not prompts:
            raise ConfigError("prompts", prompts, "give at least one prompt")
        if getattr(self.pipe, "text_encoder", None) is None:
            raise ConfigError("model", type(self.pipe).__name__, "the pipeline has no text encoder to encode prompts")
        return prompts

    def initial_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        return self.pipe.prepare_latents(n, channels, self.height, self.width, self.dtype, self.device, generator, None)

    def pipe_call(
        self,
        conditions: Sequence[Any],
        num_steps: int,
        guidance: Guidance,
        generator: torch.Generator,
        negative_prompt: str | None = None,
    ) -> torch.Tensor:
        prompts = list(conditions)
        out = self.pipe(
            prompts,
            num_inference_steps=num_steps,
            generator=generator,
            height=self.height,
            width=self.width,
            output_type="pt",
            **self.call_kwargs(len(prompts), guidance, negative_prompt),
        )
        return out.images.float().cpu()

    def call_kwargs(self, n: int, guidance: Guidance, negative_prompt: str | None) -> dict[str, Any]:
        """The family's own arguments of the reference ``pipe(...)`` call (guidance and negative prompt)."""
        scale = guidance.scale if guidance.cfg else 1.0
        return {"negative_prompt": [negative_prompt or ""] * n, "guidance_scale": scale}

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = latents.to(vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        image = vae.decode(z, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pt").float().cpu()


class PixArtAdapter(TextAdapter):
    """PixArt-alpha and Sigma: T5 embeddings with attention masks, ``added_cond_kwargs``, learned sigma."""

    max_sequence_length = 120

    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        prompts = self.check_prompts(conditions)
        emb, mask, neg, neg_mask = self.pipe.encode_prompt(
            prompts,
            True,
            negative_prompt=negative_prompt or "",
            num_images_per_prompt=1,
            device=self.device,
            clean_caption=False,
            max_sequence_length=self.max_sequence_length,
        )
        tensors = {"prompt_embeds": emb, "prompt_attention_mask": mask}
        tensors |= {"negative_prompt_embeds": neg, "negative_prompt_attention_mask": neg_mask}
        return {k: v.cpu() for k, v in tensors.items()}

    def begin(self, scheduler: Any) -> None:
        if type(self.pipe).__name__ == "PixArtAlphaPipeline" and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)  # alpha does this, Sigma does not

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        pairs = [
            ("prompt_embeds", "negative_prompt_embeds"),
            ("prompt_attention_mask", "negative_prompt_attention_mask"),
        ]
        out = _cfg_batch(super().prepare(cond, guidance), pairs, guidance)
        resolution = aspect = None
        if type(self.pipe).__name__ == "PixArtAlphaPipeline" and self.denoiser.config.sample_size == 128:
            rows = out["prompt_embeds"].shape[0]
            dtype = out["prompt_embeds"].dtype
            resolution = torch.tensor([self.height, self.width]).repeat(rows, 1).to(self.device, dtype)
            aspect = torch.tensor([float(self.height / self.width)]).repeat(rows, 1).to(self.device, dtype)
        out["added_cond_kwargs"] = {"resolution": resolution, "aspect_ratio": aspect}
        return out

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        model_input = torch.cat([latents] * 2) if guidance.cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        timestep = (t[None].to(model_input.device) if t.dim() == 0 else t).expand(model_input.shape[0])
        noise = self.denoiser(
            model_input,
            encoder_hidden_states=prepared["prompt_embeds"],
            encoder_attention_mask=prepared["prompt_attention_mask"],
            timestep=timestep,
            added_cond_kwargs=prepared["added_cond_kwargs"],
            return_dict=False,
        )[0]
        noise = _guide(noise, Guidance(guidance.kind, guidance.scale))
        if self.denoiser.config.out_channels // 2 == self.denoiser.config.in_channels:
            noise = noise.chunk(2, dim=1)[0]
        return noise

    def call_kwargs(self, n: int, guidance: Guidance, negative_prompt: str | None) -> dict[str, Any]:
        scale = guidance.scale if guidance.cfg else 1.0
        return {
            "negative_prompt": negative_prompt or "",
            "guidance_scale": scale,
            "use_resolution_binning": False,  # diffes samples the exact size asked for
            "clean_caption": False,
            "max_sequence_length": self.max_sequence_length,
        }


class StableDiffusionAdapter(TextAdapter):
    """Stable Diffusion 1.x/2.x: CLIP embeddings, CFG with optional rescale, ``eta`` and ``generator`` steps."""

    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        prompts = self.check_prompts(conditions)
        neg = [negative_prompt or ""] * len(prompts)
        emb, neg_emb = self.pipe.encode_prompt(prompts, self.device, 1, True, neg)
        return {"prompt_embeds": emb.cpu(), "negative_prompt_embeds": neg_emb.cpu()}

    def begin(self, scheduler: Any) -> None:
        pass  # StableDiffusionPipeline leaves the begin index alone

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        return _cfg_batch(super().prepare(cond, guidance), [("prompt_embeds", "negative_prompt_embeds")], guidance)

    def unet_kwargs(self, prepared: dict[str, Any]) -> dict[str, Any]:
        return {"added_cond_kwargs": None}

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        model_input = torch.cat([latents] * 2) if guidance.cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = self.denoiser(
            model_input,
            t,
            encoder_hidden_states=prepared["prompt_embeds"],
            timestep_cond=None,
            cross_attention_kwargs=None,
            return_dict=False,
            **self.unet_kwargs(prepared),
        )[0]
        return _guide(noise, guidance)

    def check_guidance(self, guidance: Guidance) -> None:
        super().check_guidance(guidance)
        if self.denoiser.config.time_cond_proj_dim is not None:
            raise ConfigError("model", type(self.denoiser).__name__, "guidance-distilled UNets (LCM) are not supported")

    def call_kwargs(self, n: int, guidance: Guidance, negative_prompt: str | None) -> dict[str, Any]:
        return super().call_kwargs(n, guidance, negative_prompt) | {"guidance_rescale": guidance.rescale}


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """SDXL: two text encoders, pooled embeddings and add-time ids as ``added_cond_kwargs``."""

    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        prompts = self.check_prompts(conditions)
        # None, not "": SDXL encodes a missing negative prompt as zeros (force_zeros_for_empty_prompt)
        neg = [negative_prompt] * len(prompts) if negative_prompt else None
        emb, neg_emb, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=neg,
        )
        encoder_2 = self.pipe.text_encoder_2
        projection = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        size = (self.height, self.width)
        time_ids = self.pipe._get_add_time_ids(
            size, (0, 0), size, dtype=emb.dtype, text_encoder_projection_dim=projection
        )
        rows = time_ids.repeat(len(prompts), 1)
        tensors = {"prompt_embeds": emb, "negative_prompt_embeds": neg_emb, "text_embeds": pooled}
        tensors |= {"negative_text_embeds": neg_pooled, "time_ids": rows, "negative_time_ids": rows}
        return {k: v.cpu() for k, v in tensors.items()}

    def begin(self, scheduler: Any) -> None:
        SamplingAdapter.begin(self, scheduler)

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        pairs = [("prompt_embeds", "negative_prompt_embeds"), ("text_embeds", "negative_text_embeds")]
        pairs.append(("time_ids", "negative_time_ids"))
        return _cfg_batch(SamplingAdapter.prepare(self, cond, guidance), pairs, guidance)

    def unet_kwargs(self, prepared: dict[str, Any]) -> dict[str, Any]:
        return {"added_cond_kwargs": {"text_embeds": prepared["text_embeds"], "time_ids": prepared["time_ids"]}}

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is None or std is None:
            return super()._decode(latents)
        shape = (1, latents.shape[1], 1, 1)
        mean_t = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
        image = vae.decode(latents * std_t / vae.config.scaling_factor + mean_t, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pt").float().cpu()

    def call_kwargs(self, n: int, guidance: Guidance, negative_prompt: str | None) -> dict[str, Any]:
        # None, not "": SDXL encodes a missing negative prompt as zeros (force_zeros_for_empty_prompt)
        negative = [negative_prompt] * n if negative_prompt else None
        return super().call_kwargs(n, guidance, negative_prompt) | {"negative_prompt": negative}


class SD3Adapter(TextAdapter):
    """Stable Diffusion 3/3.5: joint transformer, pooled projections, flow matching (dynamic shift ``mu``)."""

    max_sequence_length = 256

    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        prompts = self.check_prompts(conditions)
        neg = [negative_prompt or ""] * len(prompts)
        emb, neg_emb, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=neg,
            do_classifier_free_guidance=True,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        tensors = {"prompt_embeds": emb, "negative_prompt_embeds": neg_emb}
        tensors |= {"pooled_projections": pooled, "negative_pooled_projections": neg_pooled}
        return {k: v.cpu() for k, v in tensors.items()}

    def set_timesteps(self, scheduler: Any, num_steps: int) -> None:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
            retrieve_timesteps,
        )

        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            scale, patch = self.pipe.vae_scale_factor, self.denoiser.config.patch_size
            seq_len = (self.height // scale // patch) * (self.width // scale // patch)
            c = scheduler.config
            mu = calculate_shift(
                seq_len,
                c.get("base_image_seq_len", 256),
                c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5),
                c.get("max_shift", 1.16),
            )
            kwargs["mu"] = mu
        retrieve_timesteps(scheduler, num_steps, self.device, sigmas=None, **kwargs)

    def begin(self, scheduler: Any) -> None:
        pass  # the SD3 pipeline leaves the begin index alone

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        pairs = [("prompt_embeds", "negative_prompt_embeds"), ("pooled_projections", "negative_pooled_projections")]
        return _cfg_batch(super().prepare(cond, guidance), pairs, guidance)

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        model_input = torch.cat([latents] * 2) if guidance.cfg else latents
        noise = self.denoiser(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=prepared["prompt_embeds"],
            pooled_projections=prepared["pooled_projections"],
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        return _guide(noise, Guidance(guidance.kind, guidance.scale))

    def extra_step_kwargs(self, scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
        return {}  # the SD3 pipeline passes none

    def call_kwargs(self, n: int, guidance: Guidance, negative_prompt: str | None) -> dict[str, Any]:
        return super().call_kwargs(n, guidance, negative_prompt) | {"max_sequence_length": self.max_sequence_length}
