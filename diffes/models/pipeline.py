"""Class-conditional pixel-space sampling for the zoo models, as an ordinary diffusers pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from diffes.errors import ConfigError

__all__ = ["ZooPipeline"]


class ZooPipeline(DiffusionPipeline):  # type: ignore[misc]
    """Class-conditional sampling with classifier-free guidance.

    The denoiser is either a ``transformer`` (``DiTTransformer2DModel``) or a ``unet`` (``UNet2DModel`` with
    ``num_class_embeds``); its last class index is the null class used for guidance. Works with any diffusers
    scheduler that has ``set_timesteps`` (DDIM by default).
    """

    _optional_components = ["transformer", "unet"]  # noqa: RUF012 (diffusers convention)
    model_cpu_offload_seq = "transformer->unet"

    def __init__(
        self,
        scheduler: SchedulerMixin,
        transformer: torch.nn.Module | None = None,
        unet: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (transformer is None) == (unet is None):
            raise ConfigError("denoiser", None, "pass exactly one of transformer= or unet=")
        self.register_modules(scheduler=scheduler, transformer=transformer, unet=unet)

    @property
    def denoiser(self) -> Any:
        return self.transformer if self.transformer is not None else self.unet

    @property
    def null_class(self) -> int:
        if self.transformer is not None:
            return int(self.transformer.config.num_embeds_ada_norm)
        return int(self.unet.config.num_class_embeds) - 1

    @property
    def num_classes(self) -> int:
        return self.null_class

    def prepare_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        cfg = self.denoiser.config
        size = cfg.sample_size
        shape = (batch_size, cfg.in_channels, size, size)
        latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.denoiser.dtype)
        return latents * self.scheduler.init_noise_sigma

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor,
        guidance_scale: float,
        scheduler: SchedulerMixin | None = None,
    ) -> torch.Tensor:
        """One denoiser call (both guidance branches batched) and the guided noise estimate; ``scheduler``
        (default: the pipeline's) scales the input, as a copy on another trajectory must."""
        guided = guidance_scale > 1.0
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = (scheduler or self.scheduler).scale_model_input(model_input, t)
        labels = class_labels
        if guided:
            labels = torch.cat([class_labels, torch.full_like(class_labels, self.null_class)])
        timesteps = t.reshape(1).to(model_input.device).expand(model_input.shape[0])
        out = self.denoiser(model_input, timesteps, class_labels=labels).sample
        if not guided:
            return out
        cond, uncond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def check_inputs(self, class_labels: list[int], num_inference_steps: int, guidance_scale: float) -> None:
        if num_inference_steps < 1:
            raise ConfigError("steps", num_inference_steps, "use at least 1 sampling step")
        if len(class_labels) == 0:
            raise ConfigError("classes", class_labels, "ask for at least one class")
        bad = sorted({int(c) for c in class_labels if not 0 <= int(c) < self.num_classes})
        if bad:
            raise ConfigError("classes", bad, f"classes must lie in 0-{self.num_classes - 1}")
        if guidance_scale < 0:
            raise ConfigError("guidance_scale", guidance_scale, "use a guidance scale >= 0 (<= 1 disables guidance)")

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int],
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        self.check_inputs(class_labels, num_inference_steps, guidance_scale)
        labels = torch.tensor([int(c) for c in class_labels], device=self._execution_device)
        if latents is None:
            latents = self.prepare_latents(len(labels), generator)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        step_kwargs = {"eta": eta, "generator": generator} if "eta" in _step_params(self.scheduler) else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            noise = self.predict_noise(latents, t, labels, guidance_scale)
            latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
        images = self.postprocess(latents, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @staticmethod
    def postprocess(latents: torch.Tensor, output_type: str = "pil") -> object:
        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return array
        if output_type == "pil":
            from PIL import Image

            return [Image.fromarray((a[..., 0] * 255).round().astype(np.uint8), mode="L") for a in array]
        raise ConfigError("output_type", output_type, "use 'pil', 'np' or 'pt'")


def _step_params(scheduler: SchedulerMixin) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
