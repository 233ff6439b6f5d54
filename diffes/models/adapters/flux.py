"""Flux: packed 2x2 latents with image/text position ids, flow-matching sigmas with ``mu``, ``t / 1000``,
a distilled guidance embedding (Flux-dev) and optional true CFG in a second call (``kind="cfg"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffes.errors import ConfigError
from diffes.models.adapters.base import Cond, Guidance, SamplingAdapter
from diffes.models.adapters.text import TextAdapter

__all__ = ["FluxAdapter"]


class FluxAdapter(TextAdapter):
    guidance_kinds = ("distilled", "cfg", "none")
    max_sequence_length = 512

    def default_size(self) -> tuple[int, int]:
        size = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return size, size

    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        prompts = self.check_prompts(conditions)
        emb, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        tensors = {"prompt_embeds": emb, "pooled_prompt_embeds": pooled}
        if guidance.kind == "cfg":
            neg, neg_pooled, _ = self.pipe.encode_prompt(
                prompt=[negative_prompt or ""] * len(prompts),
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )
            tensors |= {"negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
        return {k: v.cpu() for k, v in tensors.items()}

    def check_guidance(self, guidance: Guidance) -> None:
        super().check_guidance(guidance)
        if guidance.kind == "distilled" and not self.denoiser.config.guidance_embeds:
            raise ConfigError(
                "guidance_kind", "distilled", "this Flux transformer has no guidance embedding; use cfg or none"
            )

    def initial_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        channels = self.denoiser.config.in_channels // 4
        latents, _ = self.pipe.prepare_latents(
            n, channels, self.height, self.width, self.dtype, self.device, generator, None
        )
        return latents

    def _image_ids(self) -> torch.Tensor:
        scale = self.pipe.vae_scale_factor
        h, w = 2 * (self.height // (scale * 2)), 2 * (self.width // (scale * 2))
        return self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)

    def set_timesteps(self, scheduler: Any, num_steps: int) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        sigmas: Any = np.linspace(1.0, 1 / num_steps, num_steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        c = scheduler.config
        seq_len = len(self._image_ids())
        mu = calculate_shift(
            seq_len,
            c.get("base_image_seq_len", 256),
            c.get("max_image_seq_len", 4096),
            c.get("base_shift", 0.5),
            c.get("max_shift", 1.15),
        )
        retrieve_timesteps(scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)

    def begin(self, scheduler: Any) -> None:
        scheduler.set_begin_index(0)

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        out = SamplingAdapter.prepare(self, cond, guidance)
        out["img_ids"] = self._image_ids()
        tokens = out["prompt_embeds"].shape[1]
        out["txt_ids"] = torch.zeros(tokens, 3).to(device=self.device, dtype=out["prompt_embeds"].dtype)
        return out

    def _call(
        self, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance, prefix: str
    ) -> torch.Tensor:
        embed = None
        if self.denoiser.config.guidance_embeds:
            scale = guidance.scale if guidance.kind == "distilled" else 1.0
            embed = torch.full([1], scale, device=self.device, dtype=torch.float32).expand(latents.shape[0])
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        return self.denoiser(
            hidden_states=latents,
            timestep=timestep / 1000,
            guidance=embed,
            pooled_projections=prepared[f"{prefix}pooled_prompt_embeds"],
            encoder_hidden_states=prepared[f"{prefix}prompt_embeds"],
            txt_ids=prepared["txt_ids"],
            img_ids=prepared["img_ids"],
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        noise = self._call(latents, t, prepared, guidance, "")
        if guidance.cfg:  # true CFG: the negative branch in a second call, as FluxPipeline does
            neg = self._call(latents, t, prepared, guidance, "negative_")
            noise = neg + guidance.scale * (noise - neg)
        return noise

    def extra_step_kwargs(self, scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
        return {}

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        return super()._decode(unpacked)

    def call_kwargs(self, n: int, guidance: Guidance, negative_prompt: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"max_sequence_length": self.max_sequence_length}
        out["guidance_scale"] = guidance.scale if guidance.kind == "distilled" else 1.0
        if guidance.kind == "cfg":  # true CFG: FluxPipeline's negative prompt and true_cfg_scale
            out |= {"negative_prompt": [negative_prompt or ""] * n, "true_cfg_scale": guidance.scale}
        return out
