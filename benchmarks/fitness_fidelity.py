"""Fitness fidelity: does the cheap search-time fitness rank schedules the way a held-out evaluation does?

Random budget-feasible schedules (plus the uniform schedule of each budget) of the built-in DiT are scored twice:

- search time: the fitness the search sees, on its default probes (2 per class, seed 0), for every metric;
- held out: 8x the probes from another seed, by (a) class accuracy of the pruned samples, (b) the Frechet distance
  in classifier features to the dense teacher's samples of the same probes, (c) the mean classifier-feature
  distance to the teacher.

Every fitness is a distance (lower is better) and every held-out measure is taken lower-is-better (accuracy as the
error rate ``1 - accuracy``), so a Spearman rho of +1 means the fitness ranks schedules exactly as the held-out
evaluation does. Goal: rho >= 0.8 for the zoo's default metric.

    python -m benchmarks.fitness_fidelity            # 10-15 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.common import save
from diffes.errors import MissingWeightsError
from diffes.fitness import (
    Metric,
    class_accuracy,
    classifier_features,
    frechet_distance,
    get_metric,
)
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.adapters import Guidance, SamplingAdapter, adapter_for
from diffes.models.loading import fast_cpu_math, load_pipeline
from diffes.pruning import PruningConfig, PruningLibrary, build_library
from diffes.routing import Router
from diffes.runs.config import default_metric
from diffes.search.genome import Budget, Genome
from diffes.search.operators import fill_budget, shaped_genomes

SEARCH_METRICS = ("classifier", "mse", "ssim", "psnr", "lpips-random", "lpips")
# Held-out measures, all lower-is-better; "error" is 1 - class accuracy.
MEASURES = {"frechet": "Frechet distance", "error": "1 - class accuracy", "distance": "classifier distance"}
# The default is chosen by these two measures (the brief: Frechet distance and accuracy).
DECIDING = ("frechet", "error")
GOAL = 0.8
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Schedule:
    budget: float
    kind: str  # "uniform" or "random"
    genome: Genome
    cost: float  # mean relative MACs per step


@dataclass(frozen=True)
class Bench:
    """The shared model, its pruning library and the router every evaluator uses."""

    adapter: SamplingAdapter
    library: PruningLibrary
    router: Router


def build_bench(args: argparse.Namespace) -> Bench:
    pipe = load_pipeline("dit-digits", device="cpu")
    config = PruningConfig(
        stages=args.stages, steps=args.steps, calibration_samples=32, importance="taylor", compensate=True
    )
    library = build_library(pipe, config, progress=False)
    return Bench(adapter_for(pipe), library, Router(pipe.denoiser, library))


def make_budget(library: PruningLibrary, fraction: float) -> Budget:
    steps = library.schedule.num_steps
    weights = [n / steps for n in library.schedule.stage_lengths()]
    costs = [c.macs / library.costs[0].macs for c in library.costs]
    return Budget(weights, costs, fraction)


def draw_schedules(library: PruningLibrary, budgets: Sequence[float], per_budget: int, seed: int) -> list[Schedule]:
    """Per budget: its uniform schedule and ``per_budget - 1`` distinct random schedules filled up to the budget."""
    rng = random.Random(seed)
    schedules: list[Schedule] = []
    for fraction in budgets:
        budget = make_budget(library, fraction)
        uniform = shaped_genomes(budget)["uniform"]
        seen = {s.genome for s in schedules} | {uniform}
        schedules.append(Schedule(fraction, "uniform", uniform, library.stage_cost(uniform)))
        for genome in random_schedules(budget, per_budget - 1, rng, seen):
            schedules.append(Schedule(fraction, "random", genome, library.stage_cost(genome)))
    return schedules


def random_schedules(budget: Budget, n: int, rng: random.Random, seen: set[Genome]) -> list[Genome]:
    """Up to ``n`` random levels per stage, each repaired and filled to the budget edge, none already ``seen``."""
    drawn: list[Genome] = []
    for _ in range(50 * n):
        if len(drawn) == n:
            break
        genome = fill_budget([rng.randrange(budget.num_levels) for _ in range(budget.num_stages)], budget, rng)
        if genome not in seen:
            seen.add(genome)
            drawn.append(genome)
    return drawn


def load_metrics(names: Sequence[str]) -> tuple[dict[str, Metric], dict[str, str]]:
    """The metrics that can be built here, and for the others why not (LPIPS needs backbone weights offline)."""
    metrics: dict[str, Metric] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            metrics[name] = get_metric(name)
        except MissingWeightsError as e:
            unavailable[name] = f"unavailable offline: {e}"
    return metrics, unavailable


def make_evaluator(bench: Bench, per_class: int, seed: int, args: argparse.Namespace) -> Evaluator:
    guidance = Guidance("cfg", args.guidance)
    probes = make_probes(bench.adapter, list(range(10)), per_class, seed, guidance)
    teacher = Teacher.compute(bench.adapter, probes, args.steps, guidance)
    metric = get_metric("classifier")
    return Evaluator(bench.adapter, bench.router, teacher, metric, bench.library.schedule)


def search_fitness(evaluator: Evaluator, metrics: dict[str, Metric], genome: Genome) -> dict[str, float]:
    """Every metric's fitness of ``genome``: what ``Evaluator.evaluate`` returns with that metric, one sampling."""
    images = evaluator.sample(genome)
    return {name: float(metric(images, evaluator.teacher.images).mean()) for name, metric in metrics.items()}


