"""Head-to-head at 70%, 50% and 35% of dense MACs on the built-in DiT: dense, uniform, a MosaicDiff-style
slow-fast-slow heuristic, random search with as many evaluations as the evolutionary search, diffes (GA per
budget), and one NSGA-II run for all budgets; and the dense model itself with the most sampling steps of equal
cost (k of N steps costs k/N), on the pipeline's sampler and on DPM-Solver++. Every row is judged on held-out
probes (8x the search's, other seeds): distance to the teacher, class accuracy, Frechet distance on classifier
features, and the measured wall-clock speedup of sampling.

    python -m benchmarks.search_quality [--generations 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from benchmarks.common import prepared_run, save, temp_config
from diffes.fitness import class_accuracy, classifier_features, frechet_distance, get_metric
from diffes.fitness.baselines import (
    DPM_SOLVER,
    dpm_solver_scheduler,
    equal_cost_steps,
    fewer_steps_baseline,
    sample_steps,
    sampler_name,
    why_no_dpm_solver,
)
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.models.steps import clone_scheduler
from diffes.runs.config import RunConfig
from diffes.runs.context import RunContext, load_context
from diffes.runs.context import plain_budget as make_budget
from diffes.runs.job import uniform_genome
from diffes.search import Budget, best, make_toolbox, pareto_front, run_search
from diffes.search.operators import fill_budget

Genome = tuple[int, ...]
BUDGETS = (0.7, 0.5, 0.35)


def fresh_evaluator(ctx: RunContext) -> Evaluator:
    """Its own memo and cache, sharing the model and router: each search pays for its own evaluations."""
    e = ctx.evaluator
    return Evaluator(e.adapter, e.router, e.teacher, e.metric, e.stages, prefix_cache_mb=e.prefix_cache_mb)


def searched(ctx: RunContext, config: RunConfig, budget: Budget) -> dict[str, Any]:
    evaluator = fresh_evaluator(ctx)
    start = time.perf_counter()
    state = run_search(config.search, budget, make_toolbox(config.search, budget, evaluator.evaluate))
    seconds = time.perf_counter() - start
    return {"state": state, "seconds": seconds, "calls": evaluator.stats.denoiser_calls, "evals": len(state.cache)}


def with_search(config: RunConfig, **changes: Any) -> RunConfig:
    return replace(config, search=replace(config.search, **changes))


def random_search(ctx: RunContext, budget: Budget, evaluations: int, seed: int) -> dict[str, Any]:
    """Random levels, filled up to the budget (as the search's own operators do), scored alike."""
    evaluator, rng = fresh_evaluator(ctx), random.Random(seed)
    genomes: list[Genome] = []
    for _ in range(50 * evaluations):
        g = fill_budget([rng.randrange(budget.num_levels) for _ in range(budget.num_stages)], budget, rng)
        if g not in genomes:
            genomes.append(g)
        if len(genomes) == evaluations:
            break
    start = time.perf_counter()
    scores = evaluator.evaluate(genomes)
    seconds = time.perf_counter() - start
    i = min(range(len(genomes)), key=lambda k: scores[k])
    return {"genome": genomes[i], "fitness": scores[i], "seconds": seconds, "calls": evaluator.stats.denoiser_calls}


@torch.no_grad()
def stage_speeds(ctx: RunContext) -> list[float]:
    """How fast the dense trajectory moves in each stage: mean latent change per step."""
    ctx.router.reset()
    adapter, stages, teacher = ctx.adapter, ctx.library.schedule, ctx.teacher
    scheduler = clone_scheduler(adapter.pipe.scheduler)
    adapter.set_timesteps(scheduler, stages.num_steps)
    prepared = adapter.prepare(teacher.probes.cond, teacher.guidance)
    latents = teacher.probes.latents.clone()
    moves = []
    for t in scheduler.timesteps:
        new = adapter.step(scheduler, latents, t, prepared, teacher.guidance)
        moves.append(float((new - latents).norm() / latents.numel() ** 0.5))
        latents = new
    return [statistics.mean(moves[i] for i in stages.steps_of(s)) for s in range(stages.num_stages)]


def slow_fast_slow(speeds: list[float], budget: Budget) -> Genome:
    """MosaicDiff's rule on three stages: less sparsity where the trajectory changes fastest."""
    n = len(speeds)
    thirds = [range(0, n // 3), range(n // 3, n - n // 3), range(n - n // 3, n)]
    pace = [statistics.mean(speeds[i] for i in part) for part in thirds]
    order = sorted(range(3), key=lambda k: -pace[k])  # fastest first: it gets the densest level
    best_genome, best_key = None, None
    top = budget.max_level
    for a in range(top + 1):
        for b in range(a, top + 1):
            for c in range(b, top + 1):
                levels = [0, 0, 0]
                levels[order[0]], levels[order[1]], levels[order[2]] = a, b, c
                genome = tuple(levels[k] for k, part in enumerate(thirds) for _ in part)
                if budget.feasible(genome):
                    key = (budget.cost(genome), -(c - a))
                    if best_key is None or key > best_key:
                        best_genome, best_key = genome, key
    assert best_genome is not None
    return best_genome


@torch.no_grad()
def held_out(
    ctx: RunContext, heldout: Evaluator, genome: Genome, teacher_feats: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    images = heldout.sample(genome)
    per_probe = heldout.metric(images, heldout.teacher.images)
    return {
        "distance": float(per_probe.mean()),
        "distance_se": float(per_probe.std() / per_probe.numel() ** 0.5),
        "per_probe": per_probe.tolist(),
        "search_fitness": ctx.evaluator.evaluate([genome])[0],
        "accuracy": class_accuracy(images, labels),
        "frechet": frechet_distance(classifier_features(images), teacher_feats),
        "speedup": measured_speedup(heldout, genome),
    }


@torch.no_grad()
def held_out_steps(
    ctx: RunContext, heldout: Evaluator, steps: int, scheduler: Any, teacher_feats: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """A fewer-steps row: the dense model with ``steps`` of N steps on ``scheduler`` (None: the pipeline's), on the
    held-out probes, scored as the schedules are; its speedup is timed against N steps on the pipeline's sampler."""
    n = ctx.library.schedule.num_steps
    images = sample_steps(ctx.adapter, heldout.teacher, steps, scheduler, ctx.router)
    per_probe = heldout.metric(images, heldout.teacher.images)
    search = fewer_steps_baseline(ctx.adapter, ctx.teacher, ctx.evaluator.metric, steps, scheduler, ctx.router)

    def timed(k: int, sched: Any, repeats: int = 3) -> float:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            sample_steps(ctx.adapter, heldout.teacher, k, sched, ctx.router)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    return {
        "steps": steps,
        "num_steps": n,
        "macs": steps / n,
        "distance": float(per_probe.mean()),
        "distance_se": float(per_probe.std() / per_probe.numel() ** 0.5),
        "per_probe": per_probe.tolist(),
        "search_fitness": float(search.mean()),
        "accuracy": class_accuracy(images, labels),
        "frechet": frechet_distance(classifier_features(images), teacher_feats),
        "speedup": timed(n, None) / timed(steps, scheduler),
    }


def measured_speedup(heldout: Evaluator, genome: Genome, repeats: int = 3) -> float:
    def timed(g: Genome) -> float:
        runs = []
        for _ in range(repeats):
            heldout.clear_cache()  # time a full trajectory, not a cache hit
            start = time.perf_counter()
            heldout.sample(g)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    dense = (0,) * len(genome)
    return timed(dense) / timed(genome)


def evals_to_beat(state: Any, target: float) -> int | None:
    """How many evaluations the GA needed before its best beat ``target`` (cache order = evaluation order)."""
    running = float("inf")
    for i, score in enumerate(state.cache.values(), start=1):
        running = min(running, score)
        if running < target:
            return i
    return None


def main(args: argparse.Namespace) -> None:
    text = args.prompts is not None  # a text-to-image model: one prompt per digit, prompt i shows digit i
    values = {"model": args.model, **({"prompts": args.prompts} if text else {})}
    config = temp_config("quality", args.generations, **values)
    run = prepared_run(config, args.threads)
    ctx = load_context(str(run.path))
    ctx.router.reset()
    guidance = ctx.teacher.guidance
    conditions = config.model.conditions(10)
    probes = make_probes(ctx.adapter, conditions, args.heldout_per_class, 1000, guidance, config.model.negative_prompt)
    teacher = Teacher.compute(ctx.adapter, probes, config.pruning.steps, guidance)
    metric = get_metric(config.fitness.metric)
    heldout = Evaluator(ctx.adapter, ctx.router, teacher, metric, ctx.library.schedule)
    teacher_feats = classifier_features(teacher.images)
    speeds = stage_speeds(ctx)
    labels = torch.tensor([conditions.index(c) if text else c for c in probes.conditions])
    results: dict[str, Any] = {"dense": {"accuracy": class_accuracy(teacher.images, labels)}, "model": args.model}
    budgets = [float(b) for b in args.budgets.split(",")]
    dpm = dpm_solver_scheduler(ctx.adapter.pipe.scheduler)
    if dpm is None:
        results["dpm_solver_skipped"] = why_no_dpm_solver(ctx.adapter.pipe.scheduler)
    nsga = None
    if not args.quick:
        nsga_config = with_search(config, algorithm="nsga2", budget=max(budgets))
        nsga = searched(ctx, nsga_config, make_budget(nsga_config, ctx.library))
    for fraction in budgets:
        cfg = with_search(config, budget=fraction)
        budget = make_budget(cfg, ctx.library)
        ga = searched(ctx, cfg, budget)
        rnd = random_search(ctx, budget, ga["evals"], seed=args.seed)
        schedules = {
            "uniform": uniform_genome(budget),
            "random search": rnd["genome"],
            "diffes GA": best(ga["state"])[0],
        }
        if nsga is not None:
            front = [p for p in pareto_front(nsga["state"]) if p[2] <= fraction + 1e-9]
            schedules["slow-fast-slow"] = slow_fast_slow(speeds, budget)
            schedules["diffes NSGA-II"] = min(front, key=lambda p: p[1])[0] if front else None
        row: dict[str, Any] = {}
        for name, genome in schedules.items():
            if genome is None:
                continue
            row[name] = {"genome": list(genome), "macs": ctx.library.stage_cost(genome)}
            row[name].update(held_out(ctx, heldout, genome, teacher_feats, labels))
        n = ctx.library.schedule.num_steps
        k = equal_cost_steps(n, fraction)
        own = sampler_name(ctx.adapter.pipe.scheduler)
        row[f"dense {k}/{n} steps {own}"] = held_out_steps(ctx, heldout, k, None, teacher_feats, labels)
        if dpm is not None:
            row[f"dense {k}/{n} steps {DPM_SOLVER}"] = held_out_steps(ctx, heldout, k, dpm, teacher_feats, labels)
        row["diffes GA"].update(
            search_seconds=ga["seconds"], search_calls=ga["calls"], evaluations=ga["evals"],
            evals_to_beat_random=evals_to_beat(ga["state"], rnd["fitness"]),
        )  # fmt: skip
        row["random search"].update(search_seconds=rnd["seconds"], search_calls=rnd["calls"], evaluations=ga["evals"])
        results[str(fraction)] = row
        print(fraction, {k: round(v["distance"], 5) for k, v in row.items()}, flush=True)
    if nsga is not None:
        results["nsga2_search"] = {"seconds": nsga["seconds"], "calls": nsga["calls"], "evaluations": nsga["evals"]}
    payload = {"config": config.to_dict(), "speeds": speeds, "results": results}
    save(args.output, payload, report(results, budgets))


def report(results: dict[str, Any], budgets: list[float]) -> str:
    dense_acc = results["dense"]["accuracy"]
    lines = [
        "| budget | method | MACs | search fitness (search probes) | held-out distance (± s.e.) | class accuracy | "
        "Frechet (classifier) | speedup (measured) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for fraction in budgets:
        row = results[str(fraction)]
        lines.append(f"| {fraction:.0%} | dense | 100% | 0 | 0 | {dense_acc:.1%} | 0 | 1.00x |")
        for name, r in row.items():
            lines.append(
                f"| {fraction:.0%} | {name} | {r['macs']:.1%} | {r['search_fitness']:.4f} | {r['distance']:.4f} "
                f"± {r['distance_se']:.4f} | {r['accuracy']:.1%} | {r['frechet']:.3f} | {r['speedup']:.2f}x |"
            )
        verdicts.append(_verdict(fraction, row))
        verdicts.extend(
            _fewer_steps_verdict(fraction, name, r, row["diffes GA"]) for name, r in row.items() if "steps" in r
        )
    acc50 = results["0.5"]["diffes GA"]["accuracy"] if "0.5" in results else float("nan")
    verdicts.append(
        f"- 50%: class accuracy {acc50:.1%} vs dense {dense_acc:.1%} (goal within 2 points: "
        f"{'met' if dense_acc - acc50 <= 0.02 else 'NOT met'})"
    )
    if "dpm_solver_skipped" in results:
        verdicts.append(f"- {DPM_SOLVER} not measured: {results['dpm_solver_skipped']}")
    return "\n".join([*lines, "", *verdicts])


def _fewer_steps_verdict(fraction: float, name: str, steps: dict[str, Any], ga: dict[str, Any]) -> str:
    """The honest baseline: the dense model with the steps the budget pays for, against the searched schedule."""
    winner = (
        "the dense model with fewer steps is closer" if steps["distance"] < ga["distance"] else "diffes GA is closer"
    )
    return (
        f"- {fraction:.0%}: {name} (cost {steps['macs']:.0%}) lands at {steps['distance']:.4f} held out, diffes GA "
        f"at {ga['distance']:.4f}: {winner} (diffes GA / fewer steps = {ga['distance'] / steps['distance']:.2f}; "
        f"difference {ga['distance'] - steps['distance']:+.4f} ± {_paired_se(ga['per_probe'], steps['per_probe']):.4f} "
        "s.e.)"
    )


def _paired_se(a: list[float], b: list[float]) -> float:
    """Standard error of the mean per-probe difference: both schedules start from the same noise per probe."""
    diff = torch.tensor(a) - torch.tensor(b)
    return float(diff.std() / len(a) ** 0.5)


def _verdict(fraction: float, row: dict[str, Any]) -> str:
    ga = row["diffes GA"]
    baselines = {n: r for n, r in row.items() if not n.startswith("diffes")}
    name = min(baselines, key=lambda n: baselines[n]["distance"])
    ratio = ga["distance"] / baselines[name]["distance"]
    fixed = {n: ga["distance"] / r["distance"] for n, r in baselines.items() if n != "random search"}
    rnd = baselines["random search"]
    return (
        f"- {fraction:.0%}: diffes GA / best baseline ({name}) held-out distance = {ratio:.2f} (goal <= 0.80: "
        f"{'met' if ratio <= 0.8 else 'NOT met'}); vs "
        + ", ".join(f"{n} {v:.2f}" for n, v in fixed.items())
        + f"; vs random search {ga['distance'] / rnd['distance']:.2f} held out (difference "
        f"{ga['distance'] - rnd['distance']:+.4f} ± {_paired_se(ga['per_probe'], rnd['per_probe']):.4f} s.e.) "
        f"and {ga['search_fitness'] / rnd['search_fitness']:.2f} on the search fitness; diffes needed "
        f"{ga['evals_to_beat_random']} of {ga['evaluations']} evaluations to beat random search's final best"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--model", default="dit-digits", help="zoo model name or pipeline folder")
    parser.add_argument("--prompts", default=None, help="prompts file of a text-to-image model, prompt i = digit i")
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    parser.add_argument("--quick", action="store_true", help="uniform, random search and the GA only")
    parser.add_argument("--output", default="search_quality", help="results name in benchmarks/results")
    parser.add_argument("--heldout-per-class", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
