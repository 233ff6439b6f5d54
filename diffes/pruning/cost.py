"""Exact cost of a (pruned) denoiser: MACs per call, parameters, and measured latency."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from diffes.pruning.calibration import Call, map_tensors, single_sample

__all__ = ["count_macs", "module_macs", "count_params", "measure_latency", "meta_copy", "on_one_sample"]

T = TypeVar("T")


def _cpu_sdpa_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *a: object, **k: object
) -> int:
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


# torch's counter knows the CUDA attention kernels but not the CPU one.
_EXTRA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@torch.no_grad()
def count_macs(model: nn.Module, call: Callable[[nn.Module], object]) -> int:
    """Multiply-accumulates of one call, counted by torch's FLOP counter (matmuls, convs, attention)."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        call(model)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def module_macs(model: nn.Module, call: Callable[[nn.Module], object], names: list[str]) -> dict[str, int]:
    """Multiply-accumulates of one call spent inside each named submodule ("" is the whole model)."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        call(model)
    counts = counter.get_flop_counts()  # keyed by the module path under the root's class name
    root = type(model).__name__
    return {n: sum(counts.get(f"{root}.{n}" if n else root, {}).values()) // 2 for n in names}


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device: every shape, attribute and hook, no storage (and no copy of the
    weights on the way), for counting what a pruned copy costs without holding one."""
    memo: dict[int, object] = {}
    for t in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def on_one_sample(model: nn.Module, call: Call, fn: Callable[[nn.Module, Call], T]) -> T:
    """``fn(model, call)`` cut to the call's first sample, on a meta-device copy (no memory, no compute); a model
    whose forward needs real values (one that reads a tensor's data) gets the real model instead."""
    one = single_sample(call)
    try:
        return fn(meta_copy(model), map_tensors(one, lambda t: t.to("meta")))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return fn(model, one)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def measure_latency(call: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``call()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronized)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