def heldout_quality(evaluator: Evaluator, teacher_features: torch.Tensor, genome: Genome) -> dict[str, float]:
    """Held-out measures of ``genome`` (all lower-is-better but ``accuracy``, kept for the record)."""
    images = evaluator.sample(genome)
    features = classifier_features(images)
    accuracy = class_accuracy(images, torch.tensor(evaluator.teacher.probes.conditions))
    return {
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "frechet": frechet_distance(features, teacher_features),
        "distance": float(evaluator.metric(images, evaluator.teacher.images).mean()),
        **split_half_frechet(features, teacher_features),
    }


def split_half_frechet(features: torch.Tensor, teacher_features: torch.Tensor) -> dict[str, float]:
    """Frechet distance on each half of the held-out probes (class-balanced: probes cycle through the classes).

    How well the two halves rank schedules alike bounds how well any fitness can agree with the held-out measure.
    """
    half = len(features) // 2
    return {
        "frechet_half_a": frechet_distance(features[:half], teacher_features[:half]),
        "frechet_half_b": frechet_distance(features[half:], teacher_features[half:]),
    }


def check_search_path(evaluator: Evaluator, genome: Genome, expected: float) -> None:
    """The one-sampling shortcut must give exactly the search's own fitness (Evaluator.evaluate)."""
    got = evaluator.evaluate([genome])[0]
    if got != expected:
        raise AssertionError(f"Evaluator.evaluate({genome}) = {got!r} but metric(sample) = {expected!r}")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rho, or None when it is undefined (fewer than 3 points or a constant side)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


Pairs = tuple[list[float], list[float]]


def resample(pairs: Pairs, rng: np.random.Generator) -> Pairs:
    x, y = pairs
    idx = rng.integers(0, len(x), len(x))
    return [x[i] for i in idx], [y[i] for i in idx]


def interval(values: list[float]) -> list[float] | None:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def overall_rho(pairs: Pairs, rng: np.random.Generator) -> dict[str, Any]:
    """rho over all schedules and its 95% bootstrap interval (schedules resampled with replacement)."""
    boot = [rho(*resample(pairs, rng)) for _ in range(BOOTSTRAP)]
    return {"rho": rho(*pairs), "ci95": interval([v for v in boot if v is not None])}


def within_budget_rho(groups: dict[str, Pairs], rng: np.random.Generator) -> dict[str, Any]:
    """rho inside each budget, their mean, and the mean's 95% bootstrap interval (resampling inside each budget)."""
    boot = [mean_defined([rho(*resample(g, rng)) for g in groups.values()]) for _ in range(BOOTSTRAP)]
    per_budget = {name: rho(*g) for name, g in groups.items()}
    return {
        "budget": per_budget,
        "mean": mean_defined(list(per_budget.values())),
        "ci95": interval([v for v in boot if v is not None]),
    }


def correlations(rows: list[dict[str, Any]], metrics: Sequence[str], budgets: Sequence[float]) -> dict[str, Any]:
    """For each metric and held-out measure: rho over all schedules and rho within each budget."""
    rng = np.random.default_rng(0)

    def pairs(sub: list[dict[str, Any]], metric: str, measure: str) -> Pairs:
        return [r["search"][metric] for r in sub], [r["heldout"][measure] for r in sub]

    table: dict[str, Any] = {}
    for metric in metrics:
        table[metric] = {}
        for measure in MEASURES:
            groups = {str(b): pairs([r for r in rows if r["budget"] == b], metric, measure) for b in budgets}
            table[metric][measure] = {
                "all": overall_rho(pairs(rows, metric, measure), rng),
                "within": within_budget_rho(groups, rng),
            }
    return table


def reliability(rows: list[dict[str, Any]], budgets: Sequence[float]) -> dict[str, Any]:
    """Split-half rho of the held-out Frechet distance (80 vs 80 probes): how noisy the held-out ranking itself is."""

    def halves(sub: list[dict[str, Any]]) -> float | None:
        return rho([r["heldout"]["frechet_half_a"] for r in sub], [r["heldout"]["frechet_half_b"] for r in sub])

    return {"all": halves(rows), "budget": {str(b): halves([r for r in rows if r["budget"] == b]) for b in budgets}}


