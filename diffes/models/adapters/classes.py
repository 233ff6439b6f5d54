"""Class-conditional families: the zoo pipeline and diffusers' ``DiTPipeline``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffes.errors import ConfigError
from diffes.models.adapters.base import Cond, Guidance, SamplingAdapter

__all__ = ["ZooAdapter", "DiTAdapter"]


class _ClassAdapter(SamplingAdapter):
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        if negative_prompt:
            raise ConfigError("negative_prompt", negative_prompt, "class-conditional models take no prompts")
        labels = [int(c) for c in conditions]
        bad = sorted({c for c in labels if not 0 <= c < self.num_classes})
        if bad:
            raise ConfigError("classes", bad[:5], f"classes must lie in 0-{self.num_classes - 1}")
        return {"class_labels": torch.tensor(labels, dtype=torch.long)}


class ZooAdapter(_ClassAdapter):
    """diffes' own ``ZooPipeline``: pixel space, null class last, guidance batched in one call."""

    @property
    def num_classes(self) -> int:
        return int(self.pipe.num_classes)

    def default_size(self) -> tuple[int, int]:
        size = int(self.denoiser.config.sample_size)
        return size, size

    def initial_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.pipe.prepare_latents(n, generator)

    def set_timesteps(self, scheduler: Any, num_steps: int) -> None:
        scheduler.set_timesteps(num_steps, device=self.device)

    def begin(self, scheduler: Any) -> None:
        pass  # ZooPipeline's loop does nothing to the scheduler before it starts

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        scale = guidance.scale if guidance.cfg else 1.0
        return self.pipe.predict_noise(latents, t, prepared["class_labels"], scale, scheduler)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.postprocess(latents, "pt").float().cpu()

    def pipe_call(
        self,
        conditions: Sequence[Any],
        num_steps: int,
        guidance: Guidance,
        generator: torch.Generator,
        negative_prompt: str | None = None,
    ) -> torch.Tensor:
        scale = guidance.scale if guidance.cfg else 1.0
        out = self.pipe(
            list(conditions), num_inference_steps=num_steps, guidance_scale=scale, generator=generator, output_type="pt"
        )
        return out.images.float().cpu()


class DiTAdapter(_ClassAdapter):
    """``DiTPipeline``: ImageNet classes, null class 1000, learned-sigma split, guidance on the eps channels."""

    null_class = 1000  # DiTPipeline hard-codes it

    @property
    def num_classes(self) -> int:
        return self.null_class

    def default_size(self) -> tuple[int, int]:
        size = int(self.denoiser.config.sample_size) * 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return size, size

    def initial_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        size, channels = self.denoiser.config.sample_size, self.denoiser.config.in_channels
        shape = (n, channels, size, size)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)

    def set_timesteps(self, scheduler: Any, num_steps: int) -> None:
        scheduler.set_timesteps(num_steps)  # DiTPipeline passes no device

    def begin(self, scheduler: Any) -> None:
        pass

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        labels = cond["class_labels"].to(self.device).reshape(-1)
        if guidance.cfg:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        return {"class_labels": labels}

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        channels = self.denoiser.config.in_channels
        model_input = torch.cat([latents, latents]) if guidance.cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        timesteps = t[None].to(model_input.device) if t.dim() == 0 else t
        timesteps = timesteps.expand(model_input.shape[0])
        out = self.denoiser(model_input, timestep=timesteps, class_labels=prepared["class_labels"]).sample
        if guidance.cfg:
            eps, rest = out[:, :channels], out[:, channels:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half = uncond_eps + guidance.scale * (cond_eps - uncond_eps)
            out = torch.cat([half, rest[: len(half)]], dim=1)
        if self.denoiser.config.out_channels // 2 == channels:
            out = torch.split(out, channels, dim=1)[0]
        return out

    def extra_step_kwargs(self, scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
        return {}  # DiTPipeline passes none

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        samples = vae.decode(1 / vae.config.scaling_factor * latents.to(vae.dtype)).sample  # as DiTPipeline rounds
        return (samples / 2 + 0.5).clamp(0, 1).float().cpu()

    def pipe_call(
        self,
        conditions: Sequence[Any],
        num_steps: int,
        guidance: Guidance,
        generator: torch.Generator,
        negative_prompt: str | None = None,
    ) -> torch.Tensor:
        scale = guidance.scale if guidance.cfg else 1.0
        out = self.pipe(
            class_labels=[int(c) for c in conditions],
            num_inference_steps=num_steps,
            guidance_scale=scale,
            generator=generator,
            output_type="pt",
        )
        return out.images.float().cpu()
