"""Global RNG states (python, numpy, torch) as JSON, so a resumed run draws what it would have drawn."""

from __future__ import annotations

import base64
import binascii
import random
from typing import Any

import numpy as np
import torch

from diffes.errors import CheckpointError

__all__ = ["capture_rng", "check_rng", "restore_rng", "seed_all"]

FIX = "delete the last checkpoint to resume from the one before, or start a new run"


def seed_all(seed: int) -> None:
    """Seed the global generators once, at the start of a run (libraries may draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def check_rng(state: dict[str, Any], source: str = "rng") -> tuple[Any, Any, torch.Tensor]:
    """The python, numpy and torch states in ``state``, each tried on a scratch generator: a state the
    generators refuse (an index past the end, a torch state of the wrong size) is a CheckpointError."""
    try:
        version, internal, gauss = state["python"]
        python = (version, tuple(internal), gauss)
        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy_state = (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)
        raw = torch.frombuffer(bytearray(base64.b64decode(state["torch"], validate=True)), dtype=torch.uint8)
        random.Random().setstate(python)
        np.random.RandomState().set_state(numpy_state)
        torch.Generator().set_state(raw)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError, binascii.Error) as e:
        raise CheckpointError(f"{source}: the generator states cannot be restored ({e}); {FIX}") from None
    return python, numpy_state, raw


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global generators to ``state``; a bad state leaves them untouched (see ``check_rng``)."""
    python, numpy_state, raw = check_rng(state)
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(raw)
