"""Train the built-in zoo models from scratch on CPU (scikit-learn digits; no downloads).

    python scripts/train_zoo.py digits-classifier
    python scripts/train_zoo.py dit-digits --steps 8000
    python scripts/train_zoo.py unet-digits --steps 12000
    python scripts/train_zoo.py t2i-digits

Weights go to diffes/models/weights/<name>/ unless --out is given (t2i-digits: the whole pipeline folder, as
save_pretrained writes it). The generators need the classifier (it judges their samples during training), so
train it first.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import torch

from diffes.models.t2i_training import T2IConfig, train_t2i
from diffes.models.training import TrainConfig, train_classifier, train_generator
from diffes.models.zoo import GENERATORS, TEXT_GENERATORS, load_model, weights_dir


def _given(args: argparse.Namespace, config: type) -> dict[str, object]:
    """The flags the user gave that ``config`` has; the others keep the config's defaults."""
    names = {f.name for f in fields(config)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else weights_dir(args.model)
    if args.model == "digits-classifier":
        print(train_classifier(out, epochs=args.epochs, seed=args.seed))
        return
    classifier = load_model("digits-classifier")
    if args.model in TEXT_GENERATORS:
        print(train_t2i(T2IConfig(**_given(args, T2IConfig)), out, classifier))
        return
    config = TrainConfig(**_given(args, TrainConfig))  # model, steps, lr, seed, eval_every
    print(train_generator(config, out, classifier))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=[*GENERATORS, "digits-classifier"])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 8000; t2i-digits 5000)")
    p.add_argument("--vae-steps", type=int, default=None, help="VAE optimizer steps (t2i-digits, default 2000)")
    p.add_argument("--epochs", type=int, default=60, help="epochs (classifier)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="output folder (default: the package's weights folder)")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
