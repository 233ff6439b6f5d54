"""PrunePlan: one (stage, level) as data, and the torch-pruning reference it must equal."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from diffes.pruning.graph import SIZE_ATTRS, TP_PRUNERS, PrunableStructure, member_params

__all__ = ["PrunePlan", "ModelShapes", "make_plan", "prune_copy"]


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
    as (param, dim, size of dim), and the size attributes torch-pruning rewrites, with dense values."""

    tensors: dict[str, list[tuple[str, int, int]]]
    sizes: dict[str, dict[str, int]]

    @classmethod
    def of(cls, model: nn.Module, structure: PrunableStructure) -> ModelShapes:
        tensors: dict[str, list[tuple[str, int, int]]] = {}
        sizes: dict[str, dict[str, int]] = {}
        for group in structure.groups:
            for m in group.members:
                module = model.get_submodule(m.module)
                key = f"{m.module}:{m.side}"
                tensors[key] = [
                    (pname, dim, int(getattr(module, pname).shape[dim]))
                    for pname, dim in member_params(module, m.side)
                    if getattr(module, pname, None) is not None
                ]
                attr = _size_attr(module, m.side)
                sizes[key] = {attr: int(getattr(module, attr))} if attr else {}
        return cls(tensors, sizes)

    def to_dict(self) -> dict[str, object]:
        return {"tensors": self.tensors, "sizes": self.sizes}

    @classmethod
    def from_dict(cls, d: dict) -> ModelShapes:
        tensors = {k: [(str(p), int(dim), int(n)) for p, dim, n in v] for k, v in d["tensors"].items()}
        return cls(tensors, {k: {a: int(x) for a, x in v.items()} for k, v in d["sizes"].items()})


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
        kept_roots = set(group.kept_roots(sorted(units)))
        for member in group.members:
            pruned = {i for i, r in zip(member.idxs, member.roots) if r not in kept_roots}
            key = f"{member.module}:{member.side}"
            for pname, dim, size in shapes.tensors[key]:
                kept = [i for i in range(size) if i not in pruned]
                plan.slices[f"{member.module}.{pname}"] = (dim, torch.tensor(kept, dtype=torch.long))
            for attr, dense in shapes.sizes[key].items():
                plan.overrides.setdefault(member.module, {})[attr] = dense - len(pruned)
        if group.count_attr:
            owner, attr = group.count_attr
            plan.overrides.setdefault(owner, {})[attr] = len(units)
    return plan


def _size_attr(module: nn.Module, side: str) -> str | None:
    for cls, attrs in SIZE_ATTRS.items():
        if isinstance(module, cls):
            return attrs[side]
    return None


def prune_copy(model: nn.Module, structure: PrunableStructure, plan: PrunePlan) -> nn.Module:
    """A deep copy pruned by torch-pruning's own pruning functions: the reference a routed model must equal."""
    pruned = copy.deepcopy(model)
    for group in structure.groups:
        units = plan.kept_units.get(group.name)
        if units is None:
            continue
        kept_roots = set(group.kept_roots(units))
        for member in group.members:
            module = pruned.get_submodule(member.module)
            idxs = sorted({i for i, r in zip(member.idxs, member.roots) if r not in kept_roots})
            fn = next(f for (cls, side), f in TP_PRUNERS.items() if isinstance(module, cls) and side == member.side)
            fn(module, idxs)
        if group.count_attr:
            owner, attr = group.count_attr
            setattr(pruned.get_submodule(owner), attr, len(units))
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
