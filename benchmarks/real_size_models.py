"""Full-size denoisers of the real-size benchmark, built from published architecture facts with random weights
(weights change neither speed nor memory), and one denoiser call of the real shapes for each.

Configs are those of the diffusers checkpoints facebook/DiT-XL-2-256, PixArt-alpha/PixArt-Sigma-XL-2-512-MS,
stable-diffusion-v1-5 (unet), stable-diffusion-xl-base-1.0 (unet) and FLUX.1-dev (transformer), written out
here so nothing is downloaded. ``depth`` cuts a transformer to its first blocks (UNets are built whole).
"""

from __future__ import annotations

from typing import Any

import torch

TRANSFORMERS = ("dit-xl-2", "pixart-sigma", "flux-dev")
UNETS = ("sd15-unet", "sdxl-unet")
MODELS = TRANSFORMERS + UNETS
FULL_DEPTH = {"dit-xl-2": 28, "pixart-sigma": 28, "flux-dev": 19}
TEXT_TOKENS = {"pixart-sigma": 300, "sd15-unet": 77, "sdxl-unet": 77, "flux-dev": 512}

# published MACs per denoiser call at batch 1: DiT (Peebles & Xie 2023, table 4: 118.6 Gflops for DiT-XL/2 at
# 256 px, counted as multiply-adds), BK-SDM (Kim et al. 2023, table 1: SD-v1.4/1.5 U-Net 339 G MACs at 512 px)
PUBLISHED_GMACS = {"dit-xl-2": 118.6, "sd15-unet": 339.0}

CONFIGS: dict[str, dict[str, Any]] = {
    "dit-xl-2": dict(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
    ),
    "pixart-sigma": dict(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        sample_size=64,
        patch_size=2,
        cross_attention_dim=1152,
        caption_channels=4096,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,
    ),
    "flux-dev": dict(
        patch_size=1,
        in_channels=64,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    "sd15-unet": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sdxl-unet": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}


def build_model(name: str, depth: int | None = None, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``name`` with random weights (seeded), ``depth`` blocks deep (transformers; default full depth)."""
    from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    config = dict(CONFIGS[name])
    if name in TRANSFORMERS:
        config["num_layers"] = depth or FULL_DEPTH[name]
        if name == "flux-dev" and depth:
            config["num_single_layers"] = 2 * depth  # the published ratio, 38 single to 19 double blocks
    cls: Any = {
        "dit-xl-2": DiTTransformer2DModel,
        "pixart-sigma": PixArtTransformer2DModel,
        "flux-dev": FluxTransformer2DModel,
    }.get(name, UNet2DConditionModel)
    return cls(**config).eval().to(dtype)


def make_call(name: str, rows: int, step: int, steps: int, dtype: torch.dtype, device: Any = "cpu") -> Any:
    """(args, kwargs) of one denoiser call of ``rows`` samples at ``step`` of ``steps``, seeded by the step."""
    g = torch.Generator().manual_seed(step)
    t = torch.full((rows,), 999 - step * (1000 // steps))

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    if name == "dit-xl-2":
        labels = torch.randint(0, 1000, (rows,), generator=g)
        return (rand(rows, 4, 32, 32), t.to(device)), {"class_labels": labels.to(device), "return_dict": False}
    if name == "pixart-sigma":
        added = {"resolution": None, "aspect_ratio": None}
        text = rand(rows, TEXT_TOKENS[name], 4096)
        kwargs = {"encoder_hidden_states": text, "timestep": t.to(device), "added_cond_kwargs": added}
        return (rand(rows, 4, 64, 64),), {**kwargs, "return_dict": False}
    if name == "flux-dev":  # 1024 px: 64x64 latent patches of 2x2x16 channels, 512 T5 tokens
        ids = torch.zeros(4096, 3, device=device)
        kwargs = {
            "encoder_hidden_states": rand(rows, TEXT_TOKENS[name], 4096),
            "pooled_projections": rand(rows, 768),
            "timestep": (t / 1000).to(device, dtype),
            "img_ids": ids,
            "txt_ids": torch.zeros(TEXT_TOKENS[name], 3, device=device),
            "guidance": torch.full((rows,), 3.5, device=device, dtype=dtype),
            "return_dict": False,
        }
        return (rand(rows, 4096, 64),), kwargs
    side = CONFIGS[name]["sample_size"]
    text = rand(rows, TEXT_TOKENS[name], CONFIGS[name]["cross_attention_dim"])
    kwargs = {"encoder_hidden_states": text, "return_dict": False}
    if name == "sdxl-unet":
        kwargs["added_cond_kwargs"] = {"text_embeds": rand(rows, 1280), "time_ids": rand(rows, 6)}
    return (rand(rows, 4, side, side), t.to(device)), kwargs


class _Clock:
    """The step tracker counts ``scheduler.step`` calls; nothing else of a scheduler is needed."""

    timesteps: torch.Tensor | None = None

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = torch.arange(steps, 0, -1).float()

    def step(self) -> None:
        return None


class Rig:
    """The smallest "pipeline" ``build_library`` accepts: a denoiser, a clock, one fresh call per step."""

    def __init__(self, name: str, model: torch.nn.Module, rows: int, dtype: torch.dtype) -> None:
        self.name, self.rows, self.dtype = name, rows, dtype
        setattr(self, "unet" if name in UNETS else "transformer", model)
        self.model = model
        self.scheduler = _Clock()

    def run(self, pipe: Rig, steps: int) -> None:
        self.scheduler.set_timesteps(steps)
        device = next(self.model.parameters()).device
        for step in range(steps):
            args, kwargs = make_call(self.name, self.rows, step, steps, self.dtype, device)
            self.model(*args, **kwargs)
            self.scheduler.step()
