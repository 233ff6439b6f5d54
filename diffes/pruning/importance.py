"""Importance of each unit, per stage: magnitude, Taylor, activation (and block scores for depth).

Magnitude and Taylor are torch-pruning's group importances over the coupled tensors; diffes sums
them over the channels of a unit (a head, a GroupNorm group). Taylor uses seeded random output
probes u: |w * d(u . f(x))/dw| estimates how far the denoiser output moves when a unit is removed,
summed over the stage's calls as calibration streams them. Activation (Wanda-like) is the consumer's output
energy per input channel, ||W[:, j]||^2 * E[x_j^2], read off the calibration Gram. A float16 / bfloat16 model
runs its own forward and backward; the products and sums that score it are formed in float32 or wider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.hooks import RemovableHandle

from diffes.errors import ConfigError, UnsupportedModelError
from diffes.pruning.graph import UnitGroup
from diffes.pruning.layers import BlockSpec, block_spec

__all__ = ["IMPORTANCE", "width_scores", "magnitude_scores", "TaylorScores", "activation_scores", "BlockChanges"]

IMPORTANCE = ("magnitude", "taylor", "activation")


def _per_unit(root_scores: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    return root_scores.double().reshape(group.num_units, group.unit_size).sum(1).cpu()


HALF = (torch.float16, torch.bfloat16)


@contextmanager
def _in_float32(tp_group: Any) -> Iterator[None]:
    """The group's half-precision weights and gradients read as float32 while torch-pruning's criteria score
    them: products and sums of a float16 / bfloat16 model are formed in float32 (no underflow to zero, no
    overflow). A float32 or float64 model's tensors are read as they are."""
    saved = []
    for dep, _ in tp_group:
        for p in dep.target.module.parameters(recurse=False):
            if p.dtype in HALF:
                saved.append((p, p.data, p.grad))
                p.data = p.data.float()  # the parameter is float32 now, so it accepts a float32 gradient
                p.grad = p.grad.float() if p.grad is not None else None
    try:
        yield
    finally:
        for p, data, grad in saved:
            p.data = data
            p.grad = grad


def _score(imp: Any, tp_group: Any, group: UnitGroup) -> torch.Tensor:
    with _in_float32(tp_group):
        return _per_unit(imp(tp_group), group)


def magnitude_scores(groups: list[UnitGroup], tp_groups: dict[str, Any]) -> dict[str, torch.Tensor]:
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)
    return {g.name: _score(imp, tp_groups[g.name], g) for g in groups}


class TaylorScores:
    """Taylor importance summed over calls, one call at a time (``add``), as calibration streams them."""

    def __init__(
        self, model: nn.Module, groups: list[UnitGroup], tp_groups: dict[str, Any], generator: torch.Generator
    ) -> None:
        self.model, self.groups, self.tp_groups, self.generator = model, groups, tp_groups, generator
        self.imp = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
        self.reset()

    def reset(self) -> None:
        self.totals = {g.name: torch.zeros(g.num_units, dtype=torch.float64) for g in self.groups}

    def add(self, forward: Callable[[], torch.Tensor]) -> None:
        """Score one call: ``forward()`` runs the model on it and returns its output."""
        params = list(self.model.parameters())
        was = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            self.model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                out = forward()
                probe = torch.randn(out.shape, generator=self.generator).to(out.device, out.dtype)
                (out * probe).sum().backward()
            for g in self.groups:
                self.totals[g.name] += _score(self.imp, self.tp_groups[g.name], g)
        finally:
            self.model.zero_grad(set_to_none=True)
            for p, w in zip(params, was):
                p.requires_grad_(w)

    def result(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The stage's totals (and a fresh start for the next stage)."""
        totals = self.totals
        bad = [name for name, t in totals.items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise UnsupportedModelError(
                f"importance=taylor: gradients of the {dtype} model overflow in {bad[0]}; "
                f"calibrate in bfloat16 or float32, or use importance=magnitude"
            )
        self.reset()
        return totals


def activation_scores(
    model: nn.Module, groups: list[UnitGroup], squares: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per unit, sum over its consumer columns of E[x_j^2] ||W[:, j]||^2 (``squares``: each consumer's mean
    squared inputs, the diagonal of its Gram)."""
    out = {}
    for g in groups:
        consumer: Any = model.get_submodule(g.consumer)
        weight = consumer.weight.detach().double().cpu()
        energy = squares[g.consumer][:-1]  # E[x_j^2]; the bias row is last
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


class BlockChanges:
    """Per droppable block, the relative change it makes to the streams it updates (the hidden states; for SD3
    / Flux blocks also the text stream), summed over the calls made while ``on``: what skipping it would
    undo. ``hooks()`` registers one forward hook per block; ``result(calls)`` is the stage's mean."""

    def __init__(self, model: nn.Module, blocks: list[str]) -> None:
        self.model, self.blocks = model, blocks
        self.on = False
        self.change = torch.zeros(len(blocks), dtype=torch.float64)

    def hooks(self) -> list[Callable[[], RemovableHandle]]:
        hooks: list[Callable[[], RemovableHandle]] = []
        for i, name in enumerate(self.blocks):
            module = self.model.get_submodule(name)
            spec = block_spec(module)
            assert spec is not None, f"{name} is not a known block type"
            hooks.append(partial(module.register_forward_hook, self._hook(i, spec), with_kwargs=True))
        return hooks

    def _hook(self, i: int, spec: BlockSpec) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if self.on:
                self.change[i] += _change(spec.inputs(module, args, kwargs), spec.outputs(output))

        return hook

    def result(self, calls: int) -> torch.Tensor:
        mean = self.change / max(1, calls)
        self.change = torch.zeros(len(self.blocks), dtype=torch.float64)
        return mean


def width_scores(
    criterion: str,
    model: nn.Module,
    groups: list[UnitGroup],
    tp_groups: dict[str, Any],
    squares: dict[str, torch.Tensor] | None,
    taylor: TaylorScores | None,
) -> dict[str, torch.Tensor]:
    """A stage's unit scores, once its calls have been streamed (``taylor`` holds their Taylor totals,
    ``squares`` the consumers' mean squared inputs)."""
    if criterion == "magnitude":
        return magnitude_scores(groups, tp_groups)
    if criterion == "taylor":
        assert taylor is not None
        return taylor.result(next(model.parameters()).dtype)
    if criterion == "activation":
        assert squares is not None
        return activation_scores(model, groups, squares)
    raise ConfigError("importance", criterion, f"choose one of {', '.join(IMPORTANCE)}")
