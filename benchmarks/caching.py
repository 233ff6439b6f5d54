"""Feature caching against simply taking fewer steps, on one cost axis, on the built-in models.

The teacher is a 50-step dense run of the pipeline's own sampler; held-out probes (10 conditions x 4, fresh
seeds) start every method from the teacher's noise, and each method's images are scored against the
teacher's with the model's default metric (the zoo digit classifier's feature distance) and the classifier's
class accuracy. Every method sits on ONE cost axis: the denoiser MACs it actually ran per image, as a fraction
of the 50-step dense run. Forward pre-hooks inside the denoiser count what ran on every call (the parts
outside the blocks, each block's norm1 / attention / rest), and each part is priced with
``diffes.pruning.cost.module_macs``: a reused step costs 0, a block-residual step the blocks that still ran
plus the non-block parts, TeaCache's signal its norm1 call.

Methods: (a) dense with fewer steps of the same sampler, (b) dense with DPM-Solver++ at fewer steps, (c) diffes'
rules at 20 and 10 steps (interval / FORA with reuse or extrapolation, block-residual interval, first-block,
TeaCache and MagCache calibrated on separate probes, CEM schedules), (d) diffusers' own hooks (first-block
cache, MagCache, TaylorSeer, pyramid attention broadcast) on the transformers. Wall-clock speedups are medians
of a few repeats of the whole probe batch on this CPU, one thread (two threads ran 15x slower on the shared
2-core machine), scaled by a short dense metronome run before and after each setting so that other
processes coming and going do not tilt them; they stay noisy.

    python -m benchmarks.caching [--models dit-digits,unet-digits,t2i-digits] [--quick]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import math
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.common import RESULTS, save
from diffes.caching.calibration import calibrate
from diffes.caching.cem import plan_computed_steps
from diffes.caching.error_prior import measure_error_prior
from diffes.caching.rules import FirstBlockRule, IntervalRule, MagCacheRule, TeaCacheRule
from diffes.caching.runtime import Extrapolate, Residual, Reuse, apply_cache
from diffes.fitness import class_accuracy, get_metric
from diffes.fitness.baselines import DPM_SOLVER, dpm_solver_scheduler, sampler_name, why_no_dpm_solver
from diffes.fitness.teacher import ProbeSet, make_probes, step_generator
from diffes.models.adapters import Guidance, SamplingAdapter
from diffes.models.steps import clone_scheduler
from diffes.pruning.cost import module_macs
from diffes.runs.config import RunConfig
from diffes.runs.context import load_adapter, make_metric, run_conditions

REFERENCE_STEPS = 50
FEWER_STEPS = (50, 25, 20, 15, 10, 8, 6, 5, 4, 3, 2)
RULE_STEPS = (20, 10)
METRONOME_STEPS = 5
FACTORS = (2.0, 4.0, 8.0)  # cost reductions the summary lines compare at
MODELS = ("dit-digits", "unet-digits", "t2i-digits")
PROMPTS = "configs/t2i-prompts.txt"
FEWER, DIFFES, DIFFUSERS = "fewer steps", "diffes", "diffusers"
PIXEL_MSE = get_metric("mse")


# ---- what one denoiser call costs, part by part ----


@dataclass(frozen=True)
class Costs:
    """MACs of one denoiser call for one probe (both guidance branches), split into the parts the counters see."""

    total: int
    body: int  # everything outside the transformer blocks (the whole model for a UNet)
    blocks: tuple[dict[str, int], ...]  # per block: norm1, attn1, attn2 and the rest

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "body": self.body, "blocks": list(self.blocks)}


def _blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    return list(getattr(denoiser, "transformer_blocks", None) or [])


def _module(parent: torch.nn.Module, name: str) -> torch.nn.Module:
    module = getattr(parent, name)
    assert isinstance(module, torch.nn.Module), name
    return module


def _body_module(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A module every computed call runs first and no skipped call runs."""
    for name in ("pos_embed", "conv_in"):
        module = getattr(denoiser, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{type(denoiser).__name__}: no pos_embed or conv_in to count computed calls by")


@torch.no_grad()
def measure_costs(adapter: SamplingAdapter, probes: ProbeSet, guidance: Guidance) -> Costs:
    """Capture one real denoiser call (one probe, one step) and price its parts with ``module_macs``."""
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def grab(module: Any, args: Any, kwargs: Any) -> None:
        if not captured:
            captured.append((args, kwargs))

    handle = adapter.denoiser.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        cond = {k: v[:1] for k, v in probes.cond.items()}
        adapter.sample(cond, probes.latents[:1], 1, guidance, None, clone_scheduler(adapter.pipe.scheduler))
    finally:
        handle.remove()
    args, kwargs = captured[0]
    parts = ["norm1", "attn1", "attn2"]
    names = [""]
    blocks = _blocks(adapter.denoiser)
    for i, block in enumerate(blocks):
        names.append(f"transformer_blocks.{i}")
        names += [f"transformer_blocks.{i}.{p}" for p in parts if getattr(block, p, None) is not None]
    macs = module_macs(adapter.denoiser, lambda m: m(*args, **kwargs), names)
    per_block = []
    for i in range(len(blocks)):
        prefix = f"transformer_blocks.{i}"
        part = {p: macs.get(f"{prefix}.{p}", 0) for p in parts}
        per_block.append(part | {"rest": macs[prefix] - sum(part.values()), "block": macs[prefix]})
    body = macs[""] - sum(b["block"] for b in per_block)
    return Costs(macs[""], body, tuple(per_block))


class Counter:
    """Forward pre-hooks that record, per denoiser call, which parts actually ran.

    A torch pre-hook on the denoiser fires on every call, even one a cache hook answers without computing; the
    pre-hooks inside it fire only for what really runs: the body module, each block's norm1, its attention
    projections (``to_q``) and its feed-forward (standing for the block's rest)."""

    def __init__(self, denoiser: torch.nn.Module, costs: Costs) -> None:
        self.costs = costs
        self.calls: list[dict[tuple[str, int], int]] = []
        self.handles = [denoiser.register_forward_pre_hook(lambda m, a: self.calls.append(defaultdict(int)))]
        self._count(_body_module(denoiser), ("body", -1))
        for i, block in enumerate(_blocks(denoiser)):
            self._count(_module(block, "norm1"), ("norm1", i))
            self._count(_module(block, "ff"), ("rest", i))
            for attn in ("attn1", "attn2"):
                module = getattr(block, attn, None)
                if module is not None:
                    self._count(module.to_q, (attn, i))

    def _count(self, module: torch.nn.Module, key: tuple[str, int]) -> None:
        def hook(m: Any, a: Any) -> None:
            self.calls[-1][key] += 1

        self.handles.append(module.register_forward_pre_hook(hook))

    def call_macs(self, counts: dict[tuple[str, int], int]) -> int:
        total = counts.get(("body", -1), 0) * self.costs.body
        for (part, i), n in counts.items():
            if part != "body":
                total += n * self.costs.blocks[i][part]
        return total

    def kinds(self) -> list[str]:
        """Per call: computed (everything ran), partial (some blocks cached), or skipped (nothing ran)."""
        out = []
        for counts in self.calls:
            macs = self.call_macs(counts)
            out.append("computed" if macs >= self.costs.total else "skipped" if macs == 0 else "partial")
        return out

    def macs(self) -> int:
        return sum(self.call_macs(c) for c in self.calls)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ---- methods ----


@dataclass
class Attached:
    """What a method leaves on the pipeline while it samples."""

    before: Callable[[], None] = lambda: None  # before each trajectory
    summary: Callable[[], dict[str, Any] | None] = lambda: None
    remove: Callable[[], None] = lambda: None


@dataclass
class Spec:
    method: str
    family: str
    steps: int
    settings: dict[str, Any]
    attach: Callable[[], Attached] = Attached
    scheduler: Any = None  # None: the pipeline's own (tracked) scheduler

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items())


