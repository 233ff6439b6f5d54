"""Executors: where a generation's genomes are scored, ``executor.map(genomes)``. In-process, or on Ray actors.

An executor's ``map`` is what the search registers as ``toolbox.evaluate`` (a batch in, distances out), so
overriding ``toolbox.evaluate`` replaces the executor whole instead of being silently ignored on a cluster.

A Ray worker is an actor built by a *factory* (an importable function and plain arguments such as the
run directory's path): it loads the model, library and teacher itself, once. Dispatch is dynamic;
failures are handled in one place (``_replace``): work lost with a dead actor is sent again to a
fresh actor, and the dead one is never reused.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from diffes.errors import ClusterError
from diffes.search.genome import Genome

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "Progress", "connect_ray"]


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


class Executor(Protocol):
    progress: Progress

    def map(self, genomes: Iterable[Genome]) -> list[float]: ...

    def close(self) -> None: ...


@dataclass
class LocalExecutor:
    """The whole batch in one in-process call of ``evaluate``, so the evaluator shares every prefix."""

    evaluate: Callable[[list[Genome]], Sequence[float]]
    progress: Progress = field(default_factory=_Silent)

    def map(self, genomes: Iterable[Genome]) -> list[float]:
        batch = list(genomes)
        self.progress.start(len(batch))
        try:
            return [float(x) for x in self.evaluate(batch)]
        finally:
            self.progress.finish()

    def close(self) -> None:
        pass


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """ray.init retries an unreachable address for minutes; a plain TCP connect fails in seconds."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"address={address!r}: expected host:port (or ray://host:port, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(
            f"address={address!r}: no Ray cluster answers there ({e.strerror or e}); check the "
            f"address, or drop --address to start a local cluster"
        ) from None


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address``, else RAY_ADDRESS, else a running cluster, else start a local one."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address and address != "auto":
        ray.init(address=address, log_to_driver=False)
        return
    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        if address == "auto":
            raise ClusterError(
                "address='auto': no running Ray cluster found; start one with `ray start --head`"
            ) from None
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


@dataclass
class RayExecutor:
    """One actor per GPU (``gpus_per_worker=1``) or per CPU slot; each builds its evaluator with ``factory``."""

    factory: Callable[..., Any]
    factory_args: tuple[Any, ...]
    workers: int = 0
    gpus_per_worker: float = -1.0
    chunks_per_worker: int = 2
    poll_seconds: float = 10.0
    startup_seconds: float = 600.0
    max_restarts: int = 8
    progress: Progress = field(default_factory=_Silent)
    restarts: int = 0

    def __post_init__(self) -> None:
        import ray

        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        if self.gpus_per_worker < 0:
            self.gpus_per_worker = 1.0 if gpus >= 1 else 0.0
        if self.gpus_per_worker > 0 and gpus < self.gpus_per_worker:
            raise ClusterError(
                f"gpus_per_worker={self.gpus_per_worker}: the Ray cluster has {gpus:g} GPUs; "
                f"use --gpus-per-worker 0 to run workers on CPUs"
            )
        if self.workers <= 0:
            slots = gpus / self.gpus_per_worker if self.gpus_per_worker > 0 else resources.get("CPU", 1)
            self.workers = max(1, int(slots))
        self._actor_class = ray.remote(_Worker)
        self._next_id = 0
        self.actors = [self._spawn() for _ in range(self.workers)]
        self._await_ready(self.actors)

    def _spawn(self) -> Any:
        options: dict[str, Any] = {"num_cpus": 0 if self.gpus_per_worker > 0 else 1, "max_restarts": 0}
        if self.gpus_per_worker > 0:
            options["num_gpus"] = self.gpus_per_worker
        actor = self._actor_class.options(**options).remote(self.factory, self.factory_args, self._next_id)
        self._next_id += 1
        return actor

    def _await_ready(self, actors: list[Any]) -> None:
        """Surface a worker that cannot start (bad path, missing weights) as one clear error, not a hang."""
        import ray

        try:
            ray.get([a.__ray_ready__.remote() for a in actors], timeout=self.startup_seconds)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ClusterError(
                f"workers={len(actors)}: Ray could not start them within {self.startup_seconds:.0f}s; "
                f"check that the cluster has free CPU/GPU slots"
            ) from None
        except ray.exceptions.RayError as e:
            self.close()
            reason = str(e).strip().splitlines()[-1][:300]
            raise ClusterError(f"workers: a Ray worker failed to start ({reason})") from None

    def _chunks(self, genomes: list[Genome]) -> list[list[Genome]]:
        """Contiguous runs of the sorted genomes: neighbours share prefixes, so each worker's cache pays."""
        ordered = sorted(set(genomes))
        n = max(1, min(len(ordered), self.workers * self.chunks_per_worker))
        size = -(-len(ordered) // n)
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def map(self, genomes: Iterable[Genome]) -> list[float]:
        """Score ``genomes`` on the workers, each with the evaluator its factory built."""
        import ray

        wanted = list(genomes)
        chunks = self._chunks(wanted)
        self.progress.start(len(set(wanted)))
        queue, idle = deque(range(len(chunks))), list(self.actors)
        pending: dict[Any, tuple[Any, int]] = {}
        scores: dict[Genome, float] = {}
        try:
            while queue or pending:
                while queue and idle:
                    actor, i = idle.pop(), queue.popleft()
                    pending[actor.evaluate.remote(chunks[i])] = (actor, i)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    actor, i = pending.pop(ref)
                    try:
                        values = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                        idle.append(self._replace(actor))
                        queue.appendleft(i)
                        continue
                    scores.update(zip(chunks[i], values))
                    idle.append(actor)
                    self.progress.advance(len(chunks[i]))
        finally:
            self.progress.finish()
        return [float(scores[g]) for g in wanted]

    def _replace(self, dead: Any) -> Any:
        """The one place failures are handled: forget the dead actor, start a fresh one."""
        import ray

        self.restarts += 1
        self.actors = [a for a in self.actors if a is not dead]
        ray.kill(dead, no_restart=True)
        if self.restarts > self.max_restarts:
            self.close()
            raise ClusterError(
                f"max_restarts={self.max_restarts}: Ray workers keep dying (out of memory?); see the Ray logs"
            )
        fresh = self._spawn()
        self._await_ready([fresh])
        self.actors.append(fresh)
        return fresh

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class _Worker:
    """Ray actor body: builds its evaluator once from plain arguments (paths), then scores chunks."""

    def __init__(self, factory: Callable[..., Any], args: tuple[Any, ...], worker_id: int) -> None:
        self.evaluator = factory(*args, worker_id)

    def evaluate(self, genomes: list[Genome]) -> list[float]:
        return [float(x) for x in self.evaluator.evaluate(genomes)]
