"""What pruning does to each layer type: one frozen spec per type, as torch-pruning keeps one pruner per type.

A ``LayerSpec`` says, for each side of a layer ("out": the channels it produces, "in": the channels it reads),
which parameters and buffers shrink along which dimension, which size attribute is rewritten, and which
torch-pruning function prunes it in the reference copy; for a layer that consumes pruned channels, how its
input is unfolded into rows for the calibration Gram. A ``BlockSpec`` says which streams a residual block
takes and returns, so depth pruning can skip it. A new layer or block type is one new entry here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from diffusers.models.transformers.transformer_sd3 import SD3SingleTransformerBlock
from torch import nn

from diffes.errors import UnsupportedModelError

__all__ = ["SizeAttr", "LayerSpec", "LAYERS", "layer_spec", "BlockSpec", "BLOCKS", "block_spec"]

Pruner = Callable[[nn.Module, Sequence[int]], nn.Module]


@dataclass(frozen=True)
class SizeAttr:
    """A size attribute; ``shape=True`` when it is a shape tuple whose last entry is the pruned size
    (``LayerNorm.normalized_shape``, ``RMSNorm.normalized_shape``, diffusers' ``RMSNorm.dim``).
    Plans store the size as an int either way; ``write`` puts it back into the attribute's own form."""

    name: str
    shape: bool = False

    def read(self, module: nn.Module) -> int:
        value = getattr(module, self.name)
        return int(value[-1]) if self.shape else int(value)

    @staticmethod
    def write(dense: Any, size: int) -> Any:
        """The attribute value for ``size``, in the form of its dense value (int, tuple or torch.Size)."""
        if isinstance(dense, tuple):
            return type(dense)((*dense[:-1], size))
        return size


class RMSNormPruner(tp.pruner.function.BasePruningFunc):  # type: ignore[misc]
    """torch-pruning has no RMSNorm pruner: this one, in its style, for torch's and diffusers' RMSNorm."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        spec = layer_spec(layer)
        assert spec.size_out is not None
        keep = sorted(set(range(spec.size_out.read(layer))) - set(idxs))
        for pname in ("weight", "bias"):
            if getattr(layer, pname, None) is not None:
                setattr(layer, pname, self._prune_parameter_and_grad(getattr(layer, pname), keep, 0))
        attr = spec.size_out.name
        setattr(layer, attr, SizeAttr.write(getattr(layer, attr), len(keep)))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer_spec(layer).size_out.read(layer)  # type: ignore[union-attr]

    get_in_channels = get_out_channels


def _linear_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _conv_rows(module: Any, x: torch.Tensor) -> torch.Tensor:
    padding: Any = module.padding  # diffusers' convolutions use numeric padding
    cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@dataclass(frozen=True)
class LayerSpec:
    """One layer type. ``out``/``inp``: (tensor name, dim) that shrink when its output/input channels go."""

    name: str
    types: tuple[type, ...]
    out: tuple[tuple[str, int], ...]
    inp: tuple[tuple[str, int], ...]
    size_out: SizeAttr | None
    size_in: SizeAttr | None
    prune_out: Pruner | None
    prune_in: Pruner | None
    rows: Callable[[Any, torch.Tensor], torch.Tensor] | None = None  # consumer input -> Gram rows
    accepts: Callable[[Any], bool] = field(default=lambda m: True)

    def tensors(self, side: str) -> tuple[tuple[str, int], ...]:
        return self.out if side == "out" else self.inp

    def size(self, side: str) -> SizeAttr | None:
        return self.size_out if side == "out" else self.size_in

    def pruner(self, side: str) -> Pruner:
        fn = self.prune_out if side == "out" else self.prune_in
        if fn is None:
            raise UnsupportedModelError(f"layer={self.name}: its {side}put channels cannot be pruned")
        return fn


def _norm(
    name: str, types: tuple[type, ...], tensors: tuple[tuple[str, int], ...], size: SizeAttr, fn: Pruner
) -> LayerSpec:
    # a norm has one channel axis: pruning "in" or "out" is the same operation
    return LayerSpec(name, types, tensors, tensors, size, size, fn, fn)


_RMS = RMSNormPruner()
_AFFINE = (("weight", 0), ("bias", 0))

LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec(
        "Linear",
        (nn.Linear,),
        _AFFINE,
        (("weight", 1),),
        SizeAttr("out_features"),
        SizeAttr("in_features"),
        tp.prune_linear_out_channels,
        tp.prune_linear_in_channels,
        rows=_linear_rows,
    ),
    LayerSpec(
        "Conv2d",
        (nn.Conv2d,),
        _AFFINE,
        (("weight", 1),),
        SizeAttr("out_channels"),
        SizeAttr("in_channels"),
        tp.prune_conv_out_channels,
        tp.prune_conv_in_channels,
        rows=_conv_rows,
        accepts=lambda m: m.groups == 1,  # grouped and depthwise convolutions couple channels differently
    ),
    _norm("GroupNorm", (nn.GroupNorm,), _AFFINE, SizeAttr("num_channels"), tp.prune_groupnorm_out_channels),
    _norm(
        "LayerNorm", (nn.LayerNorm,), _AFFINE, SizeAttr("normalized_shape", shape=True), tp.prune_layernorm_out_channels
    ),
    _norm(
        "RMSNorm", (nn.RMSNorm,), (("weight", 0),), SizeAttr("normalized_shape", shape=True), _RMS.prune_out_channels
    ),
    _norm("RMSNorm", (DiffusersRMSNorm,), _AFFINE, SizeAttr("dim", shape=True), _RMS.prune_out_channels),
    _norm(
        "BatchNorm",
        (nn.modules.batchnorm._BatchNorm,),
        (*_AFFINE, ("running_mean", 0), ("running_var", 0)),
        SizeAttr("num_features"),
        tp.prune_batchnorm_out_channels,
    ),
    LayerSpec(
        "Embedding",
        (nn.Embedding,),
        (("weight", 1),),
        (),
        SizeAttr("embedding_dim"),
        None,
        tp.prune_embedding_out_channels,
        None,
    ),
)


def find_layer_spec(module: Any) -> LayerSpec | None:
    return next((s for s in LAYERS if isinstance(module, s.types) and s.accepts(module)), None)


def layer_spec(module: Any) -> LayerSpec:
    """The spec of ``module``'s type; a type without one is a one-line error."""
    spec = find_layer_spec(module)
    if spec is None:
        raise UnsupportedModelError(
            f"module type={type(module).__name__}: diffes cannot slice it when pruning; add a LayerSpec for it "
            f"in diffes/pruning/layers.py or prune a model built from {', '.join(sorted({s.name for s in LAYERS}))}"
        )
    return spec


@dataclass(frozen=True)
class BlockSpec:
    """A residual block depth pruning may skip: ``streams`` are the forward arguments it returns, updated, in
    its return order (one stream: a tensor; several: a tuple). Skipping returns them unchanged."""

    types: tuple[type, ...]
    streams: tuple[str, ...]

    def inputs(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        cls: Any = type(module)
        bound = _signature(cls).bind(module, *args, **kwargs)
        return [bound.arguments.get(s) for s in self.streams]

    def outputs(self, output: Any) -> list[Any]:
        return [output] if len(self.streams) == 1 else list(output)

    def pack(self, streams: list[Any]) -> Any:
        return streams[0] if len(self.streams) == 1 else tuple(streams)


@functools.cache
def _signature(cls: Any) -> inspect.Signature:
    return inspect.signature(cls.forward)  # once per block type: a skipped block binds every call


BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec((BasicTransformerBlock, SD3SingleTransformerBlock), ("hidden_states",)),
    # MMDiT blocks (SD3 joint, Flux double and single) take both streams and return (encoder, image) states
    BlockSpec(
        (JointTransformerBlock, FluxTransformerBlock, FluxSingleTransformerBlock),
        ("encoder_hidden_states", "hidden_states"),
    ),
)


def block_spec(module: Any) -> BlockSpec | None:
    return next((s for s in BLOCKS if isinstance(module, s.types)), None)
