from __future__ import annotations

import pytest
import torch

from diffes.models.pipeline import ZooPipeline
from diffes.models.zoo import build_model, sampling_scheduler


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # as the CLI and workers do


@pytest.fixture()
def random_zoo_pipe(request: pytest.FixtureRequest) -> ZooPipeline:
    """A zoo pipeline with untrained weights: for behaviour that does not depend on quality."""
    name = getattr(request, "param", "dit-digits")
    torch.manual_seed(0)
    model = build_model(name).eval()
    kind = "transformer" if name.startswith("dit") else "unet"
    pipe = ZooPipeline(sampling_scheduler(), **{kind: model})
    pipe.set_progress_bar_config(disable=True)
    return pipe
