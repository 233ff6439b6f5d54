"""Tiny random-config instances of real diffusers classes, built offline for the tests."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)

TEXT_DIM = 16


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)  # diffusers initializes weights from the global generator


def tiny_vae(**config: object) -> AutoencoderKL:
    _seeded(1)
    return AutoencoderKL(
        **config,  # type: ignore[arg-type]
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


# ---- complete text-to-image pipelines: offline tokenizers and tiny text encoders, savable with save_pretrained ----


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet, which CLIP's byte-level BPE works on."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return [chr(b) for b in bs] + [chr(256 + i) for i in range(len(extra))]


def clip_tokenizer(max_length: int = 16) -> object:
    """A CLIP tokenizer from a generated vocabulary (every byte, alone and word-final) and no merges."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _byte_chars():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer() -> object:
    """A T5 tokenizer from a tokenizers Unigram model over lowercase letters and digits (no sentencepiece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789\u2581"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def clip_encoder(hidden: int, projection: int | None = None, seed: int = 2) -> object:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seeded(seed)
    config = CLIPTextConfig(
        vocab_size=2 + 2 * 256,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=projection or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def t5_encoder(d_model: int = TEXT_DIM, seed: int = 3) -> object:
    from transformers import T5Config, T5EncoderModel

    _seeded(seed)
    config = T5Config(
        vocab_size=3 + 37,
        d_model=d_model,
        d_kv=4,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    return T5EncoderModel(config).eval()


def tiny_sd3_transformer() -> SD3Transformer2DModel:
    _seeded()
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=16,
        qk_norm="rms_norm",
    ).eval()


def tiny_flux_transformer(guidance_embeds: bool = True) -> FluxTransformer2DModel:
    _seeded()
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=8,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    ).eval()


def full_pixart_pipeline(sigma: bool = False) -> object:
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(
        tokenizer=t5_tokenizer(),
        text_encoder=t5_encoder(),
        vae=tiny_vae(),
        transformer=tiny_pixart(),
        scheduler=DDIMScheduler(clip_sample=False),
    )


def full_sd_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=clip_encoder(TEXT_DIM),
        tokenizer=clip_tokenizer(),
        unet=tiny_unet_condition(),
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def full_sdxl_pipeline() -> StableDiffusionXLPipeline:
    # the UNet reads both encoders' hidden states side by side (8 + 8) and the second one's pooled projection
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=clip_encoder(8),
        text_encoder_2=clip_encoder(8, projection=TEXT_DIM, seed=4),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=tiny_unet_condition(sdxl=True),
        scheduler=DDIMScheduler(clip_sample=False),
    )


def full_sd3_pipeline() -> StableDiffusion3Pipeline:
    return StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(scaling_factor=1.5, shift_factor=0.1),
        text_encoder=clip_encoder(8, projection=8),
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_encoder(8, projection=8, seed=4),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(),
        tokenizer_3=t5_tokenizer(),
    )


def full_flux_pipeline(guidance_embeds: bool = True) -> FluxPipeline:
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64)
    return FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(scaling_factor=0.5, shift_factor=0.1),
        text_encoder=clip_encoder(8),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(),
        tokenizer_2=t5_tokenizer(),
        transformer=tiny_flux_transformer(guidance_embeds),
    )


PROMPTS = ["a digit 3", "the number seven"]

# family -> (builder, conditions): every pipeline family the sampling adapters support (Flux at 8 x 8 pixels
# through FAMILY_SIZE; its default size comes from the full-size model's 128-latent default)
FAMILIES = {
    "zoo": (lambda: zoo_pipeline("dit-digits"), [1, 2]),
    "dit": (tiny_dit_pipeline, [1, 2]),
    "pixart-alpha": (full_pixart_pipeline, PROMPTS),
    "pixart-sigma": (lambda: full_pixart_pipeline(sigma=True), PROMPTS),
    "sd": (full_sd_pipeline, PROMPTS),
    "sdxl": (full_sdxl_pipeline, PROMPTS),
    "sd3": (full_sd3_pipeline, PROMPTS),
    "flux": (full_flux_pipeline, PROMPTS),
}

FAMILY_SIZE = {"flux": (8, 8)}
