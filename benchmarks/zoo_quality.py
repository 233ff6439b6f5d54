"""Zoo quality bar: of 100 class-conditional samples per generator (50 DDIM steps, fixed seeds),
the share the judge classifier labels as the class asked for; and the judge's held-out accuracy.

    python -m benchmarks.zoo_quality
    python -m benchmarks.zoo_quality --weights /tmp/retrain   # models retrained by scripts/train_zoo.py --out

With ``--weights DIR`` the models come from DIR/<name>/ (the judge stays the shipped classifier, so the
numbers compare) and the result is written as zoo_quality_retrained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import save
from diffes.models.data import load_digits_split
from diffes.models.loading import fast_cpu_math, load_pipeline
from diffes.models.pipeline import ZooPipeline
from diffes.models.training import class_accuracy, sample_accuracy
from diffes.models.zoo import GENERATORS, get_entry, load_model, sampling_scheduler


def generator(name: str, weights: str | None) -> Any:
    if weights is None:
        return load_pipeline(name, device="cpu")
    return ZooPipeline(sampling_scheduler(), **{get_entry(name).kind: load_model(name, Path(weights) / name)})


def main(args: argparse.Namespace) -> None:
    fast_cpu_math()
    classifier = load_model("digits-classifier")
    data = load_digits_split()
    judge = class_accuracy(classifier, data.test_images, data.test_labels)
    judge_name = "digits-classifier (judge)"
    if args.weights and (Path(args.weights) / "digits-classifier").is_dir():
        retrained = load_model("digits-classifier", Path(args.weights) / "digits-classifier")
        judge_name = "digits-classifier, retrained"
        judge = class_accuracy(retrained, data.test_images, data.test_labels)
    rows = {}
    for name in GENERATORS:
        pipe = generator(name, args.weights)
        start = time.perf_counter()
        acc = sample_accuracy(pipe, classifier, per_class=args.per_class, steps=args.steps, seed=args.seed)
        rows[name] = {"class_accuracy": acc, "samples": 10 * args.per_class, "seconds": time.perf_counter() - start}
    table = [
        "| model | samples | DDIM steps | class accuracy (goal >= 90%) |",
        "| --- | --- | --- | --- |",
        *[f"| {n} | {r['samples']} | {args.steps} | {100 * r['class_accuracy']:.0f}% |" for n, r in rows.items()],
        f"| {judge_name} | {len(data.test_labels)} held-out real images | - | {100 * judge:.1f}% (goal >= 97%) |",
    ]
    save(
        "zoo_quality_retrained" if args.weights else "zoo_quality",
        {"steps": args.steps, "seed": args.seed, "judge_accuracy": judge, "models": rows, "weights": args.weights},
        "\n".join(table),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="folder of retrained models (default: the shipped ones)")
    torch.set_num_threads(2)
    main(parser.parse_args())
