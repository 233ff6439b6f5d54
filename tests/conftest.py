from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import diffes` does, before torch starts its threads

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


@pytest.fixture(scope="session")
def ray_address() -> object:
    """One local Ray cluster for the whole session, with two declared (fake) GPUs: scheduling only,
    torch still sees no CUDA, so GPU workers fall back to the CPU."""
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
