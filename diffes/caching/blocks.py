"""What the cache runtime needs to know about transformer blocks: where they are, how their inputs and
outputs are laid out, and the cheap signals adaptive rules read at the start of a step.

Block layouts come from diffusers' own ``TransformerBlockRegistry`` (which argument is the image stream,
which output index is which stream), so a block type diffusers knows needs no entry here. The one piece of
knowledge per block type that diffusers does not keep, the timestep-modulated input TeaCache reads, is the
``MODULATED_INPUT`` table: one entry per normalisation kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffes.errors import ConfigError

__all__ = ["Block", "Streams", "transformer_blocks", "modulated_input", "BLOCK_LISTS"]

# the attributes holding a transformer's blocks, in the order its forward runs them (Flux: double, then single)
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")

Streams = tuple[torch.Tensor, torch.Tensor | None]  # (image stream, text stream or None)


@dataclass(frozen=True)
class Block:
    """One transformer block and its diffusers layout metadata."""

    name: str
    module: nn.Module
    meta: Any  # diffusers.hooks._helpers.TransformerBlockMetadata

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Streams:
        hidden = self.meta._get_parameter_from_args_kwargs(self.meta.hidden_states_argument_name, args, kwargs)
        encoder = None
        if self.meta.return_encoder_hidden_states_index is not None:
            name = self.meta.encoder_hidden_states_argument_name
            encoder = self.meta._get_parameter_from_args_kwargs(name, args, kwargs)
        return hidden, encoder

    def outputs(self, output: Any) -> Streams:
        if not isinstance(output, tuple):
            return output, None
        encoder_index = self.meta.return_encoder_hidden_states_index
        encoder = output[encoder_index] if encoder_index is not None else None
        return output[self.meta.return_hidden_states_index], encoder

    def pack(self, streams: Streams) -> Any:
        """Streams in this block's own output layout (a tensor, or a tuple for two-stream blocks)."""
        if self.meta.return_encoder_hidden_states_index is None:
            return streams[0]
        out: list[Any] = [None, None]
        out[self.meta.return_hidden_states_index] = streams[0]
        out[self.meta.return_encoder_hidden_states_index] = streams[1]
        return tuple(out)


def transformer_blocks(denoiser: nn.Module) -> list[Block]:
    """The denoiser's transformer blocks in execution order; a one-line error when it has none (UNets)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    blocks = []
    for attr in BLOCK_LISTS:
        for index, module in enumerate(getattr(denoiser, attr, None) or []):
            try:
                meta = TransformerBlockRegistry.get(type(module))
            except ValueError:
                break
            blocks.append(Block(f"{attr}.{index}", module, meta))
    if not blocks:
        raise ConfigError(
            "cache_rule",
            type(denoiser).__name__,
            "block-residual rules need a transformer denoiser; on a UNet use a step-level rule "
            "(interval, mask or magcache with serve=reuse or extrapolate)",
        )
    return blocks


def _ada_norm_zero(block: Any, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    norm = block.norm1
    out = norm(hidden, kwargs.get("timestep"), kwargs.get("class_labels"), hidden_dtype=hidden.dtype)
    return out[0]


def _ada_norm_single(block: Any, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    # PixArt: the block modulates LayerNorm(x) with shift/scale from its table and the model's timestep vector
    timestep = kwargs["timestep"]
    shift, scale = (block.scale_shift_table[None] + timestep.reshape(hidden.shape[0], 6, -1)).chunk(6, dim=1)[:2]
    return block.norm1(hidden) * (1 + scale) + shift


def _ada_norm_emb(block: Any, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    # SD3 and Flux blocks: norm1(x, emb=temb) returns the modulated input first
    return block.norm1(hidden, emb=kwargs["temb"])[0]


ModulatedInput = Callable[[Any, torch.Tensor, dict[str, Any]], torch.Tensor]

MODULATED_INPUT: dict[str, ModulatedInput] = {
    "ada_norm_zero": _ada_norm_zero,
    "ada_norm_single": _ada_norm_single,
    "ada_norm_emb": _ada_norm_emb,
}


def _norm_kind(module: Any) -> str:
    kind = getattr(module, "norm_type", None)
    if kind in MODULATED_INPUT:
        return str(kind)
    if hasattr(module, "norm1") and "emb" in _parameters(module.norm1.forward):
        return "ada_norm_emb"
    raise ConfigError(
        "cache_rule", type(module).__name__, "teacache reads a timestep-modulated block input; use firstblock here"
    )


def _parameters(fn: Callable[..., Any]) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def modulated_input(block: Block, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The first block's timestep-modulated input (TeaCache's signal), computed beside the block's own run."""
    hidden = block.inputs(args, kwargs)[0]
    named = dict(zip(_positional_names(block.module), args)) | kwargs
    return MODULATED_INPUT[_norm_kind(block.module)](block.module, hidden, named)


def check_modulated_input(block: Block) -> None:
    """Fail at attach time, not mid-sampling, when the first block has no modulated input TeaCache can read."""
    _norm_kind(block.module)


def _positional_names(module: nn.Module) -> list[str]:
    import inspect

    return list(inspect.signature(module.forward).parameters)
