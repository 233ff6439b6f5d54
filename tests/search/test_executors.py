from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

from diffes.errors import ClusterError
from diffes.search.executors import LocalExecutor, RayExecutor, connect_ray

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


class SumScorer:
    """A stand-in evaluator; dies once (SIGKILL on itself) on a marked genome if asked to."""

    def __init__(self, die_on: tuple[int, ...] | None, marker: str | None, worker_id: int) -> None:
        import torch

        self.die_on, self.marker, self.cuda = die_on, marker, torch.cuda.is_available()

    def evaluate(self, genomes: list[tuple[int, ...]]) -> list[float]:
        if self.die_on in genomes and self.marker and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return [float(sum(g)) + 0.5 * g[0] for g in genomes]


def genomes() -> list[tuple[int, ...]]:
    return [(a, b, c) for a in range(3) for b in range(3) for c in range(2)]


def expected() -> list[float]:
    return [float(sum(g)) + 0.5 * g[0] for g in genomes()]


def test_local_executor_passes_the_whole_batch() -> None:
    batches: list[int] = []

    def evaluate(gs: list[tuple[int, ...]]) -> list[float]:
        batches.append(len(gs))
        return [float(sum(g)) + 0.5 * g[0] for g in gs]

    assert LocalExecutor(evaluate).map(genomes()) == expected()
    assert batches == [len(genomes())]


def test_one_actor_per_gpu_with_cpu_fallback(ray_address: str) -> None:
    executor = RayExecutor(SumScorer, (None, None))
    try:
        assert executor.workers == 2 and executor.gpus_per_worker == 1.0  # two declared GPUs
        assert executor.map(genomes()) == expected()
        assert executor.map(list(reversed(genomes()))) == list(reversed(expected()))
    finally:
        executor.close()


def test_work_of_a_dead_worker_is_sent_again(ray_address: str, tmp_path: Path) -> None:
    executor = RayExecutor(SumScorer, ((2, 2, 1), str(tmp_path / "died")), gpus_per_worker=0, workers=2)
    try:
        dead_before = list(executor.actors)
        assert executor.map(genomes()) == expected()
        assert (tmp_path / "died").exists() and executor.restarts == 1
        assert len(executor.actors) == 2 and len(set(executor.actors) & set(dead_before)) == 1
    finally:
        executor.close()


def test_gpu_request_beyond_the_cluster_fails_at_once(ray_address: str) -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError, match="gpus_per_worker=4"):
        RayExecutor(SumScorer, (None, None), gpus_per_worker=4)
    assert time.monotonic() - start < 5


class Broken:
    def __init__(self, *args: object) -> None:
        raise FileNotFoundError("weights.safetensors")


def test_a_worker_that_cannot_start_is_an_error_not_a_hang(ray_address: str) -> None:
    with pytest.raises(ClusterError, match=r"failed to start.*weights\.safetensors"):
        RayExecutor(Broken, (), gpus_per_worker=0, workers=1)


def test_unreachable_address_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError, match=re.escape("address='127.0.0.1:1'")):
        connect_ray("127.0.0.1:1")
    with pytest.raises(ClusterError, match="expected host:port"):
        connect_ray("not-an-address")
    assert time.monotonic() - start < 12
