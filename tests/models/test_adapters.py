"""Sampling adapters: each family's dense run equals an unmodified pipe(...) call bit for bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny import FAMILIES, FAMILY_SIZE, full_flux_pipeline, tiny_unet2d_pipeline

from diffes.errors import ConfigError, UnsupportedModelError
from diffes.models.adapters import Guidance, adapter_for

GUIDANCES = {
    "flux": [Guidance("distilled", 3.5), Guidance("cfg", 2.0), Guidance("none", 1.0)],
}
DEFAULT_GUIDANCES = [Guidance("cfg", 3.0), Guidance("none", 1.0)]


def _adapter(family: str) -> Any:
    build, _ = FAMILIES[family]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    return adapter_for(pipe, *FAMILY_SIZE.get(family, (None, None)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dense_adapter_run_equals_pipe_call(family: str) -> None:
    adapter = _adapter(family)
    conditions = FAMILIES[family][1]
    for guidance in GUIDANCES.get(family, DEFAULT_GUIDANCES):
        reference = adapter.pipe_call(conditions, 3, guidance, torch.Generator().manual_seed(7))
        cond = adapter.encode(conditions, guidance)
        generator = torch.Generator().manual_seed(7)
        latents = adapter.initial_latents(len(conditions), generator)
        images = adapter.decode(adapter.sample(cond, latents, 3, guidance, generator=generator))
        assert images.shape == reference.shape
        assert torch.equal(images, reference), (family, guidance)
        assert float(images.min()) >= 0 and float(images.max()) <= 1
        # conditions are plain CPU tensors, one row per sample: the run directory stores them as safetensors
        assert all(t.device.type == "cpu" and t.shape[0] == len(conditions) for t in cond.values())


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_timesteps_are_the_pipelines_own(family: str) -> None:
    adapter = _adapter(family)
    seen: list[torch.Tensor] = []
    guidance = GUIDANCES.get(family, DEFAULT_GUIDANCES)[0]

    def record(pipe: Any, step: int, t: torch.Tensor, kwargs: dict) -> dict:
        seen.append(t)
        return kwargs

    adapter.pipe.set_progress_bar_config(disable=True)
    scale = guidance.scale
    adapter.pipe(
        FAMILIES[family][1][:1],
        num_inference_steps=4,
        guidance_scale=scale,
        output_type="latent",
        height=adapter.height,
        width=adapter.width,
        callback_on_step_end=record,
    )
    assert torch.equal(adapter.timesteps(4), torch.stack(seen).cpu())


def test_unknown_pipeline_class_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedModelError, match=r"pipeline=DDIMPipeline: not supported; .*FluxPipeline"):
        adapter_for(tiny_unet2d_pipeline())


def test_conditions_of_the_wrong_kind_are_refused() -> None:
    dit = _adapter("dit")
    with pytest.raises(ConfigError, match="classes"):
        dit.encode([1000], Guidance())
    with pytest.raises(ConfigError, match="negative_prompt"):
        dit.encode([1], Guidance(), negative_prompt="blurry")
    with pytest.raises(ConfigError, match="guidance_kind='distilled'"):
        dit.encode([1], Guidance("distilled", 3.0))
    schnell = adapter_for(full_flux_pipeline(guidance_embeds=False), 8, 8)
    with pytest.raises(ConfigError, match="guidance_kind='distilled': this Flux transformer has no guidance embedding"):
        schnell.encode(["a 3"], Guidance("distilled", 3.0))


def test_the_torch_free_zoo_table_matches_the_zoo() -> None:
    """diffes.families answers before torch is imported; it must agree with the zoo it stands in for."""
    from diffes.families import JUDGE, ZOO_GENERATORS
    from diffes.models.zoo import CLASS_GENERATORS, TEXT_GENERATORS, ZOO

    assert set(ZOO) == {*ZOO_GENERATORS, JUDGE}
    assert {n for n, c in ZOO_GENERATORS.items() if c == "classes"} == set(CLASS_GENERATORS)
    assert {n for n, c in ZOO_GENERATORS.items() if c == "prompts"} == set(TEXT_GENERATORS)
