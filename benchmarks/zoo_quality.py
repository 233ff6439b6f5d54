"""Zoo quality bar: of 100 class-conditional samples per generator (50 DDIM steps, fixed seeds),
the share the judge classifier labels as the class asked for; of 100 prompted samples of the text-to-image
pipeline (10 per digit, prompts from its templates, its default 20 DDIM steps and guidance, fixed seeds), the
share labelled as the digit the prompt names; and the judge's held-out accuracy.

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
from diffes.models.classifier import DigitClassifier
from diffes.models.data import load_digits_split
from diffes.models.loading import fast_cpu_math, zoo_pipeline
from diffes.models.t2i import DEFAULT_STEPS, TEMPLATES, load_t2i_pipeline, prompted_accuracy
from diffes.models.training import class_accuracy, sample_accuracy
from diffes.models.zoo import CLASS_GENERATORS, TEXT_GENERATORS, get_entry, load_model, weights_dir


def main(args: argparse.Namespace) -> None:
    fast_cpu_math()
    classifier = load_model("digits-classifier")
    data = load_digits_split()
    judge = class_accuracy(classifier, data.test_images, data.test_labels)
    results: dict[str, Any] = {"steps": args.steps, "seed": args.seed, "judge_accuracy": judge, "weights": args.weights}
    table = ["| model | samples | DDIM steps | class accuracy (goal >= 90%) |", "| --- | --- | --- | --- |"]
    results["models"] = {}
    for name in CLASS_GENERATORS:
        pipe = zoo_pipeline(name, Path(args.weights) / name if args.weights else None)
        start = time.perf_counter()
        acc = sample_accuracy(pipe, classifier, per_class=args.per_class, steps=args.steps, seed=args.seed)
        results["models"][name] = {"class_accuracy": acc, "seconds": time.perf_counter() - start}
        results["models"][name] |= _training_log(args.weights, name)
        table.append(f"| {name} | {10 * args.per_class} | {args.steps} | {100 * acc:.0f}% |")
    for name in TEXT_GENERATORS:
        results["models"][name] = row = _text_to_image(name, classifier, args)
        samples, acc = 10 * args.per_class, row["class_accuracy"]
        table.append(
            f"| {name} (prompted, guidance {row['guidance']}) | {samples} | {row['steps']} | {100 * acc:.0f}% |"
        )
    held_out = f"{len(data.test_labels)} held-out real images | - "
    table.append(f"| digits-classifier (judge) | {held_out}| {100 * judge:.1f}% (goal >= 97%) |")
    if args.weights and (Path(args.weights) / "digits-classifier").is_dir():
        retrained = load_model("digits-classifier", Path(args.weights) / "digits-classifier")
        results["retrained_classifier_accuracy"] = acc = class_accuracy(retrained, data.test_images, data.test_labels)
        table.append(f"| digits-classifier, retrained | {held_out}| {100 * acc:.1f}% (goal >= 97%) |")
    save("zoo_quality_retrained" if args.weights else "zoo_quality", results, "\n".join(table))


def _training_log(weights: str | None, name: str) -> dict[str, Any]:
    """How long the training that made these weights took, and on what settings."""
    log = Path(weights or weights_dir(name).parent) / name / "training.json"
    return {"training": json.loads(log.read_text())["final"]} if log.is_file() else {}


def _text_to_image(name: str, classifier: DigitClassifier, args: argparse.Namespace) -> dict[str, Any]:
    """The prompted accuracy of a text-to-image zoo pipeline, loaded from its folder as a user's folder is."""
    pipe = load_t2i_pipeline(Path(args.weights) / name if args.weights else None)
    guidance = get_entry(name).guidance_scale
    start = time.perf_counter()
    acc = prompted_accuracy(pipe, classifier, args.per_class, steps=DEFAULT_STEPS, guidance=guidance, seed=args.seed)
    row = {"class_accuracy": acc, "seconds": time.perf_counter() - start, "steps": DEFAULT_STEPS}
    row |= {"guidance": guidance, "templates": list(TEMPLATES)}
    return row | _training_log(args.weights, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="folder of retrained models (default: the shipped ones)")
    torch.set_num_threads(2)
    main(parser.parse_args())
