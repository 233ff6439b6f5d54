"""What diffes finds to prune in each diffusers family, what a level costs, and the per-layer-type specs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.normalization import RMSNorm
from tiny_denoisers import Rig

from diffes.errors import UnsupportedModelError
from diffes.pruning import PruningConfig, PruningLibrary, build_library, prune_copy, trace_structure
from diffes.pruning.calibration import first_tensor
from diffes.pruning.cost import module_macs
from diffes.pruning.layers import LAYERS, SizeAttr, layer_spec
from diffes.routing import Router


def _library(rig: Rig, **options: Any) -> PruningLibrary:
    config = PruningConfig(stages=1, steps=2, levels=(0, 0.5), **options)
    return build_library(rig, config, run=rig.run, progress=False)


def _trace(family: str, depth: bool = False) -> Any:
    rig = Rig.of(family)
    args, kwargs = rig.calls(1, seed=0)[0]
    return trace_structure(rig.denoiser, lambda m: first_tensor(m(*args, **kwargs)), depth=depth)[0]


def test_flux_half_width_halves_double_and_single_blocks() -> None:
    rig = Rig.of("flux")
    library = _library(rig, importance="taylor")
    kinds = {(g.name.split(".")[0], g.kind) for g in library.structure.groups}
    assert kinds == {("transformer_blocks", "heads"), ("transformer_blocks", "hidden")} | {
        ("single_transformer_blocks", "heads"),
        ("single_transformer_blocks", "hidden"),
    }
    plan = library.plan(0, 1)
    for block in ("transformer_blocks", "single_transformer_blocks"):
        for i in range(2):
            assert plan.overrides[f"{block}.{i}.attn"]["heads"] == 2  # of 4
    # a single block's proj_out reads [attention ; MLP]: both parts lose half, in one slice, one refit
    assert plan.overrides["single_transformer_blocks.0.proj_out"]["in_features"] == 8 + 32
    assert plan.replacements["single_transformer_blocks.0.proj_out.weight"].shape == (16, 40)
    call = rig.calls(1, seed=3)[0]
    names = [
        "transformer_blocks.0",
        "transformer_blocks.1",
        "single_transformer_blocks.0",
        "single_transformer_blocks.1",
    ]
    pruned = prune_copy(rig.denoiser, library.structure, plan)
    dense_macs = module_macs(rig.denoiser, lambda m: m(*call[0], **call[1]), [*names, ""])
    pruned_macs = module_macs(pruned, lambda m: m(*call[0], **call[1]), [*names, ""])
    ratio = {n: pruned_macs[n] / dense_macs[n] for n in dense_macs}
    # the blocks' adaptive-norm projections (from the time embedding) stay whole
    assert all(0.45 < ratio[n] < 0.56 for n in names), ratio
    assert ratio[""] < 0.6
    assert library.costs[1].macs / library.costs[0].macs == pytest.approx(ratio[""], rel=1e-6)


def test_sd35_qk_norm_keeps_per_head_norms_whole() -> None:
    structure = _trace("sd3-dual")
    heads = {g.name: g for g in structure.groups if g.kind == "heads"}
    assert set(heads) == {"transformer_blocks.0.attn", "transformer_blocks.0.attn2"} | {
        f"transformer_blocks.{i}.attn" for i in (1, 2)
    }
    members = {m.module.rpartition(".")[2] for m in heads["transformer_blocks.0.attn"].members}
    # both streams' projections follow the heads; RMSNorm over head_dim is shared by the heads
    assert members == {"0", "to_add_out", "to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}
    last = {m.module.rpartition(".")[2] for m in heads["transformer_blocks.2.attn"].members}
    assert "to_add_out" not in last  # the last block's text stream is pre-only


def test_depth_units_of_each_family() -> None:
    flux = _trace("flux", depth=True)
    assert flux.anchors == ["transformer_blocks.0"]
    assert flux.blocks == ["transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"]
    sd = _trace("sd", depth=True)
    assert sd.anchors == [] and len(sd.blocks) == 4
    assert all(b.endswith("transformer_blocks.0") and ".attentions." in b for b in sd.blocks)
    with pytest.raises(UnsupportedModelError) as info:
        _trace("unet2d", depth=True)
    assert str(info.value).startswith("axis=depth: UNet2DModel") and "axis=width" in str(info.value)


def test_depth_scores_see_both_streams_of_mmdit_blocks() -> None:
    library = _library(Rig.of("sd3"), axis="depth")
    assert library.structure.blocks == ["transformer_blocks.1", "transformer_blocks.2"]
    assert bool((library.depth_scores[0] > 0).all()) and bool(torch.isfinite(library.depth_scores[0]).all())
    assert library.plan(0, 1).skipped  # 50% of three blocks, one of them an anchor


def test_saved_library_keeps_shared_consumers_and_anchors(tmp_path: Path) -> None:
    library = _library(Rig.of("flux"), axis="depth", importance="magnitude")
    loaded = PruningLibrary.load(library.save(tmp_path / "lib"))
    assert loaded.structure == library.structure and loaded.structure.anchors == ["transformer_blocks.0"]
    assert [g.offset for g in loaded.structure.groups if g.name.endswith("proj_mlp")] == [16, 16]
    assert loaded.plan(0, 1).skipped == library.plan(0, 1).skipped


class _AcrossHeads:
    """A processor that normalizes queries and keys over all heads before splitting them (Lumina, LTX)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        q, k = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(hidden_states))
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, attn.to_v(hidden_states)))
        return attn.to_out[0](F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class _Toy(torch.nn.Module):
    def __init__(self, qk_norm: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj_in = torch.nn.Linear(4, 16)
        self.attn = Attention(16, heads=4, kv_heads=4, dim_head=4, qk_norm=qk_norm, processor=_AcrossHeads())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.proj_in(x))


@pytest.mark.parametrize(
    ("qk_norm", "attr"), [("layer_norm_across_heads", "normalized_shape"), ("rms_norm_across_heads", "dim")]
)
def test_norms_across_heads_shrink_with_the_heads(qk_norm: str, attr: str) -> None:
    rig = Rig(_Toy(qk_norm), lambda g: ((torch.randn(2, 5, 4, generator=g),), {}))
    model, calls = rig.denoiser, rig.calls(2, seed=1)
    dense = copy.deepcopy(model)
    library = _library(rig, importance="magnitude")
    plan = library.plan(0, 1)
    assert plan.overrides["attn.norm_q"] == {attr: 8} and "attn.norm_q.weight" in plan.slices
    router = Router(model, library)
    router.set(plan)
    value = getattr(model.attn.norm_q, attr)
    assert isinstance(value, tuple) and tuple(value) == (8,)  # a shape tuple stays a tuple while routed
    pruned = prune_copy(dense, library.structure, plan)
    with torch.no_grad():
        assert all(torch.equal(model(*a), pruned(*a)) for a, _ in calls)
    router.remove()
    assert getattr(model.attn.norm_q, attr) == getattr(dense.attn.norm_q, attr)


def _instances() -> list[torch.nn.Module]:
    return [
        torch.nn.Linear(6, 5),
        torch.nn.Conv2d(6, 5, 3),
        torch.nn.GroupNorm(3, 6),
        torch.nn.LayerNorm(6),
        torch.nn.RMSNorm(6),
        RMSNorm(6, eps=1e-6, bias=True),
        torch.nn.BatchNorm2d(6),
        torch.nn.Embedding(3, 6),
    ]


@pytest.mark.parametrize("module", _instances(), ids=lambda m: type(m).__name__)
def test_each_layer_spec_slices_what_its_torch_pruning_function_prunes(module: torch.nn.Module) -> None:
    spec = layer_spec(module)
    for side in ("out", "in"):
        size = spec.size(side)
        if size is None or not spec.tensors(side):
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.data = torch.rand_like(tensor)
        pruned = copy.deepcopy(module)
        n = size.read(module)
        spec.pruner(side)(pruned, [0, n - 1])
        kept = torch.arange(1, n - 1)
        for pname, dim in spec.tensors(side):
            dense_t = getattr(module, pname)
            if dense_t is not None:
                assert torch.equal(getattr(pruned, pname), dense_t.index_select(dim, kept)), (side, pname)
        assert getattr(pruned, size.name) == SizeAttr.write(getattr(module, size.name), n - 2)
    assert {s.name for s in LAYERS} >= {"Linear", "Conv2d", "GroupNorm", "LayerNorm", "RMSNorm", "BatchNorm"}


def test_unsliceable_layer_is_a_one_line_error() -> None:
    with pytest.raises(UnsupportedModelError, match=r"^module type=Conv2d: .*LayerSpec"):
        layer_spec(torch.nn.Conv2d(4, 4, 3, groups=4))
