"""Tiny random-config instances of real diffusers classes, built offline for the tests."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)

TEXT_DIM = 16


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)  # diffusers initializes weights from the global generator


def tiny_vae() -> AutoencoderKL:
    _seeded(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


def tiny_dit() -> DiTTransformer2DModel:
    _seeded()
    return DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()


def tiny_pixart() -> PixArtTransformer2DModel:
    _seeded()
    return PixArtTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=32,
        caption_channels=TEXT_DIM,
        norm_num_groups=4,
    ).eval()


def tiny_unet2d() -> UNet2DModel:
    _seeded()
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=4,
    ).eval()


def tiny_unet_condition(sdxl: bool = False) -> UNet2DConditionModel:
    _seeded()
    extra = {}
    if sdxl:
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=TEXT_DIM + 6 * 4,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=4,
        **extra,
    ).eval()


def tiny_dit_pipeline() -> DiTPipeline:
    return DiTPipeline(transformer=tiny_dit(), vae=tiny_vae(), scheduler=DDIMScheduler(clip_sample=False))


def tiny_unet2d_pipeline() -> DDIMPipeline:
    return DDIMPipeline(unet=tiny_unet2d(), scheduler=DDIMScheduler(clip_sample=False))


def tiny_pixart_pipeline() -> PixArtAlphaPipeline:
    return PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny_vae(),
        transformer=tiny_pixart(),
        scheduler=DDIMScheduler(clip_sample=False),
    )


def tiny_sd_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=tiny_unet_condition(),
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=tiny_unet_condition(sdxl=True),
        scheduler=DDIMScheduler(clip_sample=False),
    )


def text_embeds(batch: int = 1, tokens: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, tokens, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def run_tiny(pipe: object, steps: int, guidance: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Run a tiny pipeline end to end with prompt embeddings in place of a text encoder."""
    g = torch.Generator().manual_seed(seed)
    kind = type(pipe).__name__
    common = dict(num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="pt")
    if kind == "DDIMPipeline":
        return pipe(batch_size=2, generator=g, num_inference_steps=steps, output_type="np").images  # type: ignore[operator]
    if kind == "DiTPipeline":
        return pipe(class_labels=[1, 2], **common).images  # type: ignore[operator]
    emb, neg = text_embeds(1, seed=seed), text_embeds(1, seed=seed + 1)
    if kind == "PixArtAlphaPipeline":
        mask = torch.ones(1, emb.shape[1], dtype=torch.long)
        return pipe(  # type: ignore[operator]
            prompt_embeds=emb,
            prompt_attention_mask=mask,
            negative_prompt_embeds=neg,
            negative_prompt_attention_mask=mask,
            negative_prompt=None,
            height=16,
            width=16,
            use_resolution_binning=False,
            **common,
        ).images
    if kind == "StableDiffusionXLPipeline":
        pooled = torch.randn(1, TEXT_DIM, generator=torch.Generator().manual_seed(seed + 2))
        return pipe(  # type: ignore[operator]
            prompt_embeds=emb,
            negative_prompt_embeds=neg,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=pooled * 0,
            height=16,
            width=16,
            **common,
        ).images
    return pipe(prompt_embeds=emb, negative_prompt_embeds=neg, height=16, width=16, **common).images  # type: ignore[operator]


def zoo_pipeline(name: str, trained: bool = False) -> object:
    """A zoo pipeline; untrained (random init) unless ``trained``, which loads the shipped weights."""
    from diffes.models.pipeline import ZooPipeline
    from diffes.models.zoo import build_model, load_model, sampling_scheduler

    _seeded()
    model = load_model(name) if trained else build_model(name).eval()
    kind = "transformer" if name.startswith("dit") else "unet"
    pipe = ZooPipeline(sampling_scheduler(), **{kind: model})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def runner_for(pipe: object):  # type: ignore[no-untyped-def]
    """The calibration run for a pipeline: zoo pipelines have their own; tiny ones use ``run_tiny``."""
    if type(pipe).__name__ == "ZooPipeline":
        return None
    return lambda p, steps: run_tiny(p, steps)


PIPELINES = {
    "dit-digits": lambda: zoo_pipeline("dit-digits"),
    "unet-digits": lambda: zoo_pipeline("unet-digits"),
    "DiTTransformer2DModel": tiny_dit_pipeline,
    "PixArtTransformer2DModel": tiny_pixart_pipeline,
    "UNet2DModel": tiny_unet2d_pipeline,
    "UNet2DConditionModel": tiny_sd_pipeline,
}
