"""Fit TeaCache and MagCache to the user's own model and probes, and say how good the fit is.

Both rules stand on an offline relation measured on full-compute trajectories. TeaCache: how much the
model output changes between consecutive steps (relative L1), as a polynomial of how much the first block's
timestep-modulated input changes; the reference code ships coefficients without the fit, and users report
fits that do not reproduce, so the fit is made here and its R^2 on held-out probes is printed. MagCache:
the per-step ratio of mean output magnitudes. Rows are single samples of a guidance branch; the last
quarter of the probes is held out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffes.caching.base import Residual, Reuse, Serve, Signal
from diffes.caching.kinds import CalibratedRule
from diffes.caching.rules import MagCacheRule, Rule, TeaCacheRule, rule_from_dict
from diffes.caching.runtime import apply_cache
from diffes.errors import CheckpointError, ConfigError
from diffes.models.steps import StepInfo
from diffes.pruning.calibration import first_tensor

__all__ = ["Calibration", "calibrate", "record", "fit_teacache", "fit_magcache", "WEAK_R2"]

WEAK_R2 = 0.5  # below it a fit explains less than half of the variation it should predict
DEGREE = 4  # TeaCache's polynomial


@dataclass(frozen=True)
class Calibration:
    """A calibrated rule and where it came from; ``r2`` on the fit rows, ``heldout_*`` on held-out probes."""

    rule: Rule
    model: str
    denoiser: str
    num_steps: int
    probes: int
    heldout: int
    seed: int
    r2: float
    heldout_r2: float
    heldout_error: float

    def to_dict(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.__dict__.items() if k != "rule"}
        return {"rule": self.rule.to_dict(), "calibration": meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "calibration") -> Calibration:
        try:
            meta = d["calibration"]
            return cls(rule_from_dict(d["rule"]), **meta)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{source}: not a diffes cache calibration ({e}); run diffes calibrate-cache"
            ) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        from diffes.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        from diffes.io import read_json

        return cls.from_dict(read_json(path), str(path))

    def check_for(self, denoiser: str, num_steps: int) -> None:
        """Refuse a calibration made for another denoiser or step count."""
        if denoiser != self.denoiser:
            raise ConfigError("calibration", self.denoiser, f"it was made for another model; recalibrate on {denoiser}")
        if num_steps != self.num_steps:
            raise ConfigError("steps", num_steps, f"the calibration was made at {self.num_steps} steps; recalibrate")

    def warnings(self) -> list[str]:
        out = []
        if not self.heldout_r2 >= WEAK_R2:
            out.append(
                f"weak fit: held-out R^2 {self.heldout_r2:.2f} < {WEAK_R2}; the rule will skip steps it should not "
                "(more probes, or another rule)"
            )
        return out


class _Recorder:
    """An always-compute rule that keeps each step's signal; the signal is all it is for."""

    def __init__(self, signal: Signal, serve: Serve) -> None:
        self.signal, self.serve = signal, serve
        self.signals: list[torch.Tensor] = []

    def policy(self) -> _Recorder:
        return self

    def decide(self, info: StepInfo, signal: torch.Tensor | None, can_skip: bool) -> bool:
        if signal is not None:
            self.signals.append(signal.detach().float().cpu())
        return True

    def reset(self) -> None:
        pass

    def check_steps(self, num_steps: int) -> None:
        pass


