"""Router: one shared denoiser whose weights are swapped in place to a plan, and back.

Three storage modes:
- ``zero-copy``: nested plans. The dense channels are permuted once (output-equivalent) so every
  plan keeps a prefix; a plan's tensors are then views of the dense storage.
- ``bank``: as zero-copy, plus the plan's replacement tensors (compensated consumers), prepared once
  per (stage, level) and swapped in by reference.
- ``gather``: non-nested plans. ``index_select`` into buffers allocated once, at the switch only.
Attribute overrides (``heads``, ``num_groups``, sizes) and dropped blocks are applied with the tensors.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from diffes.errors import ConfigError, UnsupportedModelError
from diffes.pruning.graph import PrunableStructure
from diffes.pruning.layers import BlockSpec, SizeAttr, block_spec
from diffes.pruning.library import PruningLibrary
from diffes.pruning.plan import PrunePlan, prune_copy

__all__ = ["Router", "MODES", "ROUTER_MARK"]

MODES = ("auto", "zero-copy", "bank", "gather")
SKIP_HOOK = "diffes-skip-block"
ROUTER_MARK = "_diffes_router"


def _ranked_positions(idxs: tuple[int, ...], roots: tuple[int, ...], rank: dict[int, int]) -> dict[int, int]:
    """New position -> old index, sorting each chunk of a member by the rank of its root.

    A member may hold several indices per root (GEGLU's value and gate halves); the k-th index of each
    root forms chunk k, and a chunk is only reordered within the positions it already occupies.
    """
    seen: dict[int, int] = {}
    chunks: dict[int, list[tuple[int, int]]] = {}
    for idx, root in zip(idxs, roots):
        k = seen.get(root, 0)
        seen[root] = k + 1
        chunks.setdefault(k, []).append((rank[root], idx))
    moves = {}
    for members in chunks.values():
        positions = sorted(idx for _, idx in members)
        for position, (_, idx) in zip(positions, sorted(members)):
            moves[position] = idx
    return moves


class SkipBlockHook(ModelHook):  # type: ignore[misc]
    """Makes a residual block return its input streams while ``active`` (depth pruning without editing the
    model), in the structure the block returns: the hidden states, or (encoder, hidden) for SD3 / Flux."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.active = False

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.active:
            return self.spec.pack(self.spec.inputs(module, args, kwargs))
        return self.fn_ref.original_forward(*args, **kwargs)


@dataclass
class _Table:
    """Everything ``set`` assigns for one plan, prepared once, keyed so a switch touches only what differs."""

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    gathers: dict[str, tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    attrs: dict[tuple[str, str], tuple[nn.Module, Any]] = field(default_factory=dict)
    skipped: list[SkipBlockHook] = field(default_factory=list)
    nbytes: int = 0

    @property
    def keys(self) -> set[str]:
        return self.tensors.keys() | self.gathers.keys()


_DENSE = _Table()  # the dense model sets nothing


class Router:
    """Routes ``model`` (the library's dense denoiser) to any plan of ``library`` in place.

    ``cache_mb`` bounds the prepared tables (their banked replacements) kept for switching back: the least
    recently used go first, never the active one. ``None`` keeps every table (a served schedule's few)."""

    def __init__(
        self, model: nn.Module, library: PruningLibrary, mode: str = "auto", cache_mb: float | None = None
    ) -> None:
        if mode not in MODES:
            raise ConfigError("mode", mode, f"choose one of {', '.join(MODES)}")
        if mode == "auto":
            mode = ("bank" if library.config.compensate else "zero-copy") if library.config.nested else "gather"
        if mode in ("zero-copy", "bank") and not library.config.nested:
            raise ConfigError("mode", mode, "zero-copy and bank routing need a nested library (prune --nested)")
        if mode == "zero-copy" and library.config.compensate:
            raise ConfigError(
                "mode", mode, "compensated plans hold new tensors: use bank, or a --no-compensate library"
            )
        if ROUTER_MARK in model.__dict__:
            raise ConfigError("model", type(model).__name__, "a router is already attached; remove() it first")
        self.model, self.library, self.mode, self.cache_mb = model, library, mode, cache_mb
        self.params = self._touched_tensors()
        self.dense = {k: t.data for k, t in self.params.items()}
        self.dense_attrs = self._dense_attrs()
        self.positions: dict[str, tuple[int, torch.Tensor]] = {}  # key -> (dim, old index at each new position)
        if mode in ("zero-copy", "bank"):
            self._permute()
        self.buffers: dict[str, torch.Tensor] = {}
        self.skips = self._skip_hooks()
        self.tables: OrderedDict[tuple[int, int], _Table] = OrderedDict()
        self.current: tuple[int, int] | None = None
        self._active = _DENSE
        model.__dict__[ROUTER_MARK] = self  # the model is no longer plain dense: exports must refuse it

    # ---- setup ----

    def _touched_tensors(self) -> dict[str, torch.Tensor]:
        keys = {f"{k.split(':')[0]}.{p}" for k, ts in self.library.shapes.tensors.items() for p, _, _ in ts}
        keys |= {f"{g.consumer}.{p}" for g in self.library.structure.groups for p in ("weight", "bias")}
        out = {}
        for key in sorted(keys):
            module_name, _, pname = key.rpartition(".")
            tensor = getattr(self.model.get_submodule(module_name), pname, None)
            if tensor is not None:
                out[key] = tensor
        return out

    def _dense_attrs(self) -> dict[tuple[str, str], tuple[nn.Module, Any]]:
        """(module name, attribute) -> (module, dense value): modules looked up once, not at every switch."""
        names = [(key.split(":")[0], attr) for key, sizes in self.library.shapes.sizes.items() for attr in sizes]
        names += [(g.count_attr[0], g.count_attr[1]) for g in self.library.structure.groups if g.count_attr]
        attrs = {}
        for module_name, attr in names:
            module = self.model.get_submodule(module_name)
            if attr not in module.__dict__:
                raise UnsupportedModelError(f"attribute {type(module).__name__}.{attr}: not a plain attribute")
            attrs[(module_name, attr)] = (module, module.__dict__[attr])
        return attrs

    def _skip_hooks(self) -> dict[str, SkipBlockHook]:
        hooks = {}
        for name in self.library.structure.blocks:
            block = self.model.get_submodule(name)
            spec = block_spec(block)
            if spec is None:
                raise UnsupportedModelError(f"block={name}: {type(block).__name__} has no BlockSpec; cannot skip it")
            hook = SkipBlockHook(spec)
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, SKIP_HOOK)
            hooks[name] = hook
        return hooks

    @torch.no_grad()
    def _permute(self) -> None:
        """Reorder each group's channels by the nested unit order, so plans keep prefixes. A tensor read by
        several groups (a Flux single block's ``proj_out``) gathers every group's moves, then permutes once."""
        for g in self.library.structure.groups:
            order = self.library.unit_order(0, g.name).tolist()
            rank = {root: i for i, root in enumerate(g.kept_roots(order))}
            for m in g.members:
                new_order = _ranked_positions(m.idxs, m.roots, rank)
                for pname, dim, size in self.library.shapes.tensors[f"{m.module}:{m.side}"]:
                    key = f"{m.module}.{pname}"
                    full = self.positions[key][1] if key in self.positions else torch.arange(size)
                    full[list(new_order)] = torch.tensor(list(new_order.values()))
                    self.positions[key] = (dim, full)
        for key, (dim, full) in self.positions.items():
            self.dense[key] = self.dense[key].index_select(dim, full.to(self.dense[key].device))
            self.params[key].data = self.dense[key]

    # ---- tables ----

    def _layout(self, key: str, dim: int, kept: torch.Tensor) -> torch.Tensor:
        """Where the kept original indices sit in the (possibly permuted) dense tensor, in routed order."""
        if key not in self.positions:
            return kept
        _, old_at = self.positions[key]
        new_pos = torch.empty_like(old_at)
        new_pos[old_at] = torch.arange(len(old_at))
        return torch.sort(new_pos[kept]).values

    def _reorder(self, key: str, dim: int, kept: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """A replacement is stored in sorted original order; put it in the routed order."""
        if key not in self.positions:
            return tensor
        _, old_at = self.positions[key]
        new_pos = torch.empty_like(old_at)
        new_pos[old_at] = torch.arange(len(old_at))
        return tensor.index_select(dim, torch.argsort(new_pos[kept]).to(tensor.device)).contiguous()

    def _buffer(self, key: str, shape: torch.Size) -> torch.Tensor:
        dense = self.dense[key]
        if key not in self.buffers:
            self.buffers[key] = torch.empty(dense.numel(), dtype=dense.dtype, device=dense.device)
        return self.buffers[key][: shape.numel()].view(shape)

    def _table(self, plan: PrunePlan) -> _Table:
        table = _Table()
        for key, (dim, kept) in plan.slices.items():
            if key in plan.replacements:
                continue
            dense = self.dense[key]
            pos = self._layout(key, dim, kept).to(dense.device)
            if len(pos) and bool((pos == torch.arange(len(pos), device=dense.device)).all()):
                table.tensors[key] = (self.params[key], dense.narrow(dim, 0, len(pos)))
            else:
                shape = list(dense.shape)
                shape[dim] = len(pos)
                table.gathers[key] = (self.params[key], dense, dim, pos, self._buffer(key, torch.Size(shape)))
        for key, tensor in plan.replacements.items():
            dense = self.dense[key]
            if key in plan.slices:
                dim, kept = plan.slices[key]
                tensor = self._reorder(key, dim, kept, tensor)
            tensor = tensor.to(dense.device, dense.dtype)
            table.tensors[key] = (self.params[key], tensor)
            table.nbytes += tensor.numel() * tensor.element_size()
        for module_name, attrs in plan.overrides.items():
            for attr, value in attrs.items():
                module, dense_value = self.dense_attrs[(module_name, attr)]
                # plans store sizes as ints; a shape tuple (LayerNorm.normalized_shape) takes it as its last entry
                table.attrs[(module_name, attr)] = (module, SizeAttr.write(dense_value, value))
        table.skipped = [self.skips[name] for name in plan.skipped]
        return table

    # ---- switching ----

    @torch.no_grad()
    def set(self, plan: PrunePlan) -> None:
        """Route to ``plan`` (from this router's library)."""
        key = (plan.stage, plan.level)
        if key not in self.tables:
            self.tables[key] = self._table(plan)
        self._apply(self.tables[key])
        self.current = key
        self._evict()

    def set_level(self, stage: int, level: int) -> None:
        """Route to the library's plan for (stage, level); a no-op if already there."""
        if self.current == (stage, level):
            return
        if (stage, level) in self.tables:
            self.tables.move_to_end((stage, level))
            self._apply(self.tables[(stage, level)])
            self.current = (stage, level)
        else:
            self.set(self.library.plan(stage, level))

    def prefetch(self, stage: int, level: int) -> None:
        """Announce the next switch: a plan with no table here starts reading from disk while this one runs."""
        if (stage, level) != self.current and (stage, level) not in self.tables:
            self.library.prefetch(stage, level)

    def _evict(self) -> None:
        if self.cache_mb is None:
            return
        budget = self.cache_mb * 2**20
        while len(self.tables) > 1 and sum(t.nbytes for t in self.tables.values()) > budget:
            oldest = next(iter(self.tables))
            if oldest == self.current:
                self.tables.move_to_end(oldest)
                continue
            del self.tables[oldest]

    @torch.no_grad()
    def _apply(self, table: _Table) -> None:
        """Switch from the active table: undo only what the new one leaves alone, then assign the new one."""
        old = self._active
        for key in old.keys - table.keys:
            self.params[key].data = self.dense[key]
        # size attributes (heads, in_features, num_groups, ...) are plain ints in the instance dict; writing
        # there skips nn.Module.__setattr__, which was three quarters of a switch
        for name in old.attrs.keys() - table.attrs.keys():
            module, value = self.dense_attrs[name]
            module.__dict__[name[1]] = value
        for hook in old.skipped:
            hook.active = False
        for param, tensor in table.tensors.values():
            param.data = tensor
        for param, dense, dim, pos, buffer in table.gathers.values():
            torch.index_select(dense, dim, pos, out=buffer)
            param.data = buffer
        for (_, attr), (module, value) in table.attrs.items():
            module.__dict__[attr] = value
        for hook in table.skipped:
            hook.active = True
        self._active = table

    def _restore(self) -> None:
        for key, param in self.params.items():
            param.data = self.dense[key]
        for (_, attr), (module, value) in self.dense_attrs.items():
            module.__dict__[attr] = value
        for hook in self.skips.values():
            hook.active = False
        self._active = _DENSE

    def reset(self) -> None:
        """Back to the full dense model (in the router's channel order)."""
        self._restore()
        self.current = None

    def forget(self) -> None:
        """Drop prepared tables (and their banked tensors)."""
        self.tables.clear()

    def extra_bytes(self) -> int:
        """Memory the router holds beyond the dense model: gather buffers and indices, banked replacements,
        and the permutation of zero-copy and bank modes."""
        size = lambda t: t.numel() * t.element_size()  # noqa: E731
        buffers = sum(size(b) for b in self.buffers.values())
        indices = sum(size(g[3]) for t in self.tables.values() for g in t.gathers.values())
        permutation = sum(size(old_at) for _, old_at in self.positions.values())
        return buffers + indices + permutation + sum(t.nbytes for t in self.tables.values())

    @torch.no_grad()
    def reference(self, original: nn.Module, plan: PrunePlan) -> nn.Module:
        """torch-pruning's pruned copy of ``original`` (the dense model before routing), in this router's
        channel order: what ``set(plan)`` must equal bit for bit. For verification; it copies the model."""
        model = copy.deepcopy(original)
        for key, (dim, old_at) in self.positions.items():
            module_name, _, pname = key.rpartition(".")
            tensor = getattr(model.get_submodule(module_name), pname)
            tensor.data = tensor.data.index_select(dim, old_at.to(tensor.device))
        groups = []
        for g in self.library.structure.groups:
            members = []
            for m in g.members:
                moved = [k for k in self.positions if k.rpartition(".")[0] == m.module]
                idxs = m.idxs
                if moved:
                    old_at = self.positions[moved[0]][1]
                    new_pos = torch.empty_like(old_at)
                    new_pos[old_at] = torch.arange(len(old_at))
                    idxs = tuple(int(new_pos[i]) for i in m.idxs)
                members.append(dataclasses.replace(m, idxs=idxs))
            groups.append(dataclasses.replace(g, members=tuple(members)))
        replacements = {}
        for key, tensor in plan.replacements.items():
            if key in plan.slices:
                dim, kept = plan.slices[key]
                tensor = self._reorder(key, dim, kept, tensor)
            replacements[key] = tensor
        routed_plan = dataclasses.replace(plan, replacements=replacements)
        structure = PrunableStructure(groups, self.library.structure.blocks)
        return prune_copy(model, structure, routed_plan)

    @torch.no_grad()
    def remove(self) -> None:
        """Restore the original model bit-exactly (un-permute) and detach the hooks."""
        self._restore()
        for key, (dim, old_at) in self.positions.items():
            inverse = torch.empty_like(old_at)
            inverse[old_at] = torch.arange(len(old_at))
            self.dense[key] = self.dense[key].index_select(dim, inverse.to(self.dense[key].device))
            self.params[key].data = self.dense[key]
        self.positions.clear()
        for name in self.skips:
            HookRegistry.check_if_exists_or_initialize(self.model.get_submodule(name)).remove_hook(
                SKIP_HOOK, recurse=False
            )
        self.skips.clear()
        self.tables.clear()
        self.current = None
        self.model.__dict__.pop(ROUTER_MARK, None)
