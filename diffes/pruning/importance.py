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
        out[g.name] = _per_unit(channel, g)
    return out


@torch.no_grad()
def block_scores(model: nn.Module, blocks: list[str], calib: CalibrationSet, stage: int) -> torch.Tensor:
    """Per droppable block, the mean relative change it makes to the hidden states during the stage."""
    change = torch.zeros(len(blocks), dtype=torch.float64)

    def hook_for(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            change[i] += float((y - x).norm() / x.norm().clamp_min(1e-12))

        return hook

    modules = [model.get_submodule(n) for n in blocks]
    calib.replay(
        model, stage, [partial(m.register_forward_hook, hook_for(i), with_kwargs=True) for i, m in enumerate(modules)]
    )
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
