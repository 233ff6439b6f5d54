"""Prunable structure of a denoiser, as data: unit groups (width) and droppable blocks (depth).

A *unit group* is what one pruning decision removes together: a head of an attention, a hidden unit of an
MLP, or a GroupNorm group of a ``ResnetBlock2D``'s inner channels. Its root is a range of one consumer
layer's input channels (``to_out``, the MLP down projection, ``conv2``, or one part of a projection that
reads a concatenation: a Flux single block's ``proj_out`` reads [attention heads ; MLP units], two groups).
Its members are the tensors coupled to those channels: for each, which of its indices follow which root.

Where channels flow through plain channel ops (MLP units, ResNet channels), torch-pruning's dependency
graph finds the members. Attention heads come from the attention's known projections instead, the way
torch-pruning's own MultiheadAttention pruner knows its projections: torch-pruning 1.6 maps a concat only
along dim 1, so it reads SD3's and Flux's joint attention (text and image tokens concatenated along the
sequence) as a channel concat, passes a Flux single block's [attention ; MLP] concat (dim 2) through
unmapped, and ties a per-head query/key norm (RMSNorm over head_dim) to every channel. Every group is
checked before use: each member covers every root channel, within its own size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from diffes.errors import UnsupportedModelError
from diffes.pruning.layers import block_spec, find_layer_spec, layer_spec

__all__ = ["Member", "UnitGroup", "PrunableStructure", "trace_structure", "tp_group", "depth_units"]


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
    offset: int = 0  # the group's first input channel of its consumer (a consumer may read several groups)

    @property
    def channels(self) -> range:
        return range(self.offset, self.offset + self.num_units * self.unit_size)

    def kept_roots(self, kept_units: list[int]) -> list[int]:
        return [self.offset + u * self.unit_size + i for u in kept_units for i in range(self.unit_size)]


@dataclass
class PrunableStructure:
    groups: list[UnitGroup] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # blocks that depth pruning may drop
    anchors: list[str] = field(default_factory=list)  # depth units counted in a level's fraction, never dropped

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [asdict(g) for g in self.groups], "blocks": list(self.blocks), "anchors": self.anchors}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunableStructure:
        groups = []
        for g in d["groups"]:
            members = tuple(Member(m["module"], m["side"], tuple(m["idxs"]), tuple(m["roots"])) for m in g["members"])
            count = tuple(g["count_attr"]) if g.get("count_attr") else None
            args = (g["name"], g["kind"], g["consumer"], g["unit_size"], g["num_units"], members, count)
            groups.append(UnitGroup(*args, g.get("offset", 0)))  # type: ignore[arg-type]
        return cls(groups, list(d.get("blocks", [])), list(d.get("anchors", [])))

    def consumers(self) -> dict[str, list[UnitGroup]]:
        """Consumer -> the groups it reads, in structure order."""
        out: dict[str, list[UnitGroup]] = {}
        for g in self.groups:
            out.setdefault(g.consumer, []).append(g)
        return out


@dataclass(frozen=True)
class _Candidate:
    """A unit group before its members are known (``members`` None: ask torch-pruning's graph)."""

    name: str
    kind: str
    consumer: str
    unit_size: int
    num_units: int
    count_attr: tuple[str, str] | None = None
    offset: int = 0
    members: tuple[Member, ...] | None = None

    @property
    def channels(self) -> range:
        return range(self.offset, self.offset + self.num_units * self.unit_size)


def _whole(module: str, side: str, size: int, offset: int = 0) -> Member:
    """A member whose every index follows the root channel ``offset + index``."""
    return Member(module, side, tuple(range(size)), tuple(range(offset, offset + size)))


_QKV = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
_QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def _head_members(attn: Any, prefix: str) -> list[Member] | None:
    """The producing side of an attention's heads: query/key/value projections of both streams, and query/key
    norms that span all heads (a norm over head_dim is shared by every head and stays whole). None when a
    projection or norm has another width (grouped-query attention, an unknown norm): no head pruning."""
    inner, heads = attn.to_q.out_features, int(attn.heads)
    if heads < 2 or inner % heads:
        return None
    members = []
    for pname in _QKV:
        layer = getattr(attn, pname, None)
        if layer is None:
            continue
        if not isinstance(layer, nn.Linear) or layer.out_features != inner:
            return None
        members.append(_whole(f"{prefix}{pname}", "out", inner))
    for pname in _QK_NORMS:
        norm: Any = getattr(attn, pname, None)
        spec = find_layer_spec(norm) if norm is not None else None
        size = spec.size_out.read(norm) if spec is not None and spec.size_out is not None else None
        if norm is None or size == inner // heads or (spec is None and not any(True for _ in norm.parameters())):
            continue
        if size != inner:
            return None
        members.append(_whole(f"{prefix}{pname}", "out", inner))
    return members


def _attention(name: str, attn: Any) -> list[_Candidate]:
    to_out = getattr(attn, "to_out", None)
    if to_out is None or not isinstance(to_out[0], nn.Linear):
        return []  # a pre-only attention (Flux single block): its block's finder handles it
    prefix = f"{name}." if name else ""
    inner = attn.to_q.out_features
    heads = _head_members(attn, prefix)
    if heads is None or to_out[0].in_features != inner:
        return []
    consumers = [_whole(f"{prefix}to_out.0", "in", inner)]
    add_out = getattr(attn, "to_add_out", None)
    if isinstance(add_out, nn.Linear):  # joint attention: the text stream's output reads the same heads
        if add_out.in_features != inner:
            return []
        consumers.append(_whole(f"{prefix}to_add_out", "in", inner))
    count = inner // attn.heads
    return [_Candidate(name, "heads", f"{prefix}to_out.0", count, attn.heads, (name, "heads"), 0, (*consumers, *heads))]


def _flux_single(name: str, block: Any) -> list[_Candidate]:
    """``proj_out`` reads [attention output ; MLP units]: two unit groups, one consumer, two channel ranges."""
    attn, consumer = block.attn, f"{name}.proj_out"
    inner, mlp = attn.to_q.out_features, block.proj_mlp.out_features
    if block.proj_out.in_features != inner + mlp:
        return []
    found = []
    heads = _head_members(attn, f"{name}.attn.")  # the heads come first in proj_out
    if heads is not None:
        members = (_whole(consumer, "in", inner), *heads)
        size = inner // attn.heads
        found.append(
            _Candidate(f"{name}.attn", "heads", consumer, size, attn.heads, (f"{name}.attn", "heads"), 0, members)
        )
    mlp_channels = tuple(range(inner, inner + mlp))
    mlp_members = (Member(consumer, "in", mlp_channels, mlp_channels), _whole(f"{name}.proj_mlp", "out", mlp, inner))
    found.append(_Candidate(f"{name}.proj_mlp", "hidden", consumer, 1, mlp, None, inner, mlp_members))
    return found


def _feed_forward(name: str, ff: Any) -> list[_Candidate]:
    last = [i for i, layer in enumerate(ff.net) if isinstance(layer, nn.Linear)]
    if not last:
        return []
    consumer = f"{name}.net.{last[-1]}"
    return [_Candidate(name, "hidden", consumer, 1, ff.net[last[-1]].in_features)]


def _resnet(name: str, block: Any) -> list[_Candidate]:
    if not isinstance(block.norm2, nn.GroupNorm) or block.norm2.num_groups < 2:
        return []
    groups, channels = block.norm2.num_groups, block.conv2.in_channels
    return [_Candidate(name, "channels", f"{name}.conv2", channels // groups, groups, (f"{name}.norm2", "num_groups"))]


def _finders() -> list[tuple[tuple[type, ...], Callable[[str, Any], list[_Candidate]]]]:
    from diffusers.models.attention import AttentionModuleMixin, FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    return [
        ((Attention, AttentionModuleMixin), _attention),
        ((FluxSingleTransformerBlock,), _flux_single),
        ((FeedForward,), _feed_forward),
        ((ResnetBlock2D,), _resnet),
    ]


def _candidates(model: nn.Module) -> list[_Candidate]:
    finders = _finders()
    found: list[_Candidate] = []
    for name, module in model.named_modules():
        for types, find in finders:
            if isinstance(module, types):
                found += find(name, module)
    return found


def _dependency_graph(model: nn.Module, example_call: Callable[[nn.Module], torch.Tensor]) -> Any:
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:  # torch-pruning traces through autograd, so parameters must require grad while it does
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=None, forward_fn=lambda m, _: example_call(m), verbose=False
            )
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _traced_members(graph: Any, model: nn.Module, cand: _Candidate) -> tuple[Member, ...]:
    """The members torch-pruning's graph couples to ``cand``'s channels of its consumer."""
    names = {m: n for n, m in model.named_modules()}
    owners = {id(p): n.rpartition(".")[0] for n, p in model.named_parameters()}
    consumer = model.get_submodule(cand.consumer)
    tp_group = graph.get_pruning_group(consumer, layer_spec(consumer).pruner("in"), list(cand.channels))
    members: dict[tuple[str, str], Member] = {}
    for item in tp_group:
        target = item.dep.target.module
        if isinstance(target, nn.Parameter):  # torch-pruning traces a norm's weight as a bare parameter
            key = (owners[id(target)], "out")
        elif find_layer_spec(target) is not None or any(True for _ in target.parameters(recurse=False)):
            key = (names[target], "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in")
        else:
            continue  # reshapes and elementwise ops hold nothing to slice
        idxs = tuple(int(i) for i in item.idxs)
        members.setdefault(key, Member(*key, idxs, tuple(int(r) for r in item.root_idxs)))
    return tuple(members.values())


def _check(model: nn.Module, cand: _Candidate, members: tuple[Member, ...]) -> None:
    """Every member must follow every root channel once per chunk, with indices inside its own size."""
    roots = set(cand.channels)
    for m in members:
        module = model.get_submodule(m.module)
        size_attr = layer_spec(module).size(m.side)  # raises for a type diffes cannot slice
        size = size_attr.read(module) if size_attr is not None else None
        in_range = size is None or all(0 <= i < size for i in m.idxs)
        if set(m.roots) != roots or len(set(m.idxs)) != len(m.idxs) or not in_range:
            raise UnsupportedModelError(
                f"group={cand.name}: torch-pruning couples {m.module} ({m.side}) inconsistently with "
                f"{cand.consumer}; add a finder for this block type in diffes/pruning/graph.py"
            )


def tp_group(model: nn.Module, group: UnitGroup) -> Any:
    """torch-pruning's Group of ``group``'s members (consumer first, roots counted from the group's first
    channel), so torch-pruning's importance criteria score exactly the tensors a plan slices."""
    out = tp.dependency.Group()
    for m in group.members:
        module = model.get_submodule(m.module)
        fn = layer_spec(module).pruner(m.side)
        node = tp.dependency.Node(module, None, m.module)
        pairs = sorted(zip(m.idxs, m.roots))  # torch-pruning's Taylor importance sorts idxs in place
        out.add_dep(tp.dependency.Dependency(fn, fn, node, node), [i for i, _ in pairs])
        out[len(out) - 1].root_idxs = [r - group.offset for _, r in pairs]
    return out


DEPTH_LISTS = ("transformer_blocks", "single_transformer_blocks")


def depth_units(model: nn.Module) -> tuple[list[str], list[str]]:
    """(droppable blocks, anchors): every known residual block of a ``transformer_blocks`` or
    ``single_transformer_blocks`` list, top-level (DiT, PixArt, SD3, Flux) or nested (a UNet's
    ``Transformer2DModel``s). The first top-level block reads the embedded input, so it is an anchor: it
    counts toward a level's fraction but is never dropped. A UNet's transformer blocks have none: each sits
    inside a residual ``Transformer2DModel`` whose projections stay."""
    units = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] in DEPTH_LISTS:
            units += [f"{name}.{i}" for i, block in enumerate(module) if block_spec(block) is not None]
    anchors = [u for u in units if u.count(".") == 1][:1]
    return [u for u in units if u not in anchors], anchors


def trace_structure(
    model: nn.Module, example_call: Callable[[nn.Module], torch.Tensor], depth: bool = False
) -> tuple[PrunableStructure, dict[str, Any]]:
    """Trace ``model`` once (``example_call(model)`` returns its output tensor).

    Returns the unit groups as data, and torch-pruning groups of their members by name (for its importance
    criteria). With ``depth``, also the blocks depth pruning may drop (a model without any is an error).
    """
    candidates = _candidates(model)
    if not candidates:
        raise UnsupportedModelError(
            f"model={type(model).__name__}: no prunable structure found; diffes prunes diffusers "
            f"attention heads, FeedForward units and ResnetBlock2D channels"
        )
    blocks, anchors = depth_units(model) if depth else ([], [])
    if depth and not blocks:
        raise UnsupportedModelError(
            f"axis=depth: {type(model).__name__} has no transformer block diffes can drop; prune it with axis=width"
        )
    graph = _dependency_graph(model, example_call) if any(c.members is None for c in candidates) else None
    groups, tp_groups = [], {}
    for cand in candidates:
        members = cand.members if cand.members is not None else _traced_members(graph, model, cand)
        _check(model, cand, members)
        group = UnitGroup(
            cand.name, cand.kind, cand.consumer, cand.unit_size, cand.num_units, members, cand.count_attr, cand.offset
        )
        groups.append(group)
        tp_groups[group.name] = tp_group(model, group)
    return PrunableStructure(groups, blocks, anchors), tp_groups
