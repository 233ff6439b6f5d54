"""SODA-style sensitivity: per sampling step and per transformer block, how much the model output moves when
that block alone is cached (it reuses its residual from the previous step) or pruned (it is skipped).

Measured along the dense trajectory: at every step the full forward is the reference, and each block is
perturbed in turn with everything else exact, so the numbers say where a step or a stage is fragile. They
seed the two searches: per-step weights for the caching DP (``diffes.caching.cem``) and a per-stage
allocation of pruning levels for the search's initial population (``sensitivity_levels``, which lives with the
search's operators: ``diffes.search.operators.sensitivity_genome``; a run measures it with ``sensitivity_seeds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffes.caching.blocks import Block, transformer_blocks
from diffes.models.steps import clone_scheduler
from diffes.pruning.calibration import first_tensor
from diffes.search.operators import sensitivity_levels  # the allotment is pure search logic; kept importable here

__all__ = ["Sensitivity", "measure_sensitivity", "sensitivity_levels"]


@dataclass(frozen=True)
class Sensitivity:
    """``cached[t, b]`` / ``pruned[t, b]``: relative L2 change of the output at step t (row 0 is 0: nothing to
    reuse at the first step for ``cached``)."""

    blocks: tuple[str, ...]
    cached: torch.Tensor
    pruned: torch.Tensor

    def step_weights(self) -> tuple[float, ...]:
        """Per step, how much caching there costs (mean over blocks), scaled to mean 1: weights for the DP."""
        per_step = self.cached.mean(1)
        mean = float(per_step.mean())
        return tuple(float(w) / mean if mean > 0 else 1.0 for w in per_step)

    def stage_sensitivity(self, stage_steps: Sequence[range]) -> list[float]:
        """Per stage, the mean error of pruning a block at its steps."""
        return [float(self.pruned[list(r)].mean()) if len(r) else 0.0 for r in stage_steps]

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "cached": self.cached.tolist(), "pruned": self.pruned.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(tuple(d["blocks"]), torch.tensor(d["cached"]), torch.tensor(d["pruned"]))


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


class _Probe:
    """Forward hooks on the blocks: record each block's residual, or replace one block's output."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.mode: tuple[str, int] | None = None  # ("cached" | "pruned", block index); None: record
        self.residuals: list[Any] = [None] * len(blocks)
        self.previous: list[Any] = [None] * len(blocks)
        self.handles = [b.module.register_forward_hook(self._hook(i), with_kwargs=True) for i, b in enumerate(blocks)]

    def _hook(self, index: int) -> Any:
        block = self.blocks[index]

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            hidden, text = block.inputs(args, kwargs)
            if self.mode is None:
                out_hidden, out_text = block.outputs(output)
                text_residual = out_text - text if out_text is not None and text is not None else None
                self.residuals[index] = (out_hidden - hidden, text_residual)
                return output
            kind, target = self.mode
            if target != index:
                return output
            if kind == "pruned":
                return block.pack((hidden, text))
            residual = self.previous[index]
            new_text = text + residual[1] if text is not None and residual[1] is not None else text
            return block.pack((hidden + residual[0], new_text))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def measure_sensitivity(
    adapter: Any, cond: dict[str, torch.Tensor], latents: torch.Tensor, num_steps: int, guidance: Any, seed: int
) -> Sensitivity:
    """Sensitivities along one dense trajectory of ``latents`` (2 x blocks extra forwards per step)."""
    blocks = transformer_blocks(adapter.denoiser)  # UNets: a one-line error, as for block caching rules
    calls: list[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]] = []

    def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        calls.append((args, kwargs, first_tensor(output)))

    capture_handle = adapter.denoiser.register_forward_hook(capture, with_kwargs=True)
    probe = _Probe(blocks)
    cached = torch.zeros(num_steps, len(blocks))
    pruned = torch.zeros(num_steps, len(blocks))
    scheduler = clone_scheduler(adapter.pipe.scheduler)
    adapter.set_timesteps(scheduler, num_steps)
    adapter.begin(scheduler)
    prepared, generator = adapter.prepare(cond, guidance), torch.Generator().manual_seed(seed)
    x = latents.to(adapter.device)
    try:
        for step, t in enumerate(scheduler.timesteps):
            calls.clear()
            probe.mode = None
            x_next = adapter.step(scheduler, x, t, prepared, guidance, generator)
            args, kwargs, reference = calls[0]  # the step's (batched-guidance) denoiser call
            for index in range(len(blocks)):
                for kind, table in (("pruned", pruned), ("cached", cached)):
                    if kind == "cached" and step == 0:
                        continue
                    probe.mode = (kind, index)
                    table[step, index] = _relative(first_tensor(adapter.denoiser(*args, **kwargs)), reference)
            probe.previous = list(probe.residuals)
            x = x_next
    finally:
        capture_handle.remove()
        probe.remove()
    return Sensitivity(tuple(b.name for b in blocks), cached, pruned)
