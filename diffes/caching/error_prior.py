"""The offline error prior of CEM (arXiv 2512.23258): how far the denoiser's output drifts over a cache gap.

``err[t, C]`` is the error a step ``t + C`` makes when it reuses the output of step ``t`` instead of computing:
the mean over probe rows of ``1 - cosine`` between the two steps' outputs. One dense trajectory measures it
for every step and gap at once, and the dynamic program in ``diffes.caching.cem`` turns it into the cache
schedule with the least total error under a budget, so no candidate schedule is ever sampled.

The feature of a step is each row's whole output, flattened. The paper averages over tokens, but here that
would leave a 1-vector for the one-channel zoo models (whose cosine is only ever +-1) and a 4-vector for
latent models: too little to tell steps apart. The whole output keeps the measure meaningful for every
family at a memory cost of one output per step on the CPU.

``err[t, C]`` is ``+inf`` where ``t + C`` is past the last step (no such reuse exists), and column 0 is 0.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from typing_extensions import TypedDict

from diffes.errors import CheckpointError, ConfigError
from diffes.io import read_json, read_tensors, write_json, write_tensors
from diffes.models.adapters.base import Cond, Guidance, GuidanceKind, SamplingAdapter
from diffes.models.steps import clone_scheduler
from diffes.pruning.calibration import first_tensor
from diffes.schema import NonNegative, Positive, reading

__all__ = ["ErrorPrior", "measure_error_prior", "step_feature"]

FORMAT = 1
FIX = "the error prior file is corrupt; measure it again"


def step_feature(output: Any) -> torch.Tensor:
    """One denoiser call's feature: each batch row's output flattened, as float32 on the CPU."""
    sample = first_tensor(output)
    return sample.detach().reshape(sample.shape[0], -1).float().cpu()


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row ``1 - cos(a, b)`` in [0, 2]. Two zero rows are identical (0); one zero row is orthogonal (1),
    where ``F.cosine_similarity`` would call even two identical zero rows orthogonal."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    return (1 - cos).clamp(0, 2)  # rounding can push |cos| a hair past 1: errors are never negative


class GuidanceJson(TypedDict):
    kind: GuidanceKind
    scale: float
    rescale: float


class PriorMeta(TypedDict):
    format: int
    num_steps: Positive
    max_gap: Positive
    model: str
    probes: NonNegative
    guidance: GuidanceJson | None
    err_sha256: str


def _digest(err: torch.Tensor) -> str:
    return hashlib.sha256(err.detach().cpu().contiguous().double().numpy().tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class ErrorPrior:
    """``err``: (num_steps, max_gap + 1) float64, see the module docstring. ``model`` (the denoiser class, or a
    name the caller chose), ``guidance`` and ``probes`` say what was measured, so that a prior measured on
    another model or step count is refused (``check_compatible``) instead of planning nonsense."""

    num_steps: int
    err: torch.Tensor
    max_gap: int = 9
    model: str = ""
    guidance: Guidance | None = None
    probes: int = 0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError("num_steps", self.num_steps, "an error prior needs at least 1 step")
        if self.max_gap < 1:
            raise ConfigError("max_gap", self.max_gap, "use a max_gap of at least 1 step")
        shape = (self.num_steps, self.max_gap + 1)
        if tuple(self.err.shape) != shape or not self.err.is_floating_point():
            raise ConfigError(
                "err", f"{self.err.dtype} {tuple(self.err.shape)}", f"err must be floats of shape {shape}"
            )
        err = self.err.double()
        t = torch.arange(self.num_steps)[:, None]
        c = torch.arange(self.max_gap + 1)[None, :]
        defined = (t + c < self.num_steps) & (c > 0)
        if not bool(torch.all(err[:, 0] == 0)):
            raise ConfigError("err", "column 0", "a gap of 0 steps has no error: column 0 must be 0")
        if not bool(torch.all(torch.isfinite(err[defined]) & (err[defined] >= 0))):
            raise ConfigError("err", "defined entries", "errors within the trajectory must be finite and >= 0")
        if not bool(torch.all(err[~defined & (c > 0)] == float("inf"))):
            raise ConfigError("err", "entries past the last step", "gaps past the last step must be +inf")
        object.__setattr__(self, "err", err)

    @classmethod
    def from_features(
        cls,
        features: list[torch.Tensor],
        max_gap: int = 9,
        *,
        model: str = "",
        guidance: Guidance | None = None,
        probes: int | None = None,
    ) -> ErrorPrior:
        """The prior of a trajectory whose step ``t`` had the features ``features[t]``, (rows, D) each, the same
        rows at every step; ``probes`` defaults to the row count."""
        if not features:
            raise ConfigError("features", [], "give the features of at least one step")
        shape = tuple(features[0].shape)
        bad = [t for t, f in enumerate(features) if f.dim() != 2 or tuple(f.shape) != shape]
        if bad or len(shape) != 2:
            raise ConfigError("features", f"step {bad[0] if bad else 0}", "every step needs (rows, D) features")
        n = len(features)
        err = torch.full((n, max_gap + 1), float("inf"), dtype=torch.float64)
        err[:, 0] = 0.0
        for t in range(n):
            for gap in range(1, min(max_gap, n - 1 - t) + 1):
                err[t, gap] = _one_minus_cos(features[t], features[t + gap]).mean()
        rows = shape[0] if probes is None else probes
        return cls(n, err, max_gap, model, guidance, rows)

    def defined(self, t: int, gap: int) -> bool:
        """Whether step ``t + gap`` exists to reuse step ``t`` (within ``max_gap``)."""
        return 1 <= gap <= self.max_gap and t + gap < self.num_steps

    def check_compatible(
        self, *, model: str | None = None, num_steps: int | None = None, guidance: Guidance | None = None
    ) -> None:
        """Refuse to plan a run this prior was not measured for; each given field must match."""
        fix = "measure an error prior for this run (measure_error_prior)"
        if model is not None and model != self.model:
            raise ConfigError("model", model, f"the error prior was measured on {self.model!r}; {fix}")
        if num_steps is not None and num_steps != self.num_steps:
            raise ConfigError("num_steps", num_steps, f"the error prior was measured for {self.num_steps} steps; {fix}")
        if guidance is not None and guidance != self.guidance:
            raise ConfigError("guidance", guidance, f"the error prior was measured with {self.guidance}; {fix}")

    # ---- files: <path> (safetensors, the err tensor) and <path>.json beside it (metadata) ----

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "num_steps": self.num_steps,
            "max_gap": self.max_gap,
            "model": self.model,
            "probes": self.probes,
            "guidance": None if self.guidance is None else asdict(self.guidance),
            "err_sha256": _digest(self.err),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Each file is written atomically; the JSON, written last, holds the tensor's digest, so a pair torn
        by a crash between the two writes is refused on load rather than mixed."""
        path = Path(path)
        write_tensors(path, {"err": self.err})
        write_json(path.with_suffix(".json"), self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ErrorPrior:
        path = Path(path)
        meta = read_json(path.with_suffix(".json"), PriorMeta, FIX)
        if meta["format"] != FORMAT:
            raise CheckpointError(f"{path}: format {meta['format']} is not {FORMAT}; {FIX}")
        err = read_tensors(path).get("err")
        if err is None:
            raise CheckpointError(f"{path}: err: tensor missing; {FIX}")
        if tuple(err.shape) == (meta["num_steps"], meta["max_gap"] + 1) and _digest(err) != meta["err_sha256"]:
            raise CheckpointError(f"{path}: err does not match the digest in {path.with_suffix('.json').name}; {FIX}")
        guidance = None if meta["guidance"] is None else Guidance(**meta["guidance"])
        with reading(path, FIX):
            return cls(meta["num_steps"], err, meta["max_gap"], meta["model"], guidance, meta["probes"])


@torch.no_grad()
def measure_error_prior(
    adapter: SamplingAdapter,
    cond: Cond,
    latents: torch.Tensor,
    num_steps: int,
    guidance: Guidance,
    generator: torch.Generator | None = None,
    max_gap: int = 9,
    model: str | None = None,
) -> ErrorPrior:
    """Run one dense trajectory (on a copy of the pipeline's scheduler, so step hooks and the pipeline's own
    state are untouched) and record each step's denoiser outputs with a plain forward hook. All calls of a step
    are stacked row-wise: batched guidance gives both branches as rows, two calls per step give two blocks.
    Measure on a pipeline without caching hooks: a reused step would report a zero error.
    ``model`` defaults to the denoiser's class name."""
    steps: list[list[torch.Tensor]] = [[]]
    hook = adapter.denoiser.register_forward_hook(lambda module, args, output: steps[-1].append(step_feature(output)))
    try:
        scheduler = clone_scheduler(adapter.pipe.scheduler)
        adapter.sample(cond, latents, num_steps, guidance, generator, scheduler, on_step=lambda: steps.append([]))
    finally:
        hook.remove()
    features = [torch.cat(calls) for calls in steps if calls]
    if len(features) != len(steps) - 1:
        raise ConfigError("num_steps", num_steps, "a step made no denoiser call; cannot measure its error")
    name = type(adapter.denoiser).__name__ if model is None else model
    return ErrorPrior.from_features(features, max_gap, model=name, guidance=guidance, probes=int(latents.shape[0]))
