"""The joint search (steps + per-stage caching + pruning) against the best single method at equal cost.

Same held-out protocol as benchmarks/caching.py: 4 probes per class from seed 1000, scored against the 50-step
dense samples from the same noise with the model's default metric (the zoo classifier's feature distance),
cost = denoiser MACs per image as a fraction of the 50-step dense run. The search itself scores its own probes
(seed 7), so the held-out probes are never seen while searching. For each budget, the held-out distance of
the joint search's best schedule is compared with every single-method point of benchmarks/results/caching.json
that costs no more (fewer steps with DDIM or DPM-Solver++, every caching rule), and with the joint space's own
pure seeds (fewer steps alone, caching alone, pruning alone) re-scored on the held-out probes.

    python -m benchmarks.joint [--quick] [--budgets 0.5,0.25,0.1]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import environment, save
from diffes.fitness import class_accuracy
from diffes.fitness.evaluator import Evaluator
from diffes.fitness.teacher import Teacher, make_probes
from diffes.runs import RunConfig, RunDir
from diffes.runs.context import load_context
from diffes.runs.job import macs_fraction, run_new

RESULTS = Path(__file__).parent / "results"
HELDOUT_SEED, SEARCH_SEED = 1000, 7


def run_search(model: str, budget: float, root: Path, args: argparse.Namespace, prepared: RunDir | None) -> RunDir:
    """One joint search; the library, teacher and joint space of ``prepared`` (same model and settings, another
    budget) are copied in, so only the first budget builds them."""
    values = {
        "model": model, "joint": True, "reference_steps": args.reference_steps, "steps_grid": "auto",
        "cache_every": 3, "stages": args.stages, "steps": args.steps, "calibration_samples": args.calibration,
        "probes": 1, "probe_seed": SEARCH_SEED, "population": args.population, "offspring": args.population,
        "generations": args.generations, "budget": budget, "export": False, "runs_dir": str(root),
        "name": f"joint-{budget}",
    }  # fmt: skip
    config = RunConfig.from_dict(values).resolved()
    run = RunDir.create(config)
    if prepared is not None:
        shutil.copytree(prepared.library_dir, run.library_dir)
        for name in ("teacher.safetensors", "teacher.json", "joint.json"):
            shutil.copy2(prepared.path / name, run.path / name)
    return run_new(run, progress=False).run


def held_out(ctx: Any, teacher: Teacher, labels: torch.Tensor, genomes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    evaluator = Evaluator(ctx.adapter, ctx.router, teacher, ctx.evaluator.metric, ctx.library.schedule,
                          joint=ctx.evaluator.joint)  # fmt: skip
    budget, out = ctx.evaluator.joint, {}
    for name, genome in genomes.items():
        images = evaluator.sample(genome)
        per_probe = evaluator.metric(images, teacher.images).double()
        choice = budget.decode(genome)
        out[name] = {
            "genome": list(genome),
            "steps": choice.steps,
            "every": list(choice.every),
            "levels": list(choice.levels),
            "macs": macs_fraction(budget, ctx.library, genome),
            "distance": float(per_probe.mean()),
            "se": float(per_probe.std() / math.sqrt(len(per_probe))),
            "accuracy": class_accuracy(images, labels),
            "per_probe": per_probe.tolist(),
        }
    return out


def _paired(a: list[float], b: list[float]) -> dict[str, float] | None:
    """Mean and standard error of the per-probe difference (joint - single): the same held-out probes."""
    if len(a) != len(b) or len(a) < 2:
        return None
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return {"mean": float(d.mean()), "se": float(d.std() / math.sqrt(len(d)))}


def best_single(points: list[dict[str, Any]], cost: float) -> dict[str, Any] | None:
    """The lowest held-out distance among single-method points that cost no more."""
    fitting = [p for p in points if p["macs"] <= cost + 1e-9]
    return min(fitting, key=lambda p: p["distance"]) if fitting else None


def run_model(model: str, args: argparse.Namespace, singles: list[dict[str, Any]]) -> dict[str, Any]:
    rows, prepared = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            start = time.perf_counter()
            run = prepared = run_search(model, budget, Path(tmp), args, prepared)
            ctx = load_context(str(run.path))
            conditions = list(range(10))
            probes = make_probes(ctx.adapter, conditions, args.per_class, HELDOUT_SEED, ctx.teacher.guidance)
            teacher = Teacher.compute(ctx.adapter, probes, args.reference_steps, ctx.teacher.guidance)
            labels = torch.tensor([int(c) for c in probes.conditions])
            summary = run.best() or {}
            genomes = {"joint": tuple(summary["genome"])}
            genomes |= {f"{k} alone": tuple(v["genome"]) for k, v in summary.get("single_methods", {}).items()}
            scored = held_out(ctx, teacher, labels, genomes)
            joint = scored["joint"]
            single = best_single(singles, joint["macs"])
            ratio = joint["distance"] / single["distance"] if single and single["distance"] > 0 else None
            paired = _paired(joint["per_probe"], single["per_probe"]) if single and "per_probe" in single else None
            seconds, evaluations = time.perf_counter() - start, summary.get("evaluations")
            rows.append({"budget": budget, "points": scored, "best_single": single, "ratio": ratio, "paired": paired,
                         "search_seconds": seconds, "evaluations": evaluations})  # fmt: skip
            print(f"{model} budget {budget}: joint {joint['distance']:.4f} at {joint['macs']:.3f} MACs "
                  f"({joint['steps']} steps, every {joint['every']}, levels {joint['levels']}); best single "
                  f"{single and single['distance']:.4f} ({single and single['name']})", flush=True)  # fmt: skip
    return {"model": model, "rows": rows}


def single_points(model: str) -> list[dict[str, Any]]:
    path = RESULTS / "caching.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    points = data.get("models", {}).get(model, {}).get("points", [])
    return [p | {"name": f"{p['method']} {p['label']} @ {p['steps']} steps"} for p in points]


def report(results: dict[str, Any]) -> str:
    lines = [
        "Joint search (steps + per-stage caching + pruning) vs the best single method at equal or lower cost, "
        "held-out probes of benchmarks/caching.py (distance to the 50-step dense samples, ± s.e.).",
        "",
        "| model | budget | joint: steps, every, levels | MACs | held-out distance | best single method (MACs) "
        "| its distance | joint / single | paired difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in results["models"]:
        for row in model["rows"]:
            j, s = row["points"]["joint"], row["best_single"]
            choice = f"{j['steps']}, {j['every']}, {j['levels']}"
            single = f"{s['name']} ({s['macs']:.3f})" if s else "none that cheap"
            sd = f"{s['distance']:.4f} ± {s.get('distance_se', s.get('se', 0)):.4f}" if s else "-"
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
            pd = row.get("paired")
            paired = f"{pd['mean']:+.4f} ± {pd['se']:.4f}" if pd else "-"
            lines.append(
                f"| {model['model']} | {row['budget']} | {choice} | {j['macs']:.3f} | {j['distance']:.4f} ± "
                f"{j['se']:.4f} | {single} | {sd} | {ratio} | {paired} |"
            )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"environment": environment(), "config": dict(vars(args)), "models": []}
    for model in args.models:
        results["models"].append(run_model(model, args, single_points(model)))
    save(args.output or ("joint_quick" if args.quick else "joint"), results, report(results))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit-digits")
    parser.add_argument("--budgets", default="0.5,0.25,0.125")
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="the library's calibration steps")
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None, help="results name in benchmarks/results")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.budgets = [float(b) for b in args.budgets.split(",")]
    if args.quick:
        args.budgets, args.generations, args.population, args.per_class = [0.25], 1, 4, 1
        args.stages, args.steps, args.calibration, args.reference_steps = 2, 6, 2, 10
    return args


if __name__ == "__main__":
    main(parse())