def diffes_rule(pipe: Any, rule: Any) -> Callable[[], Attached]:
    def attach() -> Attached:
        handle = apply_cache(pipe, rule)
        return Attached(handle.reset, lambda: handle.summary.to_dict(), handle.remove)

    return attach


# diffusers' hooks; the zoo and tiny models do not inherit CacheMixin, so the cache context is set here
HOOK_NAMES = (
    "fbc_leader_block_hook",
    "fbc_block_hook",
    "mag_cache_leader_block_hook",
    "mag_cache_block_hook",
    "taylorseer_cache",
    "pyramid_attention_broadcast",
)


def diffusers_hook(
    denoiser: torch.nn.Module, apply: Callable[[], None], clock: TimestepProbe | None = None
) -> Callable[[], Attached]:
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    def attach() -> Attached:
        apply()
        if clock is not None:
            clock.start()
        registry = HookRegistry.check_if_exists_or_initialize(denoiser)
        registry.invalidate_child_registries_cache()

        def before() -> None:  # what a CacheMixin pipeline does around its loop: fresh state, a named context
            registry.reset_stateful_hooks(recurse=True)
            _set_cache_context(denoiser, CacheContext("cond"))

        def remove() -> None:
            for name in HOOK_NAMES:
                registry.remove_hook(name, recurse=True)
            registry.invalidate_child_registries_cache()
            if clock is not None:
                clock.stop()

        return Attached(before, remove=remove)

    return attach