@torch.no_grad()
def record(
    adapter: Any,
    cond: dict[str, torch.Tensor],
    latents: torch.Tensor,
    num_steps: int,
    guidance: Any,
    seed: int,
    signal: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per step, the first block's modulated input (when ``signal``) and the denoiser output, one row per sample
    and branch, over one full-compute trajectory of the pipeline."""
    recorder = _Recorder("modulated_input", Residual(0, 0)) if signal else _Recorder("none", Reuse())
    outputs: list[torch.Tensor] = []
    hook = adapter.denoiser.register_forward_hook(lambda m, a, out: outputs.append(first_tensor(out).float().cpu()))
    cache = apply_cache(adapter.pipe, recorder)
    try:
        adapter.sample(cond, latents, num_steps, guidance, torch.Generator().manual_seed(seed))
    finally:
        cache.remove()
        hook.remove()
    return recorder.signals, outputs


def _rel_l1(now: torch.Tensor, before: torch.Tensor) -> np.ndarray:
    """Per row: mean |now - before| / mean |before|."""
    diff = (now - before).abs().flatten(1).mean(1)
    return (diff / before.abs().flatten(1).mean(1).clamp_min(1e-12)).double().numpy()


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else float("nan")


def _rows(n_rows: int, probes: int, heldout: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit and held-out row indices: row r belongs to probe r % probes (guidance branches are stacked)."""
    probe = np.arange(n_rows) % probes
    return np.flatnonzero(probe < probes - heldout), np.flatnonzero(probe >= probes - heldout)


def fit_teacache(signals: list[torch.Tensor], outputs: list[torch.Tensor], probes: int, heldout: int) -> dict[str, Any]:
    """The degree-4 polynomial y(x), x = change of the modulated input, y = change of the output."""
    x = np.stack([_rel_l1(b, a) for a, b in zip(signals, signals[1:])])  # (steps-1, rows)
    y = np.stack([_rel_l1(b, a) for a, b in zip(outputs, outputs[1:])])
    fit_rows, held_rows = _rows(x.shape[1], probes, heldout)
    coefficients = np.polyfit(x[:, fit_rows].ravel(), y[:, fit_rows].ravel(), DEGREE)
    predict = lambda rows: np.polyval(coefficients, x[:, rows].ravel())  # noqa: E731
    held_y = y[:, held_rows].ravel()
    return {
        "coefficients": tuple(float(c) for c in coefficients),
        "r2": _r2(y[:, fit_rows].ravel(), predict(fit_rows)),
        "heldout_r2": _r2(held_y, predict(held_rows)) if len(held_rows) else float("nan"),
        "heldout_error": float(np.abs(held_y - predict(held_rows)).mean()) if len(held_rows) else float("nan"),
    }


def fit_magcache(outputs: list[torch.Tensor], probes: int, heldout: int) -> dict[str, Any]:
    """Per step, the mean over fit rows of mean|output_t| / mean|output_t-1| (1 at step 0)."""
    magnitude = torch.stack([o.abs().flatten(1).mean(1) for o in outputs]).double().numpy()  # (steps, rows)
    ratios = magnitude[1:] / np.maximum(magnitude[:-1], 1e-12)
    fit_rows, held_rows = _rows(ratios.shape[1], probes, heldout)
    calibrated = ratios[:, fit_rows].mean(1)
    predict = lambda rows: np.repeat(calibrated[:, None], len(rows), 1).ravel()  # noqa: E731
    held = ratios[:, held_rows].ravel()
    return {
        "ratios": (1.0, *(float(r) for r in calibrated)),
        "r2": _r2(ratios[:, fit_rows].ravel(), predict(fit_rows)),
        "heldout_r2": _r2(held, predict(held_rows)) if len(held_rows) else float("nan"),
        "heldout_error": float(np.abs(held - predict(held_rows)).mean()) if len(held_rows) else float("nan"),
    }


def calibrate(
    adapter: Any,
    rule: CalibratedRule,
    conditions: list[Any],
    num_steps: int,
    guidance: Any,
    model: str,
    seed: int = 0,
    negative_prompt: str | None = None,
) -> Calibration:
    """Fit ``rule`` on full-compute trajectories of ``conditions`` (one probe each) with seeded noise."""
    if num_steps < 3:
        raise ConfigError("steps", num_steps, "calibrate on at least 3 steps")
    if len(conditions) < 2:
        raise ConfigError("probes", len(conditions), "calibrate on at least 2 probes (one is held out)")
    heldout = max(1, len(conditions) // 4)
    cond = adapter.encode(conditions, guidance, negative_prompt)
    latents = adapter.initial_latents(len(conditions), torch.Generator().manual_seed(seed))
    signals, outputs = record(adapter, cond, latents, num_steps, guidance, seed + 1, rule == "teacache")
    if rule == "teacache":
        fit = fit_teacache(signals, outputs, len(conditions), heldout)
        made: Rule = TeaCacheRule(coefficients=fit.pop("coefficients"), num_steps=num_steps)
    else:
        fit = fit_magcache(outputs, len(conditions), heldout)
        made = MagCacheRule(ratios=fit.pop("ratios"))
    fit = {k: (v if math.isfinite(v) else float("nan")) for k, v in fit.items()}
    return Calibration(made, model, type(adapter.denoiser).__name__, num_steps, len(conditions), heldout, seed, **fit)
