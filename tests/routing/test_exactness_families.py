"""Every diffusers family's denoiser, routed in place, computes what torch-pruning's pruned copy computes:
bit for bit on CPU float32, for a width plan and a depth plan, in every routing mode."""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict

import pytest
import torch
from tiny_denoisers import DENOISERS, Rig

from diffes.pruning import PruningConfig, PruningLibrary, build_library, prune_copy
from diffes.pruning.calibration import first_tensor, map_tensors
from diffes.routing import Router

FAMILIES = ["dit", "pixart", "sd", "sdxl", "sd3", "sd3-dual", "flux"]


def _library(rig: Rig, **options: object) -> PruningLibrary:
    config = PruningConfig(stages=2, steps=2, levels=(0, 0.5), **options)  # type: ignore[arg-type]
    return build_library(rig, config, run=rig.run, progress=False)


def _uncompensated(library: PruningLibrary) -> PruningLibrary:
    """The same scores and structure without compensation: what zero-copy routing serves."""
    config = dataclasses.replace(library.config, compensate=False)
    return dataclasses.replace(library, config=config, grams=[], _cache=OrderedDict(), pinned={})


@torch.no_grad()
def _same(model: torch.nn.Module, reference: torch.nn.Module, calls: list) -> bool:
    return all(torch.equal(first_tensor(model(*a, **k)), first_tensor(reference(*a, **k))) for a, k in calls)


def _routed_equals(
    model: torch.nn.Module, library: PruningLibrary, mode: str, dense: torch.nn.Module, calls: list
) -> None:
    router = Router(model, library, mode=mode)
    plan = library.plan(1, 1)
    router.set(plan)
    reference = prune_copy(dense, library.structure, plan) if mode == "gather" else router.reference(dense, plan)
    assert _same(model, reference, calls), f"{mode} routing differs from the pruned copy"
    assert not _same(model, dense, calls), "the plan changes the output"
    router.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_width_plan_routes_exactly(family: str) -> None:
    rig = Rig.of(family)
    model, calls = rig.denoiser, rig.calls(2, seed=7)
    dense = copy.deepcopy(model)
    library = _library(rig, importance="taylor", nested=True)
    plan = library.plan(1, 1)
    assert set(plan.kept_units) == {g.name for g in library.structure.groups}, "a 50% level prunes every group"
    assert plan.replacements and library.costs[1].macs < 0.75 * library.costs[0].macs
    _routed_equals(model, library, "gather", dense, calls)  # torch-pruning's channel order
    _routed_equals(model, library, "bank", dense, calls)  # nested order, compensated tensors banked
    _routed_equals(model, _uncompensated(library), "zero-copy", dense, calls)
    assert _same(model, dense, calls) and all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values())
    ), "remove() restores the dense model bit for bit"


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_plan_routes_exactly(family: str) -> None:
    rig = Rig.of(family)
    model, calls = rig.denoiser, rig.calls(2, seed=7)
    dense = copy.deepcopy(model)
    library = _library(rig, axis="depth")
    plan = library.plan(1, 1)
    assert plan.skipped and not set(plan.skipped) & set(library.structure.anchors)
    assert library.costs[1].macs < library.costs[0].macs
    _routed_equals(model, library, "gather", dense, calls)
    assert _same(model, dense, calls)


def _half_rig(family: str, dtype: torch.dtype) -> Rig:
    """A family's tiny denoiser and calls in ``dtype`` (floating inputs cast; labels and timesteps kept)."""
    build, make_call = DENOISERS[family]

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return Rig(
        build().to(dtype), lambda g: map_tensors(make_call(g), cast), "unet" if "unet" in family else "transformer"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["dit", "pixart", "unet2d"])
def test_half_precision_plan_routes_exactly(family: str, dtype: torch.dtype) -> None:
    """Plans are solved in float64 and cast once: a half-precision model routes bit for bit like its
    torch-pruning copy in the same dtype (float16 runs on the CPU for these layers too)."""
    rig = _half_rig(family, dtype)
    model, calls = rig.denoiser, rig.calls(2, seed=7)
    dense = copy.deepcopy(model)
    library = _library(rig, importance="taylor", nested=True)
    assert all(g.dtype == torch.float64 for stage in library.grams for g in stage.values())
    assert all(s.dtype == torch.float64 and bool(torch.isfinite(s).all()) for d in library.scores for s in d.values())
    plan = library.plan(1, 1)
    assert plan.replacements and all(t.dtype == dtype for t in plan.replacements.values())
    _routed_equals(model, library, "gather", dense, calls)
    _routed_equals(model, library, "bank", dense, calls)
    _routed_equals(model, _uncompensated(library), "zero-copy", dense, calls)
    with torch.no_grad():
        out = first_tensor(model(*calls[0][0], **calls[0][1]))
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values()))
