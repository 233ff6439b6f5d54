"""Zoo quality bar: of 100 class-conditional samples per generator (50 DDIM steps, fixed seeds),
the share the judge classifier labels as the class asked for; and the judge's held-out accuracy.

    python -m benchmarks.zoo_quality
    python -m benchmarks.zoo_quality --weights /tmp/retrain   # models retrained by scripts/train_zoo.py --out

With ``--weights DIR`` the generators come from DIR/<name>/ and are judged by the shipped classifier, so the
numbers compare; a classifier retrained into DIR/digits-classifier/ gets its own held-out accuracy. The result
is written as zoo_quality_retrained.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import save
from diffes.models.data import load_digits_split
from diffes.models.loading import fast_cpu_math, zoo_pipeline
from diffes.models.training import class_accuracy, sample_accuracy
from diffes.models.zoo import GENERATORS, load_model, weights_dir


def main(args: argparse.Namespace) -> None:
    fast_cpu_math()
    classifier = load_model("digits-classifier")
    data = load_digits_split()
    judge = class_accuracy(classifier, data.test_images, data.test_labels)
    results: dict[str, Any] = {"steps": args.steps, "seed": args.seed, "judge_accuracy": judge, "weights": args.weights}
    table = ["| model | samples | DDIM steps | class accuracy (goal >= 90%) |", "| --- | --- | --- | --- |"]
    results["models"] = {}
    for name in GENERATORS:
        pipe = zoo_pipeline(name, Path(args.weights) / name if args.weights else None)
        start = time.perf_counter()
        acc = sample_accuracy(pipe, classifier, per_class=args.per_class, steps=args.steps, seed=args.seed)
        results["models"][name] = {"class_accuracy": acc, "seconds": time.perf_counter() - start}
        log = Path(args.weights or weights_dir(name).parent) / name / "training.json"
        if log.is_file():  # how long the training that made these weights took, and on what settings
            results["models"][name]["training"] = json.loads(log.read_text())["final"]
        table.append(f"| {name} | {10 * args.per_class} | {args.steps} | {100 * acc:.0f}% |")
    held_out = f"{len(data.test_labels)} held-out real images | - "
    table.append(f"| digits-classifier (judge) | {held_out}| {100 * judge:.1f}% (goal >= 97%) |")
    if args.weights and (Path(args.weights) / "digits-classifier").is_dir():
        retrained = load_model("digits-classifier", Path(args.weights) / "digits-classifier")
        results["retrained_classifier_accuracy"] = acc = class_accuracy(retrained, data.test_images, data.test_labels)
        table.append(f"| digits-classifier, retrained | {held_out}| {100 * acc:.1f}% (goal >= 97%) |")
    save("zoo_quality_retrained" if args.weights else "zoo_quality", results, "\n".join(table))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="folder of retrained models (default: the shipped ones)")
    torch.set_num_threads(2)
    main(parser.parse_args())
