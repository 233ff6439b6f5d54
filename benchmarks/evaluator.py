"""Does prefix sharing pay? Denoiser calls and wall time per generation of a real default search on the
built-in DiT, with prefix sharing and caching versus naive evaluation, and a check that scores are identical.

    python -m benchmarks.evaluator [--generations 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import prepared_run, save, temp_config
from diffes.fitness.evaluator import Evaluator
from diffes.runs.config import RunConfig
from diffes.runs.context import load_context
from diffes.runs.context import plain_budget as make_budget
from diffes.runs.rundir import RunDir
from diffes.search import make_toolbox, run_search
from diffes.search.config import SearchConfig


def recorded_batches(run: RunDir, config: RunConfig) -> list[list[tuple[int, ...]]]:
    """The genomes each generation of the default GA sends to the evaluator (its own fitness cache applied)."""
    context = load_context(str(run.path))
    batches: list[list[tuple[int, ...]]] = []

    def evaluate(genomes: list[tuple[int, ...]]) -> list[float]:
        batches.append(list(genomes))
        return context.evaluator.evaluate(genomes)

    budget = make_budget(config, context.library)
    run_search(config.search, budget, make_toolbox(config.search, budget, evaluate))
    return batches


def trie_minimum(batches: list[list[tuple[int, ...]]], stage_lengths: list[int]) -> int:
    """Calls needed if every distinct (stage prefix) were denoised exactly once: the best any cache can do."""
    prefixes = {g[: d + 1] for batch in batches for g in batch for d in range(len(g))}
    return sum(stage_lengths[len(p) - 1] for p in prefixes)


def warm_evaluator(run: RunDir, share: bool) -> Evaluator:
    """A fresh evaluator whose plans and routing tables are all prepared, so timing sees sampling only."""
    context = load_context(str(run.path))
    library = context.library
    for stage in range(library.num_stages):
        for level in range(library.num_levels):
            context.router.set_level(stage, level)
    context.router.reset()
    evaluator = context.evaluator
    evaluator.share_prefixes = share
    return evaluator


def timed(evaluator: Evaluator, batch: list[tuple[int, ...]]) -> dict[str, Any]:
    before, start = evaluator.stats.denoiser_calls, time.perf_counter()
    scores = evaluator.evaluate(batch)
    return {"calls": evaluator.stats.denoiser_calls - before, "seconds": time.perf_counter() - start, "scores": scores}


def main(args: argparse.Namespace) -> None:
    config = temp_config("bench", args.generations)
    run = prepared_run(config, args.threads)
    batches = recorded_batches(run, config)
    shared_eval, naive_eval = warm_evaluator(run, share=True), warm_evaluator(run, share=False)
    shared, plain = [], []
    for batch in batches:  # interleaved, so load changes on the machine hit both alike
        shared.append(timed(shared_eval, batch))
        plain.append(timed(naive_eval, batch))
    minimum = trie_minimum(batches, shared_eval.stages.stage_lengths())
    identical = all(s["scores"] == n["scores"] for s, n in zip(shared, plain))
    calls = (sum(r["calls"] for r in plain), sum(r["calls"] for r in shared))
    seconds = (sum(r["seconds"] for r in plain), sum(r["seconds"] for r in shared))
    per_gen = [
        {"generation": g, "genomes": len(b), "naive_calls": n["calls"], "shared_calls": s["calls"],
         "naive_seconds": n["seconds"], "shared_seconds": s["seconds"]}
        for g, (b, s, n) in enumerate(zip(batches, shared, plain))
    ]  # fmt: skip
    call_ratio, time_ratio = calls[0] / calls[1], seconds[0] / seconds[1]
    p, s = config.pruning, config.search
    lines = [
        f"Prefix sharing on a default search (dit-digits, {p.stages} stages, {p.steps} steps, "
        f"population {s.population}, offspring {s.offspring}, {s.generations} generations, "
        f"{config.fitness.probes * 10} probes, {args.threads} threads; plans prepared beforehand, runs interleaved).",
        "",
        "| | denoiser calls | wall time (s) |",
        "| --- | --- | --- |",
        f"| naive | {calls[0]} | {seconds[0]:.1f} |",
        f"| prefix sharing + cache | {calls[1]} | {seconds[1]:.1f} |",
        f"| fewest possible (each distinct stage prefix once) | {minimum} | |",
        f"| ratio naive / shared (goal >= 2x calls, >= 1.8x time) | **{call_ratio:.2f}x** | **{time_ratio:.2f}x** |",
        "",
        f"Scores identical with and without sharing: **{identical}**. Calls with sharing minus the fewest "
        f"possible for these genomes: {calls[1] - minimum}.",
    ]
    payload = {
        "config": config.to_dict(),
        "identical_scores": identical,
        "call_ratio": call_ratio,
        "time_ratio": time_ratio,
        "fewest_possible_calls": minimum,
        "per_generation": per_gen,
    }
    save("evaluator", payload, "\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generations", type=int, default=SearchConfig.generations, help="default: the search default")
    parser.add_argument("--threads", type=int, default=2)
    main(parser.parse_args())
