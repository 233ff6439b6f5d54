"""Prunable structure of a denoiser, traced once with torch-pruning's dependency graph.

A *unit group* is what one pruning decision removes together: a head of a diffusers ``Attention``,
a hidden unit of a ``FeedForward``, or a GroupNorm group of a ``ResnetBlock2D``'s inner channels.
Its root is the consumer layer's input channels (``to_out``, the MLP down projection, ``conv2``);
torch-pruning's dependency graph finds every tensor coupled to those channels. The result is data:
for each coupled module, which of its indices follow which root channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from diffes.errors import UnsupportedModelError

__all__ = ["Member", "UnitGroup", "PrunableStructure", "trace_structure", "member_params", "TP_PRUNERS"]


@dataclass(frozen=True)
class Member:
    """One module coupled to a unit group: ``idxs[k]`` of its in/out dimension follows root channel ``roots[k]``."""

    module: str
    side: str  # "out" or "in"
    idxs: tuple[int, ...]
    roots: tuple[int, ...]


@dataclass(frozen=True)
class UnitGroup:
    name: str
    kind: str  # "heads", "hidden" or "channels"
    consumer: str
    unit_size: int
    num_units: int
    members: tuple[Member, ...]
    # attribute that counts units on a module (Attention.heads, GroupNorm.num_groups), if any
    count_attr: tuple[str, str] | None = None

    def kept_roots(self, kept_units: list[int]) -> list[int]:
        return [u * self.unit_size + i for u in kept_units for i in range(self.unit_size)]


@dataclass
class PrunableStructure:
    groups: list[UnitGroup] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # transformer blocks that depth pruning may drop

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [asdict(g) for g in self.groups], "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunableStructure:
        groups = []
        for g in d["groups"]:
            members = tuple(Member(m["module"], m["side"], tuple(m["idxs"]), tuple(m["roots"])) for m in g["members"])
            count = tuple(g["count_attr"]) if g.get("count_attr") else None
            groups.append(
                UnitGroup(g["name"], g["kind"], g["consumer"], g["unit_size"], g["num_units"], members, count)  # type: ignore[arg-type]
            )
        return cls(groups, list(d.get("blocks", [])))


# The parameters (and buffers) a torch-pruning handler slices, by module type and side.
def member_params(module: nn.Module, side: str) -> list[tuple[str, int]]:
    if isinstance(module, nn.Linear):
        return [("weight", 0), ("bias", 0)] if side == "out" else [("weight", 1)]
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return [("weight", 0), ("bias", 0)] if side == "out" else [("weight", 1)]
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return [("weight", 0), ("bias", 0)]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return [("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)]
    if isinstance(module, nn.Embedding):
        return [("weight", 1)]
    raise UnsupportedModelError(
        f"module type {type(module).__name__}: diffes cannot slice it when pruning; "
        f"exclude it or prune a model built from Linear/Conv2d/norm layers"
    )


# The size attribute each handler rewrites, as torch-pruning's pruners do.
SIZE_ATTRS: dict[type, dict[str, str]] = {
    nn.Linear: {"out": "out_features", "in": "in_features"},
    nn.Conv2d: {"out": "out_channels", "in": "in_channels"},
    nn.GroupNorm: {"out": "num_channels", "in": "num_channels"},
    nn.Embedding: {"out": "embedding_dim", "in": "embedding_dim"},
}

TP_PRUNERS: dict[tuple[type, str], Callable[[nn.Module, list[int]], nn.Module]] = {
    (nn.Linear, "out"): tp.prune_linear_out_channels,
    (nn.Linear, "in"): tp.prune_linear_in_channels,
    (nn.Conv2d, "out"): tp.prune_conv_out_channels,
    (nn.Conv2d, "in"): tp.prune_conv_in_channels,
    (nn.GroupNorm, "out"): tp.prune_groupnorm_out_channels,
    (nn.GroupNorm, "in"): tp.prune_groupnorm_out_channels,
    (nn.LayerNorm, "out"): tp.prune_layernorm_out_channels,
    (nn.LayerNorm, "in"): tp.prune_layernorm_out_channels,
    (nn.Embedding, "out"): tp.prune_embedding_out_channels,
}


def _candidates(model: nn.Module) -> list[tuple[str, str, str, int, tuple[str, str] | None]]:
    """(name, kind, consumer, unit_size, count_attr) for each structure diffes knows how to prune."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    found: list[tuple[str, str, str, int, tuple[str, str] | None]] = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, Attention) and isinstance(m.to_out[0], nn.Linear):
            inner = m.to_out[0].in_features
            if inner % m.heads == 0 and m.heads > 1:
                found.append((name, "heads", f"{prefix}to_out.0", inner // m.heads, (name, "heads")))
        elif isinstance(m, FeedForward):
            last = [i for i, layer in enumerate(m.net) if isinstance(layer, nn.Linear)]
            if last:
                found.append((name, "hidden", f"{prefix}net.{last[-1]}", 1, None))
        elif isinstance(m, ResnetBlock2D) and isinstance(m.norm2, nn.GroupNorm):
            size = m.conv2.in_channels // m.norm2.num_groups
            if m.norm2.num_groups > 1:
                found.append((name, "channels", f"{prefix}conv2", size, (f"{prefix}norm2", "num_groups")))
    return found


def _transformer_blocks(model: nn.Module) -> list[str]:
    """Blocks depth pruning may drop: every block of a ``transformer_blocks`` list but the first."""
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        return []
    return [f"transformer_blocks.{i}" for i in range(1, len(blocks))]


def trace_structure(
    model: nn.Module, example_call: Callable[[nn.Module], torch.Tensor], depth: bool = False
) -> tuple[PrunableStructure, dict[str, Any]]:
    """Trace ``model`` once (``example_call(model)`` returns its output tensor).

    Returns the unit groups as data, and torch-pruning's live groups by name (for its importance criteria).
    """
    candidates = _candidates(model)
    if not candidates:
        raise UnsupportedModelError(
            f"model type {type(model).__name__}: no prunable structure found; diffes prunes diffusers "
            f"Attention heads, FeedForward units and ResnetBlock2D channels"
        )
    names = {m: n for n, m in model.named_modules()}
    params = list(model.parameters())
    frozen = [p for p in params if not p.requires_grad]
    try:  # torch-pruning traces through autograd, so parameters must require grad while it does
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=None, forward_fn=lambda m, _: example_call(m), verbose=False
            )
    finally:
        for p in frozen:
            p.requires_grad_(False)
    groups, tp_groups = [], {}
    for name, kind, consumer_name, unit_size, count_attr in candidates:
        consumer: Any = model.get_submodule(consumer_name)
        handler = tp.prune_linear_in_channels if isinstance(consumer, nn.Linear) else tp.prune_conv_in_channels
        channels = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
        tp_group = graph.get_pruning_group(consumer, handler, list(range(channels)))
        members = []
        for item in tp_group:
            module = item.dep.target.module
            if not any(True for _ in module.parameters(recurse=False)):
                continue  # reshapes and elementwise ops hold nothing to slice
            side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            member_params(module, side)  # raises for types we cannot slice
            members.append(Member(names[module], side, tuple(int(i) for i in item.idxs), tuple(item.root_idxs)))
        groups.append(
            UnitGroup(name, kind, consumer_name, unit_size, channels // unit_size, tuple(members), count_attr)
        )
        tp_groups[name] = tp_group
    return PrunableStructure(groups, _transformer_blocks(model) if depth else []), tp_groups