class TimestepProbe:
    """The current timestep for pyramid attention broadcast, read off the denoiser's own input while attached."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.denoiser, self.t = denoiser, 1000.0
        self.handle: Any = None

    def start(self) -> None:
        self.handle = self.denoiser.register_forward_pre_hook(self._read, with_kwargs=True)

    def stop(self) -> None:
        self.handle.remove()

    def _read(self, module: Any, args: Any, kwargs: Any) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(t, torch.Tensor):
            self.t = float(t.reshape(-1)[0])

    def __call__(self) -> float:
        return self.t


# ---- one model ----


@dataclass
class Bench:
    model: str
    adapter: SamplingAdapter
    guidance: Guidance
    metric: Any
    probes: ProbeSet
    labels: torch.Tensor
    calibration: list[Any]  # conditions of the calibration probes (their own seed)
    costs: Costs
    repeats: int
    teacher: torch.Tensor | None = None
    reference_macs: int = 0
    reference_seconds: list[float] = field(default_factory=list)
    reference_metronome: list[float] = field(default_factory=list)

    @property
    def pipe(self) -> Any:
        return self.adapter.pipe

    @property
    def is_transformer(self) -> bool:
        return bool(_blocks(self.adapter.denoiser))

    def sample(self, steps: int, scheduler: Any = None) -> torch.Tensor:
        latents = self.probes.latents
        if scheduler is not None:  # unit noise rescaled from the pipeline's initial sigma to this sampler's
            latents = latents * (_init_sigma(self.adapter, scheduler, steps) / _init_sigma(self.adapter, None, steps))
        return self.adapter.sample(
            self.probes.cond, latents, steps, self.guidance, step_generator(self.probes), scheduler
        )

    def metronome(self) -> float:
        """Seconds of a short dense run with nothing attached: how fast the shared machine is now."""
        start = time.perf_counter()
        self.sample(METRONOME_STEPS)
        return time.perf_counter() - start

    def calibration_latents(self, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cond = self.adapter.encode(self.calibration, self.guidance)
        return cond, self.adapter.initial_latents(len(self.calibration), torch.Generator().manual_seed(seed))


def _init_sigma(adapter: SamplingAdapter, scheduler: Any, steps: int) -> float:
    s = clone_scheduler(adapter.pipe.scheduler if scheduler is None else scheduler)
    adapter.set_timesteps(s, steps)
    return float(getattr(s, "init_noise_sigma", 1.0))


@torch.no_grad()
def run_spec(bench: Bench, spec: Spec) -> dict[str, Any]:
    """One setting: a counted run whose images are scored, then timed repeats; a dense metronome run before and
    after (nothing attached) tracks how fast the shared machine is right now."""
    metronome = [bench.metronome()]
    attached = spec.attach()
    try:
        counter = Counter(bench.adapter.denoiser, bench.costs)
        try:
            attached.before()
            latents = bench.sample(spec.steps, spec.scheduler)
        finally:
            counter.remove()
        summary = attached.summary()
        seconds = []
        for _ in range(bench.repeats):
            attached.before()
            start = time.perf_counter()
            bench.sample(spec.steps, spec.scheduler)
            seconds.append(time.perf_counter() - start)
    finally:
        attached.remove()
    metronome.append(bench.metronome())
    images = bench.adapter.decode(latents)
    kinds = counter.kinds()
    macs = counter.macs()
    if bench.teacher is None:  # this run is the reference
        bench.teacher, bench.reference_macs = images, macs
        bench.reference_seconds, bench.reference_metronome = seconds, metronome
    per_probe = bench.metric(images, bench.teacher)
    mse = float(PIXEL_MSE(images, bench.teacher).mean())
    n = per_probe.numel()
    reference, now = statistics.median(bench.reference_seconds), statistics.median(seconds)
    drift = statistics.mean(metronome) / statistics.mean(bench.reference_metronome)  # > 1: the machine is slower
    point = {
        "method": spec.method,
        "family": spec.family,
        "settings": spec.settings,
        "label": spec.label,
        "steps": spec.steps,
        "computed": kinds.count("computed"),
        "partial": kinds.count("partial"),
        "skipped": kinds.count("skipped"),
        "calls": kinds,
        "macs": macs / bench.reference_macs,
        "seconds": seconds,
        "metronome_seconds": metronome,
        "speedup": reference * drift / now,
        "speedup_raw": reference / now,
        "distance": float(per_probe.mean()),
        "distance_se": float(per_probe.std() / n**0.5) if n > 1 else 0.0,
        "per_probe": per_probe.tolist(),
        "pixel_mse": mse,  # a second, metric-free look at the same distance
        "accuracy": class_accuracy(images, bench.labels),
    }
    if summary is not None:
        point["summary"] = summary
    return point


# ---- the settings of each method ----


@dataclass(frozen=True)
class Plan:
    fewer: tuple[int, ...]
    rule_steps: tuple[int, ...]
    every: tuple[int, ...]
    serves: tuple[Any, ...]
    firstblock: tuple[float, ...]
    teacache: tuple[float, ...]
    magcache: tuple[float, ...]
    cem: dict[int, tuple[int, ...]]  # steps -> computed-step budgets
    hook_steps: tuple[int, ...]
    fbc: tuple[float, ...]
    hook_magcache: tuple[float, ...]
    taylorseer: tuple[tuple[int, int], ...]  # (cache interval, order)
    pab: tuple[int, ...]


FULL = Plan(
    fewer=FEWER_STEPS,
    rule_steps=RULE_STEPS,
    every=(2, 3),
    serves=(Reuse(), Extrapolate(1), Extrapolate(2)),
    # thresholds picked on the calibration probes to span computed fractions from about 3/4 to 1/5
    firstblock=(0.1, 0.2, 0.3, 0.6),
    teacache=(0.1, 0.2, 0.3, 0.6),
    magcache=(0.01, 0.03, 1.0),
    cem={20: (10, 7, 5), 10: (6, 4)},
    hook_steps=RULE_STEPS,
    fbc=(0.1, 0.3),
    hook_magcache=(0.06, 0.24, 1.0),
    taylorseer=((2, 1), (3, 1), (3, 2)),
    pab=(2, 3),
)
QUICK = Plan(
    fewer=(10, 5),
    rule_steps=(5,),
    every=(2,),
    serves=(Reuse(), Extrapolate(1)),
    firstblock=(0.1,),
    teacache=(0.3,),
    magcache=(0.1,),
    cem={5: (3,)},
    hook_steps=(5,),
    fbc=(0.1,),
    hook_magcache=(0.12,),
    taylorseer=((2, 1),),
    pab=(2,),
)


def _serve_name(serve: Any) -> str:
    return f"extrapolate{serve.order}" if isinstance(serve, Extrapolate) else "reuse"


def fewer_steps_specs(bench: Bench, plan: Plan, reference: int) -> list[Spec]:
    own = sampler_name(bench.pipe.scheduler)
    steps = [reference, *(k for k in plan.fewer if k != reference)]
    specs = [Spec(f"dense {own}", FEWER, k, {"steps": k}) for k in steps]
    dpm = dpm_solver_scheduler(bench.pipe.scheduler)  # None where it would not be a fair baseline
    if dpm is None:
        print(f"  no DPM-Solver++ baseline: {why_no_dpm_solver(bench.pipe.scheduler)}", flush=True)
        return specs
    specs += [Spec(f"dense {DPM_SOLVER}", FEWER, k, {"steps": k}, scheduler=dpm) for k in steps if k != reference]
    return specs


def diffes_specs(bench: Bench, plan: Plan, fits: dict[str, Any], seed: int) -> list[Spec]:
    specs: list[Spec] = []

    def add(method: str, steps: int, settings: dict[str, Any], rule: Any) -> None:
        specs.append(Spec(method, DIFFES, steps, settings, diffes_rule(bench.pipe, rule)))

    for steps in plan.rule_steps:
        for every in plan.every:
            for serve in plan.serves:
                add("interval", steps, {"every": every, "serve": _serve_name(serve)}, IntervalRule(every, serve))
            if bench.is_transformer:
                add("interval residual", steps, {"every": every, "fn": 1, "bn": 1}, IntervalRule(every, Residual(1, 1)))
        if bench.is_transformer:
            for threshold in plan.firstblock:
                add("first-block", steps, {"threshold": threshold}, FirstBlockRule(threshold))
            tea = _calibrated(bench, "teacache", steps, fits, seed)
            for threshold in plan.teacache:
                add(
                    "TeaCache",
                    steps,
                    {"threshold": threshold},
                    TeaCacheRule(threshold, tea.coefficients, num_steps=steps),
                )
        mag = _calibrated(bench, "magcache", steps, fits, seed)
        for threshold in plan.magcache:
            add("MagCache", steps, {"threshold": threshold}, MagCacheRule(mag.ratios, threshold))
        if steps in plan.cem:
            cond, latents = bench.calibration_latents(seed)
            prior = measure_error_prior(bench.adapter, cond, latents, steps, bench.guidance)
            fits[f"cem@{steps}"] = {"probes": len(bench.calibration), "max_gap": prior.max_gap}
            for budget in plan.cem[steps]:
                schedule = plan_computed_steps(prior, budget)
                mask = "".join(str(int(c)) for c in schedule.computed)
                add("CEM", steps, {"computed": budget, "mask": mask}, schedule.rule())
    return specs


def _calibrated(bench: Bench, rule: str, steps: int, fits: dict[str, Any], seed: int) -> Any:
    made = calibrate(bench.adapter, rule, bench.calibration, steps, bench.guidance, bench.model, seed)  # type: ignore[arg-type]
    fits[f"{rule}@{steps}"] = made.to_dict()["calibration"] | {"warnings": made.warnings()}
    return made.rule


def diffusers_specs(bench: Bench, plan: Plan, fits: dict[str, Any], seed: int) -> list[Spec]:
    if not bench.is_transformer:
        return []
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_mag_cache,
        apply_pyramid_attention_broadcast,
        apply_taylorseer_cache,
    )

    denoiser, specs = bench.adapter.denoiser, []
    clock = TimestepProbe(denoiser)
    cross = any(getattr(b, "attn2", None) is not None for b in _blocks(denoiser))

    def add(method: str, steps: int, settings: dict[str, Any], apply: Callable[..., None], config: Any) -> None:
        timed = clock if method.endswith("PAB") else None
        attach = diffusers_hook(denoiser, lambda: apply(denoiser, config), timed)
        specs.append(Spec(f"diffusers {method}", DIFFUSERS, steps, settings, attach))

    for steps in plan.hook_steps:
        for threshold in plan.fbc:
            config = FirstBlockCacheConfig(threshold=threshold)
            add("first-block", steps, {"threshold": threshold}, apply_first_block_cache, config)
        ratios = diffusers_mag_ratios(bench, steps, seed)
        fits[f"diffusers magcache@{steps}"] = {"ratios": ratios, "probes": len(bench.calibration)}
        for threshold in plan.hook_magcache:
            config = MagCacheConfig(threshold=threshold, num_inference_steps=steps, mag_ratios=ratios)
            add("MagCache", steps, {"threshold": threshold}, apply_mag_cache, config)
        for interval, order in plan.taylorseer:
            config = TaylorSeerCacheConfig(
                cache_interval=interval,
                max_order=order,
                taylor_factors_dtype=torch.float32,  # the default bfloat16 would add its own rounding error
                cache_identifiers=[r"transformer_blocks\.\d+"],  # the default identifiers match no DiT/PixArt block
            )
            add("TaylorSeer", steps, {"interval": interval, "order": order}, apply_taylorseer_cache, config)
        for skip in plan.pab:
            config = PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=skip,
                cross_attention_block_skip_range=skip if cross else None,
                current_timestep_callback=clock,
            )
            add("PAB", steps, {"skip": skip, "timesteps": "100-800"}, apply_pyramid_attention_broadcast, config)
    return specs


@torch.no_grad()
def diffusers_mag_ratios(bench: Bench, steps: int, seed: int) -> list[float]:
    """diffusers' MagCache calibration (``calibrate=True``) on the calibration probes; it prints its ratios."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    denoiser = bench.adapter.denoiser
    config = MagCacheConfig(calibrate=True, num_inference_steps=steps)
    attached = diffusers_hook(denoiser, lambda: apply_mag_cache(denoiser, config))()
    out = io.StringIO()
    try:
        cond, latents = bench.calibration_latents(seed)
        attached.before()
        with contextlib.redirect_stdout(out):
            bench.adapter.sample(cond, latents, steps, bench.guidance, None)
    finally:
        attached.remove()
    found = re.findall(r"^\[[^\n]*\]$", out.getvalue(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"diffusers' MagCache calibration printed no ratios: {out.getvalue()!r}")
    return [float(r) for r in ast.literal_eval(found[-1])]


# ---- summaries ----


def envelope(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lower envelope: points no other point beats on both cost and distance, cheapest first."""
    out: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["macs"], p["distance"])):
        if not out or p["distance"] < out[-1]["distance"]:
            out.append(p)
    return out


def best_fewer(points: list[dict[str, Any]], cost: float, key: str = "macs") -> dict[str, Any] | None:
    """The best fewer-steps run (either sampler) that costs no more (or, for speedup, is at least as fast)."""
    ok = [
        p
        for p in points
        if p["family"] == FEWER and (p[key] <= cost + 1e-9 if key == "macs" else p[key] >= cost - 1e-9)
    ]
    return min(ok, key=lambda p: p["distance"]) if ok else None


def paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """Mean and standard error of the per-probe difference a - b (same noise per probe)."""
    diff = torch.tensor(a["per_probe"]) - torch.tensor(b["per_probe"])
    return float(diff.mean()), float(diff.std() / len(diff) ** 0.5)


def caches(p: dict[str, Any]) -> bool:
    """A caching setting that skipped something (a threshold no step reaches runs the dense model)."""
    return p["family"] != FEWER and p["computed"] < p["steps"]


def comparisons(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each caching setting against the best fewer-steps run of no higher MACs (none: cheaper than all)."""
    out: list[dict[str, Any]] = []
    for p in filter(caches, points):
        b = best_fewer(points, p["macs"])
        if b is None:
            out.append({"point": _name(p), "macs": p["macs"], "baseline": None, "verdict": "cheaper than all"})
            continue
        diff, se = paired(p, b)
        verdict = "better" if diff < -se else "worse" if diff > se else "tie"
        ratio = p["distance"] / b["distance"] if b["distance"] > 0 else math.inf
        row = {"point": _name(p), "macs": p["macs"], "baseline": _name(b), "diff": diff, "se": se, "ratio": ratio}
        out.append(row | {"verdict": verdict})
    return out


def at_speedup(
    points: list[dict[str, Any]], factor: float, key: str, rivals: tuple[str, str] = ("caching", FEWER)
) -> dict[str, Any] | None:
    """The best of each of two groups among points at least ``factor`` x cheaper (MACs) or faster (measured):
    caching (diffes' rules and diffusers' hooks), fewer steps, diffes or diffusers."""

    def fits(p: dict[str, Any]) -> bool:
        return p["macs"] <= 1 / factor + 1e-9 if key == "macs" else p["speedup"] >= factor

    def member(p: dict[str, Any], group: str) -> bool:
        return p["family"] == FEWER if group == FEWER else caches(p) and group in ("caching", p["family"])

    groups = [[p for p in points if member(p, g) and fits(p)] for g in rivals]
    if not all(groups):
        return None
    a, b = (min(g, key=lambda p: p["distance"]) for g in groups)
    diff, se = paired(a, b)
    ratio = a["distance"] / b["distance"] if b["distance"] > 0 else math.inf
    names = {"a": _name(a), "b": _name(b), "a_distance": a["distance"], "b_distance": b["distance"]}
    return {"factor": factor, "by": key, "rivals": list(rivals), **names, "ratio": ratio, "diff": diff, "se": se}


def _name(p: dict[str, Any]) -> str:
    label = p["label"] if p["family"] != FEWER else ""
    return f"{p['method']} @{p['steps']}" + (f" ({label})" if label else "")


# ---- the run ----


def bench_for(model: str, args: argparse.Namespace) -> Bench:
    values: dict[str, Any] = {"model": model, "guidance": args.guidance}
    if model == "t2i-digits":
        values["prompts"] = PROMPTS
    config = RunConfig.from_dict(values).resolved()
    adapter = load_adapter(config)
    guidance = config.fitness.guidance_config()
    conditions = run_conditions(config, adapter)[:10]
    text = config.model.prompts is not None
    probes = make_probes(adapter, conditions, args.per_class, args.seed, guidance)
    labels = torch.tensor([conditions.index(c) if text else int(c) for c in probes.conditions])
    calibration = [c for _ in range(args.calibration_per_class) for c in conditions]
    costs = measure_costs(adapter, probes, guidance)
    return Bench(model, adapter, guidance, make_metric(config), probes, labels, calibration, costs, args.repeats)


def run_model(model: str, args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    start = time.perf_counter()
    bench = bench_for(model, args)
    reference = args.reference_steps
    print(f"{model}: {len(bench.probes)} held-out probes, {len(bench.calibration)} calibration probes", flush=True)
    points: list[dict[str, Any]] = []
    fits: dict[str, Any] = {}

    def run(specs: list[Spec]) -> None:
        for spec in specs:
            p = run_spec(bench, spec)
            points.append(p)
            counts = f"computed {p['computed']}+{p['partial']}/{p['steps']}"
            quality = f"distance {p['distance']:.4f}, accuracy {p['accuracy']:.0%}"
            print(f"  {_name(p)}: MACs {p['macs']:.3f}, {counts}, {quality}, speedup {p['speedup']:.2f}x", flush=True)

    run(fewer_steps_specs(bench, plan, reference))
    clean_check = bench.sample(min(plan.fewer))
    run(diffes_specs(bench, plan, fits, args.seed + 1000))
    run(diffusers_specs(bench, plan, fits, args.seed + 1000))
    clean = bool(torch.equal(bench.sample(min(plan.fewer)), clean_check))  # every hook came off again
    return {
        "model": model,
        "guidance": {"kind": bench.guidance.kind, "scale": bench.guidance.scale},
        "probes": len(bench.probes),
        "probe_seed": args.seed,
        "calibration_probes": len(bench.calibration),
        "calibration_seed": args.seed + 1000,
        "reference_steps": reference,
        "reference_seconds": bench.reference_seconds,
        "reference_metronome_seconds": bench.reference_metronome,
        "costs": bench.costs.to_dict(),
        "calibration": fits,
        "hooks_removed_cleanly": clean,
        "points": points,
        "envelope": [_name(p) for p in envelope(points)],
        "comparisons": comparisons(points),
        "at_speedup": [r for f in FACTORS for k in ("macs", "speedup") if (r := at_speedup(points, f, k))],
        "diffes_vs_diffusers": [r for f in FACTORS if (r := at_speedup(points, f, "macs", (DIFFES, DIFFUSERS)))],
        "seconds": time.perf_counter() - start,
    }


def main(args: argparse.Namespace) -> None:
    from diffes.models.loading import fast_cpu_math

    fast_cpu_math()
    # one thread: on this 2-core machine, shared with other processes, two threads ran a DiT call 15x slower
    torch.set_num_threads(args.threads)
    output = args.output or ("caching_quick" if args.quick else "caching")
    if args.rerender:  # the markdown and the plot again, from the JSON of the last run
        payload = json.loads((RESULTS / f"{output}.json").read_text())
        (RESULTS / f"{output}.md").write_text(report(payload["models"]).rstrip() + "\n")
        plot(payload["models"], RESULTS / f"{output}.png")
        return
    plan = QUICK if args.quick else FULL
    if args.quick:
        args.reference_steps, args.per_class, args.calibration_per_class, args.repeats = 10, 1, 1, 1
    models = args.models.split(",") if args.models else (["dit-digits"] if args.quick else list(MODELS))
    results = {}
    for model in models:
        results[model] = run_model(model, args, plan)
    payload = {"quick": args.quick, "plan": _plan_dict(plan), "models": results}
    save(output, payload, report(results))
    plot(results, RESULTS / f"{output}.png")


def _plan_dict(plan: Plan) -> dict[str, Any]:
    d = {k: v for k, v in plan.__dict__.items() if k != "serves"}
    return d | {"serves": [_serve_name(s) for s in plan.serves], "cem": {str(k): v for k, v in plan.cem.items()}}


# ---- report ----


def report(results: dict[str, Any]) -> str:
    lines = [
        "Feature caching vs fewer steps. Cost = denoiser MACs per image / the 50-step dense run's (counted per "
        "call: a reused step is free, a block-residual step pays for the blocks that still run). Distance = "
        "held-out classifier-feature distance to the 50-step dense samples from the same noise (± s.e. over "
        "probes); accuracy = digit classifier. Speedup = measured wall clock of the sampling loop vs the 50-step "
        "dense run, whole probe batch, median of repeats, one thread on a 2-core CPU shared with other processes, "
        "corrected for the machine's drift by a 5-step dense run before and after each setting: still **noisy**. "
        "Adaptive rules (first-block, TeaCache, diffusers' hooks) decide per batch, not per probe.",
        "",
    ]
    for model, r in results.items():
        lines += _model_table(model, r)
    return "\n".join(lines)


def _model_table(model: str, r: dict[str, Any]) -> list[str]:
    points = r["points"]
    lines = [
        f"### {model} ({r['probes']} held-out probes, {r['reference_steps']}-step dense teacher, guidance "
        f"{r['guidance']['scale']})",
        "",
        "| family | method | settings | steps | computed (+partial) | MACs | speedup | held-out distance | pixel MSE "
        "| accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {FEWER: 0, DIFFES: 1, DIFFUSERS: 2}
    for p in sorted(points, key=lambda p: (order[p["family"]], p["method"], -p["steps"], -p["macs"])):
        partial = f"+{p['partial']}" if p["partial"] else ""
        label = p["label"] if p["family"] != FEWER else ""
        lines.append(
            f"| {p['family']} | {p['method']} | {label} | {p['steps']} | {p['computed']}{partial} | {p['macs']:.3f} "
            f"| {p['speedup']:.2f}x | {p['distance']:.4f} ± {p['distance_se']:.4f} | {p['pixel_mse']:.5f} "
            f"| {p['accuracy']:.1%} |"
        )
    by_name = {_name(p): p for p in points}
    env = [by_name[n] for n in r["envelope"]]
    steps = "; ".join(f"{p['macs']:.3f} {_name(p)} {p['distance']:.4f}" for p in env)
    lines += ["", f"Lower envelope (best single method per cost): {steps}"]
    lines += ["", *(f"- {s}" for s in verdicts(model, r))]
    for key, fit in r["calibration"].items():
        if "heldout_r2" in fit:
            lines.append(f"- calibration {key}: R^2 {fit['r2']:.2f}, held-out R^2 {fit['heldout_r2']:.2f}")
    if not r["hooks_removed_cleanly"]:
        lines.append("- WARNING: a dense run after removing every cache differed from the one before")
    return [*lines, ""]


def envelope_sentence(model: str, r: dict[str, Any]) -> str:
    """Which kind of method holds the lower envelope over which MACs range, in words."""
    by_name = {_name(p): p for p in r["points"]}
    env = [by_name[n] for n in r["envelope"] if by_name[n]["macs"] < 1.0]  # the reference holds 1.0 trivially
    runs: list[list[dict[str, Any]]] = []
    for p in env:
        if runs and (runs[-1][0]["family"] == FEWER) == (p["family"] == FEWER):
            runs[-1].append(p)
        else:
            runs.append([p])
    parts = []
    for run in runs:
        kind = "fewer steps" if run[0]["family"] == FEWER else "caching"
        methods = ", ".join(dict.fromkeys(p["method"] for p in run))
        span = f"{run[0]['macs']:.3f}" + (f"-{run[-1]['macs']:.3f}" if len(run) > 1 else "")
        parts.append(f"{kind} at MACs {span} ({methods})")
    last = env[-1] if env else None
    tail = (
        f"; above {last['macs']:.3f} nothing measured is closer to the reference than {_name(last)} "
        f"({last['distance']:.4f}) until the reference itself"
        if last
        else ""
    )
    return f"{model}: the best method per cost is " + ", then ".join(parts) + tail


def verdicts(model: str, r: dict[str, Any]) -> list[str]:
    comps = [c for c in r["comparisons"] if c["baseline"] is not None]
    better = [c for c in comps if c["verdict"] == "better"]
    worse = [c for c in comps if c["verdict"] == "worse"]
    out = [envelope_sentence(model, r)]
    if better:
        best = min(better, key=lambda c: c["ratio"])
        out.append(
            f"{model}: caching beats the best fewer-steps run of no higher MACs at {len(better)} of {len(comps)} "
            f"settings (beyond one paired s.e.), {len(worse)} lose; the largest win: {best['point']} at MACs "
            f"{best['macs']:.3f}, {best['ratio']:.2f}x the distance of {best['baseline']}; wins lie at MACs "
            f"{min(c['macs'] for c in better):.3f}-{max(c['macs'] for c in better):.3f}"
        )
    elif not comps:
        out.append(f"{model}: every caching setting costs less than the cheapest fewer-steps run; nothing to compare")
    else:
        out.append(
            f"{model}: no caching setting beats the best fewer-steps run of no higher MACs ({len(worse)} of "
            f"{len(comps)} lose beyond one paired s.e., the rest tie): take fewer steps"
        )
    for a in r["at_speedup"]:
        by = "MACs" if a["by"] == "macs" else "measured speed"
        out.append(
            f"at {a['factor']:.0f}x ({by}): best caching {a['a']} {a['a_distance']:.4f} vs best fewer steps "
            f"{a['b']} {a['b_distance']:.4f} (ratio {a['ratio']:.2f}, difference {a['diff']:+.4f} ± {a['se']:.4f})"
        )
    twins = [
        (p, q)
        for p in r["points"]
        for q in r["points"]
        if p["method"] == "first-block" and q["method"] == "diffusers first-block"
        and (p["steps"], p["settings"]) == (q["steps"], q["settings"])
    ]  # fmt: skip
    if twins:
        same = all(p["calls"] == q["calls"] for p, q in twins)
        gap = max(abs(p["distance"] - q["distance"]) for p, q in twins)
        out.append(
            f"cross-check: diffes' first-block rule and diffusers' first-block cache at the same {len(twins)} settings "
            f"{'skip the same steps' if same else 'skip DIFFERENT steps'}; largest distance gap {gap:.2g}"
        )
    for a in r.get("diffes_vs_diffusers", []):
        out.append(
            f"at {a['factor']:.0f}x (MACs): best diffes rule {a['a']} {a['a_distance']:.4f} vs best diffusers hook "
            f"{a['b']} {a['b_distance']:.4f} (ratio {a['ratio']:.2f}, difference {a['diff']:+.4f} ± {a['se']:.4f})"
        )
    return out


# one look per method across the panels: (color, marker); the fewer-steps baselines are lines
STYLE = {
    "dense DDIM": ("tab:red", "."),
    "dense DPM-Solver++": ("tab:purple", "."),
    "interval": ("tab:blue", "o"),
    "interval residual": ("tab:cyan", "s"),
    "first-block": ("tab:green", "D"),
    "TeaCache": ("tab:olive", "^"),
    "MagCache": ("tab:orange", "v"),
    "CEM": ("tab:brown", "P"),
    "diffusers first-block": ("darkgreen", "X"),
    "diffusers MagCache": ("darkorange", "*"),
    "diffusers TaylorSeer": ("tab:pink", "h"),
    "diffusers PAB": ("tab:gray", "p"),
}


def plot(results: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.6), squeeze=False)
    top = max(RULE_STEPS)
    lower = "/".join(str(k) for k in RULE_STEPS if k < top)
    for ax, (model, r) in zip(axes[0], results.items()):
        points = [p for p in r["points"] if p["distance"] > 0]  # the reference itself has no place on a log axis
        methods: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in points:
            methods[p["method"]].append(p)
        for method in sorted(methods, key=lambda m: list(STYLE).index(m) if m in STYLE else len(STYLE)):
            ps = sorted(methods[method], key=lambda p: p["macs"])
            color, marker = STYLE.get(method, ("black", "o"))
            if ps[0]["family"] == FEWER:
                x, y = [p["macs"] for p in ps], [p["distance"] for p in ps]
                ax.plot(x, y, "-", lw=2, color=color, marker=marker, label=method)
                continue
            for filled in (True, False):
                sub = [p for p in ps if (p["steps"] >= top) == filled]
                if sub:
                    x, y = [p["macs"] for p in sub], [p["distance"] for p in sub]
                    fill = "full" if filled else "none"
                    label = method if filled or not any(p["steps"] >= top for p in ps) else None
                    ax.plot(x, y, ls="", color=color, marker=marker, fillstyle=fill, ms=7, label=label)
        env = envelope(points)
        ax.step([p["macs"] for p in env], [p["distance"] for p in env], "k--", lw=0.8, where="post", label="envelope")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("denoiser MACs per image / 50-step dense")
        ax.set_ylabel("held-out distance to 50-step dense")
        ax.set_title(f"{model} (filled: caching at {top} steps, hollow: at {lower})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny settings on dit-digits: a smoke run, < 2 min")
    parser.add_argument("--output", default=None, help="results name in benchmarks/results (default: caching)")
    parser.add_argument("--rerender", action="store_true", help="rewrite the .md and .png from the last run's JSON")
    parser.add_argument("--reference-steps", type=int, default=REFERENCE_STEPS)
    parser.add_argument("--per-class", type=int, default=4, help="held-out probes per class (or prompt)")
    parser.add_argument("--calibration-per-class", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=2.0, help="guidance scale (diffes search's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1000, help="held-out probe seed; calibration uses seed + 1000")
    main(parser.parse_args())
