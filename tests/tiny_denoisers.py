"""Tiny random-config denoisers of every diffusers family, with direct denoiser calls for calibration.

Each family gives a denoiser builder and a call maker: one denoiser call (args, kwargs) with seeded random
inputs of the right shapes. ``Rig`` wraps a denoiser as the smallest "pipeline" ``build_library`` accepts
(no VAE, text encoder or real scheduler): its run makes such calls, one scheduler step at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from tiny import TEXT_DIM, tiny_dit, tiny_pixart, tiny_unet2d, tiny_unet_condition

Call = tuple[tuple[Any, ...], dict[str, Any]]


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)  # diffusers initializes weights from the global generator


def tiny_sd3(dual_attention: bool = False) -> SD3Transformer2DModel:
    """SD3.5-style MMDiT: RMSNorm on queries and keys (and SD3.5's dual attention in block 0 if asked)."""
    _seeded()
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=3,
        attention_head_dim=4,
        num_attention_heads=4,
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
        qk_norm="rms_norm",
        dual_attention_layers=(0,) if dual_attention else (),
    ).eval()


def tiny_flux() -> FluxTransformer2DModel:
    _seeded()
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=8,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=4,
        num_attention_heads=4,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=8,
        guidance_embeds=True,
        axes_dims_rope=(0, 2, 2),
    ).eval()


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _t(g: torch.Generator, batch: int) -> torch.Tensor:
    return torch.randint(0, 1000, (batch,), generator=g)


def sd3_call(g: torch.Generator, batch: int = 2) -> Call:
    kwargs = dict(
        hidden_states=_randn(g, batch, 4, 8, 8),
        encoder_hidden_states=_randn(g, batch, 3, TEXT_DIM),
        pooled_projections=_randn(g, batch, 8),
        timestep=_t(g, batch).float(),
        return_dict=False,
    )
    return (), kwargs


def flux_call(g: torch.Generator, batch: int = 2) -> Call:
    side, text = 3, 4  # text tokens != batch: single_sample cuts tensors by their leading size
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()
    kwargs = dict(
        hidden_states=_randn(g, batch, side * side, 8),
        encoder_hidden_states=_randn(g, batch, text, TEXT_DIM),
        pooled_projections=_randn(g, batch, 8),
        timestep=torch.rand(batch, generator=g),
        img_ids=img_ids,
        txt_ids=torch.zeros(text, 3),
        guidance=torch.full((batch,), 3.5),
        return_dict=False,
    )
    return (), kwargs


def dit_call(g: torch.Generator, batch: int = 2) -> Call:
    kwargs = dict(class_labels=torch.randint(0, 1000, (batch,), generator=g), return_dict=False)
    return (_randn(g, batch, 4, 8, 8), _t(g, batch)), kwargs


def pixart_call(g: torch.Generator, batch: int = 2) -> Call:
    kwargs = dict(
        encoder_hidden_states=_randn(g, batch, 3, TEXT_DIM),
        timestep=_t(g, batch),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )
    return (_randn(g, batch, 4, 8, 8),), kwargs


def unet2d_call(g: torch.Generator, batch: int = 2) -> Call:
    return (_randn(g, batch, 3, 8, 8), _t(g, batch)), {"return_dict": False}


def unet_call(g: torch.Generator, batch: int = 2, sdxl: bool = False) -> Call:
    kwargs: dict[str, Any] = dict(encoder_hidden_states=_randn(g, batch, 3, TEXT_DIM), return_dict=False)
    if sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": _randn(g, batch, TEXT_DIM), "time_ids": _randn(g, batch, 6)}
    return (_randn(g, batch, 4, 8, 8), _t(g, batch)), kwargs


# family -> (denoiser builder, call maker)
DENOISERS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[torch.Generator], Call]]] = {
    "dit": (tiny_dit, dit_call),
    "pixart": (tiny_pixart, pixart_call),
    "unet2d": (tiny_unet2d, unet2d_call),
    "sd": (tiny_unet_condition, unet_call),
    "sdxl": (lambda: tiny_unet_condition(sdxl=True), lambda g: unet_call(g, sdxl=True)),
    "sd3": (tiny_sd3, sd3_call),
    "sd3-dual": (lambda: tiny_sd3(dual_attention=True), sd3_call),
    "flux": (tiny_flux, flux_call),
}


class _Clock:
    """A scheduler that only counts steps: the step tracker needs ``set_timesteps`` and ``step``."""

    def __init__(self) -> None:
        self.timesteps: torch.Tensor | None = None

    def set_timesteps(self, num_steps: int) -> None:
        self.timesteps = torch.arange(num_steps, 0, -1).float()

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None


class Rig:
    """A denoiser and its calls, shaped like a pipeline for ``build_library(rig, config, run=rig.run)``: each
    step of the run makes ``calls_per_step`` fresh calls, so every stage calibrates on its own inputs."""

    def __init__(
        self,
        denoiser: torch.nn.Module,
        make_call: Callable[[torch.Generator], Call],
        attr: str = "transformer",
        calls_per_step: int = 1,
        seed: int = 0,
    ) -> None:
        self.denoiser, self.make_call = denoiser, make_call
        setattr(self, attr, denoiser)
        self.scheduler = _Clock()
        self.calls_per_step, self.seed = calls_per_step, seed

    @classmethod
    def of(cls, family: str) -> Rig:
        build, make_call = DENOISERS[family]
        return cls(build(), make_call, "unet" if family in ("unet2d", "sd", "sdxl") else "transformer")

    def calls(self, n: int, seed: int) -> list[Call]:
        g = torch.Generator().manual_seed(seed)
        return [self.make_call(g) for _ in range(n)]

    def run(self, pipe: Rig, num_steps: int) -> None:
        step_calls = self.calls(num_steps * self.calls_per_step, self.seed)
        self.scheduler.set_timesteps(num_steps)
        for step in range(num_steps):
            for args, kwargs in step_calls[step * self.calls_per_step : (step + 1) * self.calls_per_step]:
                self.denoiser(*args, **kwargs)
            self.scheduler.step()
