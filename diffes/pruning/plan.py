"""PrunePlan: one (stage, level) as data, and the torch-pruning reference it must equal."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from diffes.pruning.graph import PrunableStructure
from diffes.pruning.layers import layer_spec

__all__ = ["PrunePlan", "ModelShapes", "make_plan", "prune_copy", "pruned_indices", "kept_channels"]


@dataclass
class PrunePlan:
    """What one (stage, level) changes in the dense model.

    ``slices``: "module.param" -> (dim, sorted kept indices). ``replacements``: "module.param" -> tensor
    that takes the (sliced) parameter's place (compensated consumers). ``overrides``: module -> {attr: value}.
    ``kept_units``: group -> sorted kept units. ``skipped``: blocks that depth pruning drops.
    """

    stage: int
    level: int
    slices: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    kept_units: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def is_dense(self) -> bool:
        return not (self.slices or self.replacements or self.skipped)

    def nbytes(self) -> int:
        sliced = sum(idx.numel() * idx.element_size() for _, idx in self.slices.values())
        return sliced + sum(t.numel() * t.element_size() for t in self.replacements.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything a plan stores as tensors, under flat safetensors keys."""
        out = {f"kept/{k}": idx for k, (_, idx) in self.slices.items()}
        out.update({f"repl/{k}": t.contiguous() for k, t in self.replacements.items()})
        return out

    def meta(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "level": self.level,
            "dims": {k: d for k, (d, _) in self.slices.items()},
            "overrides": self.overrides,
            "kept_units": self.kept_units,
            "skipped": self.skipped,
        }

    @classmethod
    def from_data(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> PrunePlan:
        dims: dict[str, int] = meta["dims"]
        return cls(
            stage=int(meta["stage"]),
            level=int(meta["level"]),
            slices={k: (int(d), tensors[f"kept/{k}"]) for k, d in dims.items()},
            replacements={k[len("repl/") :]: v for k, v in tensors.items() if k.startswith("repl/")},
            overrides={m: {a: int(v) for a, v in attrs.items()} for m, attrs in meta["overrides"].items()},
            kept_units={g: [int(u) for u in us] for g, us in meta["kept_units"].items()},
            skipped=list(meta["skipped"]),
        )


@dataclass(frozen=True)
class ModelShapes:
    """What plan making needs of the dense model, per member ("module:side"): each tensor it slices
    as (param, dim, size of dim), and the size attributes torch-pruning rewrites, with dense values
    (an int; for a shape tuple such as ``LayerNorm.normalized_shape``, its last entry)."""

    tensors: dict[str, list[tuple[str, int, int]]]
    sizes: dict[str, dict[str, int]]

    @classmethod
    def of(cls, model: nn.Module, structure: PrunableStructure) -> ModelShapes:
        tensors: dict[str, list[tuple[str, int, int]]] = {}
        sizes: dict[str, dict[str, int]] = {}
        for group in structure.groups:
            for m in group.members:
                module = model.get_submodule(m.module)
                spec, key = layer_spec(module), f"{m.module}:{m.side}"
                tensors[key] = [
                    (pname, dim, int(getattr(module, pname).shape[dim]))
                    for pname, dim in spec.tensors(m.side)
                    if getattr(module, pname, None) is not None
                ]
                size = spec.size(m.side)
                sizes[key] = {size.name: size.read(module)} if size else {}
        return cls(tensors, sizes)

    def to_dict(self) -> dict[str, object]:
        return {"tensors": self.tensors, "sizes": self.sizes}

    @classmethod
    def from_dict(cls, d: dict) -> ModelShapes:
        tensors = {k: [(str(p), int(dim), int(n)) for p, dim, n in v] for k, v in d["tensors"].items()}
        return cls(tensors, {k: {a: int(x) for a, x in v.items()} for k, v in d["sizes"].items()})


def pruned_indices(structure: PrunableStructure, kept_units: dict[str, list[int]]) -> dict[str, set[int]]:
    """Per member ("module:side"), the indices it loses over every group: a consumer read by several groups
    (a Flux single block's ``proj_out``) loses the pruned channels of each, in one slice."""
    pruned: dict[str, set[int]] = {}
    for group in structure.groups:
        units = kept_units.get(group.name)
        if units is None or len(units) == group.num_units:
            continue
        kept_roots = set(group.kept_roots(sorted(units)))
        for m in group.members:
            lost = {i for i, r in zip(m.idxs, m.roots) if r not in kept_roots}
            pruned.setdefault(f"{m.module}:{m.side}", set()).update(lost)
    return pruned


def kept_channels(
    shapes: ModelShapes, structure: PrunableStructure, kept_units: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """Consumer -> its sorted kept input channels, for each consumer that loses any (what compensation refits;
    a consumer read by several groups is refit once, for all of them)."""
    pruned = pruned_indices(structure, kept_units)
    out = {}
    for consumer in structure.consumers():
        lost = pruned.get(f"{consumer}:in")
        if lost:
            size = next(n for pname, _, n in shapes.tensors[f"{consumer}:in"] if pname == "weight")
            out[consumer] = torch.tensor([i for i in range(size) if i not in lost], dtype=torch.long)
    return out


def make_plan(
    shapes: ModelShapes,
    structure: PrunableStructure,
    stage: int,
    level: int,
    kept_units: dict[str, list[int]],
    skipped: list[str] | None = None,
) -> PrunePlan:
    """Slices and overrides for keeping ``kept_units`` of each group (groups left out stay whole)."""
    plan = PrunePlan(stage, level, skipped=list(skipped or []))
    for group in structure.groups:
        units = kept_units.get(group.name)
        if units is None or len(units) == group.num_units:
            continue
        plan.kept_units[group.name] = sorted(units)
        if group.count_attr:
            owner, attr = group.count_attr
            plan.overrides.setdefault(owner, {})[attr] = len(units)
    for key, pruned in pruned_indices(structure, kept_units).items():
        module = key.rpartition(":")[0]
        for pname, dim, size in shapes.tensors[key]:
            kept = [i for i in range(size) if i not in pruned]
            plan.slices[f"{module}.{pname}"] = (dim, torch.tensor(kept, dtype=torch.long))
        for attr, dense in shapes.sizes[key].items():
            plan.overrides.setdefault(module, {})[attr] = dense - len(pruned)
    return plan


def prune_copy(model: nn.Module, structure: PrunableStructure, plan: PrunePlan) -> nn.Module:
    """A deep copy pruned by torch-pruning's own pruning functions: the reference a routed model must equal."""
    pruned = copy.deepcopy(model)
    for key, idxs in pruned_indices(structure, plan.kept_units).items():
        name, _, side = key.rpartition(":")
        module = pruned.get_submodule(name)
        layer_spec(module).pruner(side)(module, sorted(idxs))
    for group in structure.groups:
        if group.count_attr and group.name in plan.kept_units:
            owner, attr = group.count_attr
            setattr(pruned.get_submodule(owner), attr, len(plan.kept_units[group.name]))
    for key, tensor in plan.replacements.items():
        module_name, _, pname = key.rpartition(".")
        getattr(pruned.get_submodule(module_name), pname).data = tensor.clone()
    _drop_blocks(pruned, plan.skipped)
    return pruned


def _drop_blocks(model: nn.Module, blocks: list[str]) -> None:
    """Depth pruning on the copy: remove the blocks from their ModuleList."""
    by_parent: dict[str, set[int]] = {}
    for name in blocks:
        parent, _, index = name.rpartition(".")
        by_parent.setdefault(parent, set()).add(int(index))
    for parent, drop in by_parent.items():
        container = model.get_submodule(parent)
        assert isinstance(container, nn.ModuleList)
        kept = [m for i, m in enumerate(container) if i not in drop]
        owner_name, _, attr = parent.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, attr, nn.ModuleList(kept))