def rank_key(entry: dict[str, Any]) -> tuple[float, float]:
    """Mean within-budget rho against the deciding measures that are defined; ties: the same over all schedules.

    Within a budget comes first because that is the only comparison a search makes: every candidate obeys one budget
    and the operators push it to the budget's edge. Across budgets every metric sees that sparser is worse.
    """
    within = mean_defined([entry[m]["within"]["mean"] for m in DECIDING])
    overall = mean_defined([entry[m]["all"]["rho"] for m in DECIDING])
    return (-np.inf if within is None else within, -np.inf if overall is None else overall)


def analyse(rows: list[dict[str, Any]], metrics: Sequence[str], budgets: Sequence[float]) -> dict[str, Any]:
    """Correlations, the held-out measure's own noise, and the recommended default metric."""
    corr = correlations(rows, metrics, budgets)
    ranked = sorted(corr, key=lambda name: rank_key(corr[name]), reverse=True)
    accuracies = [r["heldout"]["accuracy"] for r in rows]
    split = reliability(rows, budgets)
    return {
        "correlations": corr,
        "ranking": ranked,
        "frechet_split_half": split,
        "heldout_accuracy_range": [min(accuracies), max(accuracies)],
        "recommended_metric": ranked[0],
        "goal": verdicts(corr[ranked[0]], accuracies),
        "recommendation": recommendation(corr, ranked, split, current=default_metric("dit-digits", None)),
    }


def goal_status(value: float | None) -> str:
    return "undefined" if value is None else f"{'met' if value >= GOAL else 'NOT met'} ({value:+.2f})"


def verdicts(entry: dict[str, Any], accuracies: Sequence[float]) -> dict[str, str]:
    """Per deciding measure: whether rho >= GOAL over all schedules and within budgets, or why rho is undefined."""
    out = {}
    for measure in DECIDING:
        overall, within = entry[measure]["all"]["rho"], entry[measure]["within"]
        if overall is None:
            what = f"class accuracy is {100 * accuracies[0]:.1f}%" if measure == "error" else "it is constant"
            out[measure] = f"undefined ({what} for every schedule, so it cannot rank them)"
            continue
        per_budget = ", ".join(f"{b}: {goal_status(v)}" for b, v in within["budget"].items())
        out[measure] = (
            f"over all schedules {goal_status(overall)}; within budgets (mean) {goal_status(within['mean'])} "
            f"[{per_budget}]"
        )
    return out


def recommendation(corr: dict[str, Any], ranked: list[str], split: dict[str, Any], current: str) -> str:
    best, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
    action = f"keep `{best}`" if best == current else f"switch from `{current}` to `{best}`"
    within, overall = rank_key(corr[best])
    text = (
        f"{action} as the zoo default: it has the highest mean within-budget rho against the defined deciding measures "
        f"({within:+.2f}; {overall:+.2f} over all schedules)."
    )
    ci = corr[best]["frechet"]["within"]["ci95"]
    if runner_up is not None and ci is not None and rank_key(corr[runner_up])[0] >= ci[0]:
        text += (
            f" The runner-up `{runner_up}` ({rank_key(corr[runner_up])[0]:+.2f}) is inside its 95% interval "
            f"[{ci[0]:+.2f}, {ci[1]:+.2f}], so the two are statistically tied on this evidence."
        )
    misses = {b: v for b, v in corr[best]["frechet"]["within"]["budget"].items() if v is not None and v < GOAL}
    if misses:
        where = ", ".join(f"{b} ({v:+.2f}; held-out split-half {fmt(split['budget'][b])})" for b, v in misses.items())
        text += (
            f" Within budget {where} it misses the {GOAL} goal: close calls between schedules of the same cost are "
            "partly probe noise, on both sides when the held-out halves disagree as much. Score the final generations "
            "on more probes per class, or re-score the search's final front on held-out probes."
        )
    return text


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def fmt_ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def per_budget(values: dict[str, float | None]) -> str:
    return " / ".join(fmt(v) for v in values.values())


def table_row(name: str, entry: dict[str, Any], mark: str) -> str:
    overall = [f"{fmt(entry[m]['all']['rho'])}{fmt_ci(entry[m]['all']['ci95'])}" for m in MEASURES]
    within = entry["frechet"]["within"]
    cells = [*overall, per_budget(within["budget"]), f"{fmt(within['mean'])}{fmt_ci(within['ci95'])}"]
    return f"| {name}{mark} | {' | '.join(cells)} |"


