"""Weight routing on the built-in DiT: stage-switch time, extra resident memory, and how much of the MAC-predicted
speedup routed sampling delivers, for the three router modes and for per-forward index_select slicing.

    python -m benchmarks.routing            # full run, a few minutes on 2 CPU cores
    python -m benchmarks.routing --quick    # smoke run (numbers not meaningful)

Setup. One pruning library is calibrated on dit-digits (Taylor importance, 10 stages of 2 DDIM steps, compensation
Grams collected; 8 calibration probes by default, as only the plans' shapes matter for time and memory). The three
router modes need three library configurations; they differ only in how the same calibration is used (``nested``
sums the per-stage scores into one unit order, ``compensate`` turns the least-squares refit on), so they are derived
from the one calibration with ``dataclasses.replace`` instead of being calibrated three times; ``build_library``
would compute the same scores and Grams for each:

- zero-copy: nested, no compensation (plans are prefix views of the permuted dense weights)
- bank: nested, compensation (prefix views plus one banked compensated consumer per (stage, level))
- gather: not nested, compensation (index_select into preallocated buffers at each stage switch)
- per-forward index_select (the Diff-ES research code's way, implemented here as a baseline): the same plans as
  gather, but every forward of every pruned layer slices its dense weights again with index_select (the plans'
  compensated consumer tensors are assigned as they are); nothing is cached. Its samples must equal gather's.

Sampling batch: ``--probes`` class-conditional probes with classifier-free guidance, i.e. 2 x probes rows per
denoiser call. Wall-clock numbers are medians; every timed routed run is paired with a dense run next to it, and
stage switches with dense calls timed in between, so that load from other processes hits both sides alike. The
JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import save
from diffes.models.loading import fast_cpu_math, load_pipeline
from diffes.models.steps import StepAwareHook, StepHookHandle, attach_hook
from diffes.pruning import PruningConfig, PruningLibrary, build_library
from diffes.pruning.cost import _EXTRA_FLOPS  # the CPU attention kernel's FLOPs, as the library counts them
from diffes.pruning.plan import PrunePlan
from diffes.routing import Router, RoutingSchedule, apply

MIXED = (1, 3, 5, 7, 6, 4, 2, 0, 5, 7)  # every level of the default grid, both directions of change
UNIFORM = (3, 5, 7)
MODES = ("zero-copy", "bank", "gather")
PER_FORWARD = "per-forward index_select"
METHODS = (*MODES, PER_FORWARD)
GOALS = {"switch_fraction": 0.01, "zero_copy_memory": 0.05, "bank_vs_copies": 0.25, "efficiency": 0.85}
FLOAT_BYTES = 4  # the zoo models are float32
Slice = tuple[nn.Parameter, torch.Tensor, int | None, torch.Tensor]  # (param, source, dim or None, kept indices)


# ---- libraries ----


def variant(library: PruningLibrary, nested: bool, compensate: bool) -> PruningLibrary:
    """The same calibration under another ``nested``/``compensate`` setting, with its own (empty) plan cache."""
    config = dataclasses.replace(library.config, nested=nested, compensate=compensate)
    grams = library.grams if compensate else []
    return dataclasses.replace(library, config=config, grams=grams, pinned={}, _cache=OrderedDict())


def mode_libraries(pipe: Any, probes: int, seed: int) -> dict[str, PruningLibrary]:
    config = PruningConfig(importance="taylor", nested=False, compensate=True, calibration_samples=probes, seed=seed)
    base = build_library(pipe, config, progress=False)
    return {
        "zero-copy": variant(base, nested=True, compensate=False),
        "bank": variant(base, nested=True, compensate=True),
        "gather": base,
    }


# ---- per-forward index_select baseline ----


class PerForwardSlicing(StepAwareHook):
    """Routes by slicing: a pre-hook on every pruned layer index_selects its dense weights on each forward.

    Only the stage's attribute overrides (``heads``, sizes) are set at a stage switch; the weight slices are
    recomputed at every call and never kept, as the Diff-ES research code does.
    """

    def __init__(self, model: nn.Module, plans: list[PrunePlan], schedule: RoutingSchedule) -> None:
        super().__init__()
        self.model, self.plans, self.schedule = model, plans, schedule
        self.stage: int | None = None
        self.dense: dict[str, torch.Tensor] = {}
        self.dense_attrs: dict[tuple[str, str], Any] = {}
        self.work: list[dict[str, list[Slice]]] = []
        for plan in plans:
            self.work.append(self._stage_work(plan))
            for module_name, attrs in plan.overrides.items():
                for attr in attrs:
                    self.dense_attrs[(module_name, attr)] = getattr(model.get_submodule(module_name), attr)
        self.handles = [
            model.get_submodule(name).register_forward_pre_hook(self._slicer(name))
            for name in sorted({name for work in self.work for name in work})
        ]

    def _stage_work(self, plan: PrunePlan) -> dict[str, list[Slice]]:
        """Per module: (parameter, dense tensor, dim, kept indices), or (parameter, replacement, None, -)."""
        work: dict[str, list[Slice]] = {}
        for key in sorted({*plan.slices, *plan.replacements}):
            module_name, _, pname = key.rpartition(".")
            param = getattr(self.model.get_submodule(module_name), pname)
            dense = self.dense.setdefault(key, param.data)
            if key in plan.replacements:
                work.setdefault(module_name, []).append((param, plan.replacements[key], None, torch.empty(0)))
            else:
                dim, kept = plan.slices[key]
                work.setdefault(module_name, []).append((param, dense, dim, kept))
        return work

    def _slicer(self, name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            if self.stage is None:
                return
            for param, source, dim, kept in self.work[self.stage].get(name, ()):
                param.data = source if dim is None else source.index_select(dim, kept)

        return hook

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict]:
        stage = self.schedule.stage_at(self.step_info().timestep)
        if stage != self.stage:
            self._restore()
            for module_name, attrs in self.plans[stage].overrides.items():
                for attr, value in attrs.items():
                    setattr(self.model.get_submodule(module_name), attr, value)
            self.stage = stage
        return args, kwargs

    def _restore(self) -> None:
        for key, dense in self.dense.items():
            module_name, _, pname = key.rpartition(".")
            getattr(self.model.get_submodule(module_name), pname).data = dense
        for (module_name, attr), value in self.dense_attrs.items():
            setattr(self.model.get_submodule(module_name), attr, value)
        self.stage = None

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self._restore()


class Removable(Protocol):
    def remove(self) -> None: ...


@dataclasses.dataclass
class SlicingHandle:
    slicing: PerForwardSlicing
    hook: StepHookHandle

    def remove(self) -> None:
        self.hook.remove()
        self.slicing.detach()


def route(pipe: Any, method: str, library: PruningLibrary, schedule: RoutingSchedule) -> Removable:
    """Attach one routing method to ``pipe``; ``remove()`` gives the dense pipeline back."""
    if method in MODES:
        return apply(pipe, library, schedule, mode=method)
    plans = [library.plan(stage, level) for stage, level in enumerate(schedule.levels)]
    slicing = PerForwardSlicing(pipe.denoiser, plans, schedule)
    return SlicingHandle(slicing, attach_hook(pipe, slicing, "bench-per-forward-slicing"))


# ---- measurements ----


def denoiser_call(pipe: Any, probes: int, seed: int) -> Callable[[], object]:
    """One guided denoiser call at the sampling batch (2 x probes rows), mid-trajectory."""
    latents = pipe.prepare_latents(probes, torch.Generator().manual_seed(seed))
    labels = torch.tensor([i % pipe.num_classes for i in range(probes)])
    t = torch.tensor(500)
    return lambda: pipe.predict_noise(latents, t, labels, 2.0)


def time_switches(router: Router, levels: tuple[int, ...], switches: int, call: Callable[[], object]) -> dict:
    """First visits of every stage (plan computed, table built), then ``switches`` prepared switches.

    A dense denoiser call (``call_times_s``) is timed after every tenth switch, so switches and calls are measured
    under the same load.
    """
    call()  # warm-up: the first call at a batch size pays one-time allocation costs
    router.library.clear_cache()
    router.forget()
    cold = []
    for stage, level in enumerate(levels):
        start = time.perf_counter()
        router.set_level(stage, level)
        cold.append(time.perf_counter() - start)
    warm, calls = [], []
    for i in range(switches):
        stage = i % len(levels)
        start = time.perf_counter()
        router.set_level(stage, levels[stage])
        warm.append(time.perf_counter() - start)
        if i % 10 == 9:
            router.reset()
            start = time.perf_counter()
            call()
            calls.append(time.perf_counter() - start)
    return {
        "call_times_s": calls,
        "first_switch_s": cold[0],
        "unprepared_median_s": statistics.median(cold),
        "prepared_median_s": statistics.median(warm),
        "prepared_p90_s": sorted(warm)[int(0.9 * (len(warm) - 1))],
        "switches": switches,
        "profile": switch_profile(router, levels, switches),
    }


def switch_profile(router: Router, levels: tuple[int, ...], switches: int, top: int = 5) -> list[dict[str, Any]]:
    """cProfile of prepared switches: the functions ``set_level`` spends the most time in (own + callees), each
    with its share of the switch and its calls per switch."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(switches):
        stage = i % len(levels)
        router.set_level(stage, levels[stage])
    profiler.disable()
    router.reset()
    entries = pstats.Stats(profiler).stats  # (file, line, name) -> (primitive calls, calls, own, cumulative, callers)
    total = next(cum for (_, _, name), (_, _, _, cum, _) in entries.items() if name == "set_level")
    skip = ("set_level", "decorate_context")  # the profiled call itself, and its no_grad wrapper
    inner = [(key, value) for key, value in entries.items() if key[2] not in skip and "profiler" not in key[2]]
    ranked = sorted(inner, key=lambda kv: -kv[1][3])[:top]
    return [
        {
            "function": f"{name} ({os.path.basename(file)}:{line})",
            "share": cumulative / total,
            "calls_per_switch": calls / switches,
        }
        for (file, line, name), (_, calls, _, cumulative, _) in ranked
    ]


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor reachable through dicts, sequences and dataclasses, but not the model's own parameters (modules
    are not entered)."""
    if isinstance(obj, nn.Parameter):
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors_in(value)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors_in(getattr(obj, f.name))


def _storage_bytes(tensors: Iterable[torch.Tensor], skip: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors``, leaving out the storages in ``skip``."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resident_memory(pipe: Any, library: PruningLibrary, levels: tuple[int, ...], mode: str) -> dict[str, Any]:
    """What routed serving keeps in memory beyond the dense parameters: ``apply`` (every stage prepared), then count.

    ``router_bytes``: every tensor the router holds (banked tensors, gather buffers and index tensors, the
    permutation); ``router.extra_bytes()`` counts only the banked tensors and buffers. ``plan_bytes``: the
    schedule's PrunePlans the library still holds after ``apply`` (LRU cache or pinned). ``served_bytes``: both,
    shared storage counted once. ``plans_if_kept_bytes``: the schedule's plans, whether kept or not.
    """
    model = pipe.denoiser
    pipe.scheduler.set_timesteps(library.schedule.num_steps)
    schedule = RoutingSchedule.from_stages(library.schedule, pipe.scheduler.timesteps, levels)
    handle = apply(pipe, library, schedule, mode=mode)
    try:  # counted while routing is attached: remove() moves the parameters to new (un-permuted) storage
        router = handle.router
        router.reset()  # the dense tensors in the model, so its parameters count in full
        dense = {p.untyped_storage().data_ptr() for p in model.parameters()}
        held = list(_tensors_in([router.buffers, router.positions, router.tables]))
        pairs = set(enumerate(levels))
        kept = {**library._cache, **library.pinned}  # no public view of the plan cache
        kept_tensors = list(_tensors_in([plan for key, plan in kept.items() if key in pairs]))
        out = {
            "dense_param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "extra_bytes_api": router.extra_bytes(),
            "router_bytes": _storage_bytes(held, dense),
            "plan_bytes": _storage_bytes(kept_tensors, dense),
            "served_bytes": _storage_bytes(held + kept_tensors, dense),
        }
    finally:
        handle.remove()
    all_plans = list(_tensors_in([library.plan(stage, level) for stage, level in pairs]))
    out["plans_if_kept_bytes"] = _storage_bytes(all_plans, set())
    out["per_stage_copies_bytes"] = copies = sum(library.costs[lv].params * FLOAT_BYTES for lv in levels if lv > 0)
    dense_bytes = out["dense_param_bytes"]
    for name, key in (("extra_api", "extra_bytes_api"), ("router", "router_bytes"), ("served", "served_bytes")):
        out[f"{name}_over_dense"] = out[key] / dense_bytes
        out[f"{name}_over_copies"] = out[key] / copies
    return out


def calibration_state_bytes(library: PruningLibrary) -> int:
    """Build-time state (Grams, dense consumers, scores): needed to make new plans, not to serve exported ones."""
    tensors = [t for stage in library.grams for t in stage.values()] + list(library.consumers.values())
    tensors += [t for stage in library.scores for t in stage.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def sample_fn(pipe: Any, probes: int, steps: int, seed: int) -> Callable[[], torch.Tensor]:
    labels = [i % pipe.num_classes for i in range(probes)]
    latents = pipe.prepare_latents(probes, torch.Generator().manual_seed(seed))

    def run() -> torch.Tensor:
        out = pipe(labels, num_inference_steps=steps, guidance_scale=2.0, latents=latents.clone(), output_type="pt")
        return out.images

    return run


def time_sampling(
    pipe: Any,
    libraries: dict[str, PruningLibrary],
    schedules: dict[str, tuple[int, ...]],
    sample: Callable[[], torch.Tensor],
    steps: int,
    rounds: int,
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, torch.Tensor]]:
    """(dense, routed) seconds of full sampling runs for every (schedule, method), ``rounds`` pairs each.

    Each routed run is paired with a dense run right next to it (dense first in even rounds, routed first in odd
    ones), so a change of load between configurations hits both sides of a pair alike. Round 0 is warm-up and not
    recorded. Routing is attached before and removed after each routed run, outside the timing.
    """
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps
    configs = {f"{name}/{method}": (method, levels) for name, levels in schedules.items() for method in METHODS}
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in configs}
    images: dict[str, torch.Tensor] = {}
    for r in range(rounds + 1):
        for key, (method, levels) in configs.items():
            library = libraries["gather" if method == PER_FORWARD else method]
            schedule = RoutingSchedule.from_stages(library.schedule, timesteps, levels)
            if r % 2:
                routed, images[key] = _timed_routed(pipe, method, library, schedule, sample)
                dense, images["dense"] = _timed(sample)
            else:
                dense, images["dense"] = _timed(sample)
                routed, images[key] = _timed_routed(pipe, method, library, schedule, sample)
            if r > 0:
                times[key].append((dense, routed))
    return times, images


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _timed_routed(
    pipe: Any, method: str, library: PruningLibrary, schedule: RoutingSchedule, sample: Callable[[], torch.Tensor]
) -> tuple[float, torch.Tensor]:
    handle = route(pipe, method, library, schedule)
    try:
        return _timed(sample)
    finally:
        handle.remove()


def speedups(
    times: dict[str, list[tuple[float, float]]], schedules: dict[str, tuple[int, ...]], library: PruningLibrary
) -> dict[str, dict[str, Any]]:
    """Per (schedule, method): median over pairs of dense/routed time, against 1 / mean relative MACs per step."""
    out: dict[str, dict[str, Any]] = {}
    for name, levels in schedules.items():
        predicted = 1.0 / library.stage_cost(levels)
        for method in METHODS:
            pairs = times[f"{name}/{method}"]
            measured = statistics.median(d / t for d, t in pairs)
            out[f"{name}/{method}"] = {
                "schedule": name,
                "levels": list(levels),
                "method": method,
                "dense_s": statistics.median(d for d, _ in pairs),
                "routed_s": statistics.median(t for _, t in pairs),
                "speedup": measured,
                "predicted_speedup": predicted,
                "efficiency": measured / predicted,
            }
    return out


def call_time_by_level(model: nn.Module, library: PruningLibrary, call: Callable[[], object], repeats: int) -> dict:
    """Median time of one denoiser call routed to each uniform level, and a fit time = fixed + slope x MACs ratio.

    The levels take turns call by call, so load from other processes hits them alike. The fixed part is what does
    not shrink with MACs; it bounds the efficiency any routing method can reach.
    """
    router = Router(model, library, mode="zero-copy")
    times: list[list[float]] = [[] for _ in range(library.num_levels)]
    try:
        for r in range(repeats + 1):
            for level in range(library.num_levels):
                router.set_level(0, level)
                start = time.perf_counter()
                call()
                if r > 0:
                    times[level].append(time.perf_counter() - start)
    finally:
        router.remove()
    seconds = [statistics.median(t) for t in times]
    ratios = [c.macs / library.dense_macs for c in library.costs]
    fixed, slope = _line_fit(ratios, seconds)
    return {
        "macs_ratio": ratios,
        "seconds": seconds,
        "time_ratio": [s / seconds[0] for s in seconds],
        "fit_fixed_s": fixed,
        "fit_slope_s": slope,
        "fixed_share_of_dense": fixed / (fixed + slope),
    }


def _line_fit(x: list[float], y: list[float]) -> tuple[float, float]:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return my - slope * mx, slope


PARTS = {
    "norm1": "adaLN-Zero (timestep+class embedding, modulation linear, layer norm)",
    "attn1": "attention (q/k/v/out projections, SDPA)",
    "norm3": "layer norm before MLP",
    "ff": "MLP",
    "pos_embed": "patch embedding + output head",
    "norm_out": "patch embedding + output head",
    "proj_out_1": "patch embedding + output head",
    "proj_out_2": "patch embedding + output head",
}


def module_breakdown(model: nn.Module, call: Callable[[], object], repeats: int) -> dict[str, float]:
    """Mean seconds per call spent in each part of the DiT (forward hooks); the rest is block glue and Python."""
    spent: dict[str, float] = {}
    starts: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        part = PARTS.get(name.rpartition(".")[2])
        if part is None:
            continue

        def pre(m: nn.Module, a: Any, name: str = name) -> None:
            starts[name] = time.perf_counter()

        def post(m: nn.Module, a: Any, o: Any, name: str = name, part: str = part) -> None:
            spent[part] = spent.get(part, 0.0) + time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        call()
        spent.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        total = (time.perf_counter() - start) / repeats
    finally:
        for h in handles:
            h.remove()
    out = {part: s / repeats for part, s in spent.items()}
    out["block glue, guidance, Python"] = total - sum(out.values())
    out["total"] = total
    return out


def part_macs(model: nn.Module, call: Callable[[], object]) -> dict[str, float]:
    """MACs of one call in each part of the DiT, counted as the library counts them (torch's FLOP counter)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        call()
    out: dict[str, float] = {}
    for key, flops in counter.get_flop_counts().items():
        part = PARTS.get(key.rpartition(".")[2])
        if part is not None and "." in key:
            out[part] = out.get(part, 0.0) + sum(flops.values()) / 2
    return out


def breakdown_dense_vs(model: nn.Module, library: PruningLibrary, level: int, call: Callable[[], object]) -> dict:
    """Time and MACs of each part of a denoiser call, dense and routed to ``level``."""
    dense, dense_macs = module_breakdown(model, call, repeats=20), part_macs(model, call)
    router = Router(model, library, mode="zero-copy")
    try:
        router.set_level(0, level)
        pruned, pruned_macs = module_breakdown(model, call, repeats=20), part_macs(model, call)
    finally:
        router.remove()
    total_macs = sum(dense_macs.values())
    parts = {}
    for p in dense:
        parts[p] = {"dense_s": dense[p], "pruned_s": pruned[p], "ratio": pruned[p] / dense[p]}
        if p in dense_macs:
            parts[p]["macs_share"] = dense_macs[p] / total_macs
            parts[p]["macs_ratio"] = pruned_macs[p] / dense_macs[p]
    return {"level": level, "macs_ratio": library.costs[level].macs / library.dense_macs, "parts": parts}


# ---- report ----


def _goal(value: float, key: str, at_most: bool, **extra: float) -> dict[str, Any]:
    bound = GOALS[key]
    met = value <= bound if at_most else value >= bound
    return {"value": value, "goal": f"{'<=' if at_most else '>='} {bound}", "met": met, **extra}


def goals(modes: dict[str, dict], sampling: dict[str, dict]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode, m in modes.items():
        out[f"{mode}: switch / call"] = _goal(m["switch"]["prepared_median_s"] / m["call_s"], "switch_fraction", True)
        out[f"{mode}: efficiency (mixed)"] = _goal(sampling[f"mixed/{mode}"]["efficiency"], "efficiency", False)
    zc, bank = modes["zero-copy"]["memory"], modes["bank"]["memory"]
    out["zero-copy: resident memory / dense"] = _goal(
        zc["served_over_dense"], "zero_copy_memory", True, router_only=zc["router_over_dense"]
    )
    out["bank: resident memory / per-stage copies"] = _goal(
        bank["served_over_copies"], "bank_vs_copies", True, router_only=bank["router_over_copies"]
    )
    return out


def explain(modes: dict, levels: dict, breakdown: dict, sampling: dict) -> list[str]:
    """Measured reasons for the misses: where a stage switch spends its time, and why wall-clock speedup falls
    short of the MAC prediction."""
    notes = []
    for mode, m in modes.items():
        sw = m["switch"]
        top = ", ".join(
            f"{e['function']} {100 * e['share']:.0f}% ({e['calls_per_switch']:.0f} calls)" for e in sw["profile"]
        )
        notes.append(
            f"{mode} switch: {1e6 * sw['prepared_median_s']:.0f} us = {100 * sw['prepared_median_s'] / m['call_s']:.2f}"
            f"% of a call; under cProfile, share of a switch spent in (with callees) and calls per switch: {top}."
        )
    zc, bank = modes["zero-copy"]["memory"], modes["bank"]["memory"]
    notes.append(
        f"The schedule's plans: zero-copy {_mb(zc['plans_if_kept_bytes'])} (int64 kept-index tensors of every sliced "
        f"tensor, {100 * zc['plans_if_kept_bytes'] / zc['dense_param_bytes']:.1f}% of dense, although a nested plan "
        f"is a prefix whose length would do); bank {_mb(bank['plans_if_kept_bytes'])} (the same indices plus the "
        "compensated consumers in sorted order, which the router holds again, reordered, in its bank). The router "
        "does not read them once its tables are built; after `apply` the library still held "
        f"{_mb(zc['plan_bytes'])} (zero-copy) and {_mb(bank['plan_bytes'])} (bank) of them."
    )
    fixed = levels["fixed_share_of_dense"]

    def bound(macs_ratio: float) -> float:  # efficiency if time = fixed + (1 - fixed) x MACs ratio
        return macs_ratio / (fixed + (1 - fixed) * macs_ratio)

    mixed = 1 / sampling["mixed/bank"]["predicted_speedup"]
    ratio = breakdown["macs_ratio"]
    notes += [
        f"Denoiser call time vs MACs ratio over the {len(levels['seconds'])} uniform levels fits time = "
        f"{1e3 * levels['fit_fixed_s']:.2f} ms + {1e3 * levels['fit_slope_s']:.2f} ms x MACs ratio: "
        f"{100 * fixed:.0f}% of a dense call does not shrink with MACs. Any routing method is then bounded to "
        f"efficiency {bound(mixed):.2f} on the mixed schedule (mean MACs ratio {mixed:.2f}) and {bound(ratio):.2f} "
        f"at level {breakdown['level']} (MACs ratio {ratio:.2f}).",
    ]
    parts = sorted(breakdown["parts"].items(), key=lambda kv: -kv[1]["dense_s"])
    total = breakdown["parts"]["total"]["dense_s"]
    shares = "; ".join(
        f"{p}: {100 * v['dense_s'] / total:.0f}% of the time"
        + (f" and {100 * v['macs_share']:.0f}% of the MACs" if "macs_share" in v else " and no MACs")
        + f", {1e3 * v['dense_s']:.2f} -> {1e3 * v['pruned_s']:.2f} ms (time x{v['ratio']:.2f}"
        + (f", MACs x{v['macs_ratio']:.2f})" if "macs_ratio" in v else ")")
        for p, v in parts
        if p != "total"
    )
    notes.append(f"Per part of a dense call, and dense -> level {breakdown['level']} (MACs x{ratio:.2f}): {shares}.")
    pf, gather = sampling.get(f"mixed/{PER_FORWARD}"), sampling.get("mixed/gather")
    if pf and gather:
        notes.append(
            f"Per-forward index_select reaches speedup {pf['speedup']:.2f}x where gather routing (same plans, "
            f"slices made once per stage switch) reaches {gather['speedup']:.2f}x."
        )
    return notes


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MB"


def markdown(payload: dict[str, Any]) -> str:
    modes, sampling, setup = payload["modes"], payload["sampling"], payload["setup"]
    lines = [
        f"DiT `dit-digits`, schedule {setup['mixed_levels']} (10 stages x {setup['steps'] // 10} DDIM steps, "
        f"{setup['probes']} probes with CFG = batch {2 * setup['probes']} per denoiser call, "
        f"{setup['torch_threads']} CPU threads); load average {payload['load_average']['before'][0]:.1f} before, "
        f"{payload['load_average']['after'][0]:.1f} after.",
        "",
        "| mode | stage switch, prepared (share of a denoiser call; goal <= 1%) | first switch, unprepared | extra "
        "memory held by the router (% of dense; % of per-stage copies) | resident: same + plans the library "
        "still holds after `apply` | speedup measured / MACs-predicted = efficiency (goal >= 0.85) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode, m in modes.items():
        mem, sw, s = m["memory"], m["switch"], sampling[f"mixed/{mode}"]
        frac = sw["prepared_median_s"] / m["call_s"]
        lines.append(
            f"| {mode} | {1e6 * sw['prepared_median_s']:.0f} us ({100 * frac:.2f}% {_ok(frac, 'switch_fraction')}) | "
            f"{1e3 * sw['first_switch_s']:.1f} ms | {_memory(mode, mem, 'router')} | {_memory(mode, mem, 'served')} | "
            f"{s['speedup']:.2f}x / {s['predicted_speedup']:.2f}x = {s['efficiency']:.2f} "
            f"{_ok(s['efficiency'], 'efficiency')} |"
        )
    pf = sampling[f"mixed/{PER_FORWARD}"]
    lines.append(
        f"| {PER_FORWARD} | - | - | - | plans only | {pf['speedup']:.2f}x / {pf['predicted_speedup']:.2f}x = "
        f"{pf['efficiency']:.2f} {_ok(pf['efficiency'], 'efficiency')} |"
    )
    lines += [
        "",
        f"Dense denoiser call: {1e3 * payload['call_s']:.1f} ms; dense parameters "
        f"{_mb(payload['dense_param_bytes'])}; one pruned copy per pruned stage (MosaicDiff-style; "
        f"the dense stage uses the dense model) {_mb(modes['bank']['memory']['per_stage_copies_bytes'])}. "
        "Memory goals: zero-copy <= 5% of dense, bank "
        "<= 25% of the per-stage copies. The router's memory counts every tensor it holds (banked tensors, gather "
        "buffers and indices, the permutation), measured after `apply` prepared every stage; plans the library "
        "still holds then (LRU cache, or pinned when loaded from an exported checkpoint) are counted next to it.",
        "",
        "| schedule | MACs-predicted speedup | " + " | ".join(METHODS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in METHODS) + " |",
    ]
    for name in payload["schedules"]:
        row = [sampling[f"{name}/{m}"] for m in METHODS]
        cells = " | ".join(f"{r['speedup']:.2f}x ({r['efficiency']:.2f})" for r in row)
        lines.append(f"| {name} {row[0]['levels']} | {row[0]['predicted_speedup']:.2f}x | {cells} |")
    lines += [
        "",
        f"Speedup of routed over dense sampling, {setup['rounds']} paired runs each (efficiency = measured / "
        "predicted in parentheses). Per-forward index_select samples equal gather's bit for bit: "
        f"{payload['per_forward_equals_gather']}.",
    ]
    missed = [k for k, g in payload["goals"].items() if not g["met"]]
    lines += ["", f"Goals missed: {', '.join(missed) if missed else 'none'}.", ""]
    lines += [f"- {note}" for note in payload["explanations"]]
    return "\n".join(lines)


def _memory(mode: str, mem: dict[str, Any], which: str) -> str:
    dense, copies = mem[f"{which}_over_dense"], mem[f"{which}_over_copies"]
    dense_mark = f" {_ok(dense, 'zero_copy_memory')}" if mode == "zero-copy" else ""
    copies_mark = f" {_ok(copies, 'bank_vs_copies')}" if mode == "bank" else ""
    return f"{_mb(mem[f'{which}_bytes'])} ({100 * dense:.1f}%{dense_mark}; {100 * copies:.1f}%{copies_mark})"


def _ok(value: float, goal: str) -> str:
    met = value >= GOALS[goal] if goal == "efficiency" else value <= GOALS[goal]
    return "met" if met else "**missed**"


# ---- main ----


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> None:
    fast_cpu_math()
    started, load_before = time.perf_counter(), os.getloadavg()
    pipe = load_pipeline("dit-digits", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    model = pipe.denoiser
    log(started, "calibrating the library")
    libraries = mode_libraries(pipe, args.calibration_probes, args.seed)
    call = denoiser_call(pipe, args.probes, args.seed)
    modes = {}
    for mode, library in libraries.items():
        log(started, f"{mode}: stage switches and memory")
        router = Router(model, library, mode=mode)
        try:
            switch = time_switches(router, MIXED, args.switches, call)
        finally:
            router.remove()
        modes[mode] = {"switch": switch, "memory": resident_memory(pipe, library, MIXED, mode)}
    call_s = statistics.median(t for m in modes.values() for t in m["switch"].pop("call_times_s"))
    for m in modes.values():
        m["call_s"] = call_s  # one dense call, timed between the switches of all three modes
    schedules = {"mixed": MIXED, **{f"uniform-{lv}": (lv,) * 10 for lv in UNIFORM}}
    sample = sample_fn(pipe, args.probes, args.steps, args.seed)
    log(
        started,
        f"sampling: {len(schedules) * len(METHODS)} routed configurations, each paired with dense, x{args.rounds}",
    )
    times, images = time_sampling(pipe, libraries, schedules, sample, args.steps, args.rounds)
    sampling = speedups(times, schedules, libraries["bank"])
    log(started, "denoiser call time per level, and per part")
    by_level = call_time_by_level(model, libraries["zero-copy"], call, args.call_repeats)
    breakdown = breakdown_dense_vs(model, libraries["zero-copy"], max(UNIFORM), call)
    payload: dict[str, Any] = {
        "setup": {
            "model": "dit-digits",
            "mixed_levels": list(MIXED),
            "level_fractions": list(libraries["bank"].config.levels),
            "steps": args.steps,
            "probes": args.probes,
            "denoiser_batch": 2 * args.probes,
            "guidance_scale": 2.0,
            "calibration": {"importance": "taylor", "probes": args.calibration_probes, "stages": 10},
            "rounds": args.rounds,
            "torch_threads": torch.get_num_threads(),
        },
        "call_s": call_s,
        "dense_param_bytes": modes["zero-copy"]["memory"]["dense_param_bytes"],
        "calibration_state_bytes": calibration_state_bytes(libraries["gather"]),
        "modes": modes,
        "schedules": {name: list(levels) for name, levels in schedules.items()},
        "sampling": sampling,
        "sampling_times_s": times,
        "per_forward_equals_gather": bool(torch.equal(images[f"mixed/{PER_FORWARD}"], images["mixed/gather"])),
        "call_time_by_level": by_level,
        "breakdown": breakdown,
    }
    payload["goals"] = goals(modes, sampling)
    payload["explanations"] = explain(modes, by_level, breakdown, sampling)
    payload["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    payload["runtime_s"] = time.perf_counter() - started
    if args.quick:
        print(markdown(payload))
    else:
        save("routing", payload, markdown(payload))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=32, help="sampling probes (denoiser batch = 2 x probes)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per sampling run")
    parser.add_argument(
        "--calibration-probes", type=int, default=8, help="library calibration probes (only plan shapes matter here)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed sampling rounds (after one warm-up round)")
    parser.add_argument("--switches", type=int, default=500)
    parser.add_argument("--call-repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny calibration, 1 round, nothing saved")
    cli = parser.parse_args()
    if cli.quick:
        cli.probes, cli.calibration_probes, cli.rounds, cli.switches, cli.call_repeats = 8, 2, 1, 20, 3
    torch.set_num_threads(cli.threads)
    main(cli)
