"""The sampling adapter contract: the one place that knows a pipeline family's conventions.

A run never calls ``pipe(...)`` while it searches. The driver encodes the conditions once (class labels,
or prompts through the pipeline's own text encoders) into a dict of tensors that is saved in the run
directory; workers then only need the denoiser, the scheduler and the VAE. ``step`` is one iteration of
the pipeline's own denoising loop, so the adapter's dense run equals ``pipe(...)`` bit for bit (tested
per family), and the dense schedule scores exactly 0.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from diffes.errors import ConfigError
from diffes.families import Conditioning, family_of
from diffes.models.steps import clone_scheduler, find_denoiser

__all__ = ["Guidance", "GuidanceKind", "Conditioning", "Cond", "SamplingAdapter", "step_kwargs"]

GuidanceKind = Literal["cfg", "distilled", "none"]
Cond = dict[str, torch.Tensor]  # every tensor's first dimension is the probe (one row per sample)


@dataclass(frozen=True)
class Guidance:
    """Guidance as data. ``cfg``: both branches, ``uncond + scale * (cond - uncond)``; ``distilled``: the scale
    is an input of the denoiser (Flux-dev); ``none``: the conditional branch alone. ``rescale`` is the
    guidance rescale of SD/SDXL (0 disables it)."""

    kind: GuidanceKind = "cfg"
    scale: float = 2.0
    rescale: float = 0.0

    @property
    def cfg(self) -> bool:
        """Whether the unconditional branch is computed (the pipelines' ``do_classifier_free_guidance``)."""
        return self.kind == "cfg" and self.scale > 1.0


def step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float = 0.0) -> dict[str, Any]:
    """What the pipelines' ``prepare_extra_step_kwargs`` passes: ``eta`` and ``generator`` where accepted."""
    params = set(inspect.signature(scheduler.step).parameters)
    out: dict[str, Any] = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generator
    return out


class SamplingAdapter(ABC):
    """One pipeline family. Subclasses list their pipeline classes and fill in the family's conventions."""

    guidance_kinds: ClassVar[tuple[GuidanceKind, ...]] = ("cfg", "none")

    def __init__(self, pipe: Any, height: int | None = None, width: int | None = None) -> None:
        self.family = family_of(type(pipe).__name__)
        self.pipe = pipe
        self.denoiser: Any = find_denoiser(pipe)[1]
        self.height, self.width = self.default_size() if height is None or width is None else (height, width)

    # ---- facts ----

    @property
    def conditioning(self) -> Conditioning:
        return self.family.conditioning

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def default_size(self) -> tuple[int, int]:
        """Image (height, width) when the user gives none: the pipeline's own default."""
        scale = int(getattr(self.pipe, "vae_scale_factor", 1))
        size = int(self.denoiser.config.sample_size) * scale
        return size, size

    def check_guidance(self, guidance: Guidance) -> None:
        if guidance.kind not in self.guidance_kinds:
            kinds = ", ".join(self.guidance_kinds)
            raise ConfigError("guidance_kind", guidance.kind, f"{type(self.pipe).__name__} supports {kinds}")

    # ---- driver side ----

    @torch.no_grad()
    def encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        """Conditions (class ids or prompts, one per sample) as tensors, on the CPU, row i for sample i."""
        # without gradients, as inside pipe(...): text encoders pick other attention kernels when autograd
        # records, and their embeddings then differ in the last bit
        self.check_guidance(guidance)
        return self._encode(conditions, guidance, negative_prompt)

    @abstractmethod
    def _encode(self, conditions: Sequence[Any], guidance: Guidance, negative_prompt: str | None = None) -> Cond:
        """``encode`` of one family."""

    @abstractmethod
    def initial_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Seeded noise in the denoiser's own layout, scaled as the pipeline scales it."""

    # ---- trajectory ----

    def set_timesteps(self, scheduler: Any, num_steps: int) -> None:
        """Set ``scheduler`` exactly as ``pipe(...)`` does for ``num_steps`` steps."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        retrieve_timesteps(scheduler, num_steps, self.device)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The timesteps ``pipe(...)`` uses for ``num_steps`` steps (the pipeline's scheduler is untouched)."""
        scheduler = clone_scheduler(self.pipe.scheduler)
        self.set_timesteps(scheduler, num_steps)
        return scheduler.timesteps.detach().clone().cpu()

    def prepare(self, cond: Cond, guidance: Guidance) -> dict[str, Any]:
        """Per-trajectory inputs built once from the encoded conditions (CFG batching, extras), on the device."""
        return {k: v.to(self.device) for k, v in cond.items()}

    @abstractmethod
    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, prepared: dict[str, Any], guidance: Guidance
    ) -> Any:
        """The guided model output that the pipeline hands to ``scheduler.step`` (``scheduler`` for scaling)."""

    def step(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        prepared: dict[str, Any],
        guidance: Guidance,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One denoising step: the denoiser call(s), guidance, and ``scheduler.step``."""
        noise = self.predict(scheduler, latents, t, prepared, guidance)
        return scheduler.step(noise, t, latents, **self.extra_step_kwargs(scheduler, generator), return_dict=False)[0]

    def extra_step_kwargs(self, scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
        return step_kwargs(scheduler, generator)

    def begin(self, scheduler: Any) -> None:
        """What the pipeline does to the scheduler right before its loop (``set_begin_index(0)`` in most)."""
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    @torch.no_grad()
    def sample(
        self,
        cond: Cond,
        latents: torch.Tensor,
        num_steps: int,
        guidance: Guidance,
        generator: torch.Generator | None = None,
        scheduler: Any = None,
        on_step: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        """A whole trajectory on ``scheduler`` (default: the pipeline's own, so step hooks such as routing see it);
        ``on_step`` is called after each step (progress bars)."""
        scheduler = self.pipe.scheduler if scheduler is None else scheduler
        self.set_timesteps(scheduler, num_steps)
        self.begin(scheduler)
        prepared = self.prepare(cond, guidance)
        latents = latents.to(self.device)
        for t in scheduler.timesteps:
            latents = self.step(scheduler, latents, t, prepared, guidance, generator)
            if on_step is not None:
                on_step()
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Final latents to images in [0, 1], (N, C, H, W) float32 on the CPU, in micro-batches: a VAE decoder
        at full resolution is the memory peak of a run."""
        return torch.cat([self._decode(chunk) for chunk in latents.split(batch)])

    @abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``decode`` of one micro-batch."""

    # ---- the reference ----

    @abstractmethod
    def pipe_call(
        self,
        conditions: Sequence[Any],
        num_steps: int,
        guidance: Guidance,
        generator: torch.Generator,
        negative_prompt: str | None = None,
    ) -> torch.Tensor:
        """An unmodified ``pipe(...)`` call with the same inputs, returning its images in [0, 1]: what the
        adapter's dense run must equal bit for bit."""
