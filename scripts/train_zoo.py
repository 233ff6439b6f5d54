"""Train the built-in zoo models from scratch on CPU (scikit-learn digits; no downloads).

    python scripts/train_zoo.py digits-classifier
    python scripts/train_zoo.py dit-digits --steps 8000
    python scripts/train_zoo.py unet-digits --steps 12000

Weights go to diffes/models/weights/<name>/ unless --out is given. The generators need the
classifier (it judges their samples during training), so train it first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffes.models.training import TrainConfig, train_classifier, train_generator
from diffes.models.zoo import GENERATORS, load_model, weights_dir


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else weights_dir(args.model)
    if args.model == "digits-classifier":
        print(train_classifier(out, epochs=args.epochs, seed=args.seed))
        return
    config = TrainConfig(model=args.model, steps=args.steps, lr=args.lr, seed=args.seed, eval_every=args.eval_every)
    classifier = load_model("digits-classifier")
    print(train_generator(config, out, classifier))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=[*GENERATORS, "digits-classifier"])
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps (generators)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs (classifier)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="output folder (default: the package's weights folder)")
    main(parser.parse_args())