def markdown(payload: dict[str, Any]) -> str:
    corr, best = payload["correlations"], payload["recommended_metric"]
    budgets = " / ".join(str(b) for b in payload["budgets"])
    acc = payload["heldout_accuracy_range"]
    split = payload["frechet_split_half"]
    lines = [
        f"Fitness fidelity on dit-digits: {payload['schedules']} schedules (budgets {budgets} of dense MACs, uniform "
        f"ones included), search fitness on {payload['search_probes']} probes (seed {payload['search_seed']}), "
        f"held-out on {payload['heldout_probes']} probes (seed {payload['heldout_seed']}). Spearman rho, oriented so "
        "+1 = the fitness (a distance, lower better) ranks schedules exactly as the held-out measure (lower better; "
        "accuracy as 1 - accuracy); 95% bootstrap intervals in brackets.",
        "",
        "| search metric | vs Frechet, all schedules | vs 1-accuracy, all | vs held-out classifier distance, all "
        f"| vs Frechet within budget ({budgets}) | vs Frechet within budget, mean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in corr.items():
        lines.append(table_row(name, entry, " **(recommended)**" if name == best else ""))
    for name, why in payload["unavailable"].items():
        lines.append(f"| {name} | {why.split(':')[0]} | | | | |")
    goal = "; ".join(f"vs {MEASURES[m]}: {v}" for m, v in payload["goal"].items())
    lines += [
        "",
        f"Held-out class accuracy is {100 * acc[0]:.1f}%-{100 * acc[1]:.1f}% over the schedules (dense teacher "
        f"{100 * payload['teacher_heldout_accuracy']:.1f}%). Noise of the held-out measure itself: the Frechet "
        f"distances of two disjoint halves of the held-out probes agree with rho {fmt(split['all'])} over all "
        f"schedules and {per_budget(split['budget'])} within budgets. Both held-out distances live in the digit "
        "classifier's feature space, which favours the `classifier` fitness.",
        "",
        f"Goal rho >= {GOAL} for the chosen default `{best}`: {goal}.",
        "",
        f"Recommendation: {payload['recommendation']}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    fast_cpu_math()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    bench, timings["library"] = timed(lambda: build_bench(args))
    schedules = draw_schedules(bench.library, args.budgets, args.per_budget, args.seed)
    metrics, unavailable = load_metrics(SEARCH_METRICS)
    search, timings["search_teacher"] = timed(
        lambda: make_evaluator(bench, args.search_per_class, args.search_seed, args)
    )
    heldout, timings["heldout_teacher"] = timed(
        lambda: make_evaluator(bench, args.heldout_per_class, args.heldout_seed, args)
    )
    teacher_features = classifier_features(heldout.teacher.images)

    genomes = sorted(s.genome for s in schedules)  # neighbours share stage prefixes
    t = time.perf_counter()
    fitness = {g: search_fitness(search, metrics, g) for g in genomes}
    check_search_path(search, genomes[0], fitness[genomes[0]]["classifier"])
    timings["search_fitness"] = time.perf_counter() - t
    t = time.perf_counter()
    quality = {g: heldout_quality(heldout, teacher_features, g) for g in genomes}
    timings["heldout_eval"] = time.perf_counter() - t
    rows = [
        {"budget": s.budget, "kind": s.kind, "genome": list(s.genome), "cost": s.cost}
        | {"search": fitness[s.genome], "heldout": quality[s.genome]}
        for s in schedules
    ]

    timings["total"] = time.perf_counter() - start
    payload = {
        "model": "dit-digits",
        "steps": args.steps,
        "stages": args.stages,
        "guidance_scale": args.guidance,
        "budgets": list(args.budgets),
        "schedules": len(rows),
        "search_probes": len(search.teacher.probes),
        "search_seed": args.search_seed,
        "heldout_probes": len(heldout.teacher.probes),
        "heldout_seed": args.heldout_seed,
        "orientation": "fitness is a distance (lower better); held-out measures lower better (error = 1 - accuracy)",
        "teacher_heldout_accuracy": class_accuracy(
            heldout.teacher.images, torch.tensor(heldout.teacher.probes.conditions)
        ),
        **analyse(rows, list(metrics), args.budgets),
        "unavailable": unavailable,
        "evaluator_stats": {"search": search.stats.to_dict(), "heldout": heldout.stats.to_dict()},
        "seconds": timings,
        "rows": rows,
    }
    save("fitness_fidelity", payload, markdown(payload))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.35, 0.5, 0.7])
    parser.add_argument("--per-budget", type=int, default=11, help="schedules per budget, the uniform one included")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--search-per-class", type=int, default=2, help="the search's default probe count")
    parser.add_argument("--search-seed", type=int, default=0, help="the search's default probe seed")
    parser.add_argument("--heldout-per-class", type=int, default=16)
    parser.add_argument("--heldout-seed", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random schedules")
    parser.add_argument("--threads", type=int, default=2)
    main(parser.parse_args())
