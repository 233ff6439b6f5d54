"""Importance of each unit, per stage: magnitude, Taylor, activation (and block scores for depth).

Magnitude and Taylor are torch-pruning's group importances over the coupled tensors; diffes sums
them over the channels of a unit (a head, a GroupNorm group). Taylor uses seeded random output
probes u: |w * d(u . f(x))/dw| estimates how far the denoiser output moves when a unit is removed,
averaged over the stage's recorded calls. Activation (Wanda-like) is the consumer's output energy
per input channel, ||W[:, j]||^2 * E[x_j^2], read off the calibration Gram.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from diffes.errors import ConfigError
from diffes.pruning.calibration import CalibrationSet
from diffes.pruning.graph import UnitGroup
from diffes.pruning.layers import BlockSpec, block_spec

__all__ = ["IMPORTANCE", "unit_scores", "magnitude_scores", "taylor_scores", "activation_scores", "block_scores"]

IMPORTANCE = ("magnitude", "taylor", "activation")


def _per_unit(root_scores: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    return root_scores.double().reshape(group.num_units, group.unit_size).sum(1).cpu()


def magnitude_scores(groups: list[UnitGroup], tp_groups: dict[str, Any]) -> dict[str, torch.Tensor]:
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)
    return {g.name: _per_unit(imp(tp_groups[g.name]), g) for g in groups}


def taylor_scores(
    model: nn.Module,
    groups: list[UnitGroup],
    tp_groups: dict[str, Any],
    calib: CalibrationSet,
    stage: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    imp = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    totals = {g.name: torch.zeros(g.num_units, dtype=torch.float64) for g in groups}
    params = [p for p in model.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        for call in calib.calls[stage]:
            model.zero_grad(set_to_none=False)
            with torch.enable_grad():
                out = calib.run(model, call)
                probe = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
                (out * probe).sum().backward()
            for g in groups:
                totals[g.name] += _per_unit(imp(tp_groups[g.name]), g)
    finally:
        model.zero_grad(set_to_none=True)
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return totals


def activation_scores(
    model: nn.Module, groups: list[UnitGroup], grams: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = {}
    for g in groups:
        consumer: Any = model.get_submodule(g.consumer)
        weight = consumer.weight.detach().double().cpu()
        energy = grams[g.consumer].diagonal()[:-1]  # E[x_j^2]; the bias row is last
        # columns are (in_channel, kh, kw) for a conv, the same order as the Gram's unfolded rows
        per_col = weight.pow(2).sum(0).flatten()
        channel = (per_col * energy).reshape(weight.shape[1], -1).sum(1)
        out[g.name] = _per_unit(channel[g.channels.start : g.channels.stop], g)
    return out


def _change(streams_in: list[Any], streams_out: list[Any]) -> float:
    """||y - x|| / ||x|| over every stream a block updates (a stream it drops, returning None, is left out)."""
    pairs = [(x, y) for x, y in zip(streams_in, streams_out) if x is not None and y is not None]
    moved = sum(float((y - x).double().pow(2).sum()) for x, y in pairs)
    size = sum(float(x.double().pow(2).sum()) for x, _ in pairs)
    return (moved / max(size, 1e-24)) ** 0.5


@torch.no_grad()
def block_scores(model: nn.Module, blocks: list[str], calib: CalibrationSet, stage: int) -> torch.Tensor:
    """Per droppable block, the mean relative change it makes to the streams it updates during the stage
    (the hidden states; for SD3 / Flux blocks also the text stream): what skipping it would undo."""
    change = torch.zeros(len(blocks), dtype=torch.float64)

    def hook_for(i: int, spec: BlockSpec) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            change[i] += _change(spec.inputs(module, args, kwargs), spec.outputs(output))

        return hook

    hooks: list[Callable[[], Any]] = []
    for i, name in enumerate(blocks):
        module = model.get_submodule(name)
        spec = block_spec(module)
        assert spec is not None, f"{name} is not a known block type"
        hooks.append(partial(module.register_forward_hook, hook_for(i, spec), with_kwargs=True))
    calib.replay(model, stage, hooks)
    return change / max(1, len(calib.calls[stage]))


def unit_scores(
    criterion: str,
    model: nn.Module,
    groups: list[UnitGroup],
    tp_groups: dict[str, Any],
    calib: CalibrationSet,
    grams: dict[str, torch.Tensor] | None,
    stage: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    if criterion == "magnitude":
        return magnitude_scores(groups, tp_groups)
    if criterion == "taylor":
        return taylor_scores(model, groups, tp_groups, calib, stage, generator)
    if criterion == "activation":
        assert grams is not None
        return activation_scores(model, groups, grams)
    raise ConfigError("importance", criterion, f"choose one of {', '.join(IMPORTANCE)}")
