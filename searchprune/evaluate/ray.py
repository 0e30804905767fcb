"""Ray evaluation: the problem resident in actors on any number of CPUs, GPUs and machines.

The problem (model, data, space) is put in Ray's object store once with ``ray.put``;
each actor fetches it once, when it starts; the evaluator waits until every actor has
answered (``startup_s``, reported in the run's summary), so an actor that cannot start
fails the run at once with Ray's reason. Per call only small numpy genome arrays
travel, several at a time: the chunk size adapts so that one call takes about
``target_seconds`` (one candidate per call is slower than serial here; dozens per call
keep two actors busy). Results equal the local evaluator's for the same genomes.

An actor that dies mid-run (a killed process, a lost node) is replaced and its chunks
are run again, so no evaluation is lost and the run's result does not change.

Connecting: an ``address`` is probed first (a TCP connection to its host and port, for at
most ``connect_timeout`` seconds), so an unreachable cluster fails at once with an error
naming it, where Ray itself would retry for minutes. A cluster with token authentication
refuses a driver without ``RAY_AUTH_MODE=token`` (Ray 2.60 sends the token to an address
given explicitly only then); the error says so.

A local Ray started for a run keeps Ray's default authentication (from Ray 2.60 on, a
token in ``~/.ray/auth_token`` that every connection must present). That token is what
guards it: Ray 2.60 starts its GCS server and raylet listening on every interface and
offers no option to bind them to loopback (``ray.init(_node_ip_address="127.0.0.1")``
resolves the address back to the machine's own).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections import deque
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from searchprune.evaluate.base import Evaluator
from searchprune.fitness import FitnessError
from searchprune.problem import Evaluation, Problem
from searchprune.runtime import prepare_process
from searchprune.space import BudgetMode


class _ProblemActor:
    """Holds one copy of the problem and scores chunks of genomes with it."""

    def __init__(self, problem: Problem, threads: int, device: str | None) -> None:
        prepare_process(threads)
        self.problem = problem if device is None else problem.to(device)

    def ready(self) -> bool:
        """Answers once the actor holds its problem (its constructor has run)."""
        return True

    def score(self, genomes: np.ndarray, labels: list[str]) -> tuple[list[Evaluation], float]:
        start = time.perf_counter()
        results = self.problem.score(np.array(genomes, copy=True), labels)  # store is read-only
        return results, time.perf_counter() - start


class RayWorkerError(RuntimeError):
    """Ray actors kept dying on the same candidates; the message names them."""


class RayConnectionError(ConnectionError):
    """No Ray cluster answered at the address in time; the message names it."""


def probe_address(address: str, timeout: float, source: str = "evaluator.address") -> None:
    """Refuse a cluster ``address`` (``host:port`` or ``ray://host:port``) whose host
    does not accept a TCP connection on its port within ``timeout`` seconds; other forms
    (``auto``, ``local``) are left to Ray.

    :raises RayConnectionError: naming ``source``, the address and why.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        why = "timed out" if isinstance(error, TimeoutError) else error.strerror or str(error)
        raise RayConnectionError(
            f"{source}: no Ray cluster answers at {address!r} ({why}, waited at most "
            f"{timeout:g} s); start one there (ray start --head --port={port}) or fix "
            "evaluator.address, --ray-address or RAY_ADDRESS"
        ) from None


class RayEvaluator(Evaluator):
    """Scores candidates in Ray actors; see the module docstring.

    ``address`` is a Ray cluster address (``"auto"``, ``"127.0.0.1:6379"``); ``None``
    uses ``RAY_ADDRESS`` when set, else starts a local Ray instance sized for the actors
    (and stops it on :meth:`close`); an address that does not answer within
    ``connect_timeout`` seconds raises :class:`RayConnectionError`. An actor that dies is
    replaced and its chunk run again; a chunk that kills ``max_deaths`` actors raises
    :class:`RayWorkerError` naming its candidates.
    """

    def __init__(
        self,
        problem: Problem,
        *,
        actors: int = 2,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        threads: int = 1,
        address: str | None = None,
        chunk: int | None = None,
        target_seconds: float = 0.05,
        max_deaths: int = 3,
        connect_timeout: float = 30.0,
        cache: bool = True,
        budget_mode: BudgetMode = "exact",
    ) -> None:
        super().__init__(problem, cache=cache, budget_mode=budget_mode)
        self.chunk, self.target_seconds = chunk, target_seconds
        self.max_deaths = max_deaths
        self._seconds_per_eval: float | None = None
        self._started_ray = False
        started = time.perf_counter()
        if not ray.is_initialized():
            self._connect(address, actors, num_cpus, connect_timeout)
        self.connect_s = time.perf_counter() - started
        self._options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self._threads = threads
        started = time.perf_counter()
        self._problem_ref = ray.put(problem)
        self._actor_class = ray.remote(_ProblemActor)
        self.actors = [self._new_actor() for _ in range(actors)]
        self._wait_ready()
        self.startup_s = time.perf_counter() - started
        self.replaced = 0
        self._actor_count = actors

    def _connect(self, address: str | None, actors: int, num_cpus: float, timeout: float) -> None:
        # workers import searchprune and user plug-ins from the driver's path
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
        source = "evaluator.address"
        if not address and os.environ.get("RAY_ADDRESS"):
            address, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
        if address:
            probe_address(address, timeout, source)
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
            except ConnectionError as error:
                if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                    raise
                # Ray sends the token to an address given explicitly only in token mode
                raise RayConnectionError(
                    f"{source}: {error}; a cluster with token authentication (Ray 2.60's "
                    "`ray start --head` turns it on when ~/.ray/auth_token exists) needs "
                    "RAY_AUTH_MODE=token here too (docs/ray.md, Authentication)"
                ) from None
        else:
            ray.init(
                address="local",  # a new instance, never a cluster left running
                num_cpus=max(math.ceil(actors * num_cpus), 1),
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=False,
            )
        self._started_ray = True

    def _wait_ready(self) -> None:
        """Block until every actor answers (its process started and loaded the problem);
        an actor that cannot start raises :class:`RayWorkerError` with Ray's reason."""
        try:
            ray.get([actor.ready.remote() for actor in self.actors])
        except (RayActorError, RayTaskError) as error:
            self.close()
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise RayWorkerError(
                "a Ray actor could not start (it loads searchprune and the problem); "
                f"{lines[-1].strip() if lines else type(error).__name__}"
            ) from None

    def summary_section(self) -> dict[str, Any]:
        """The run summary's ``evaluator`` section: how long connecting to (or starting)
        Ray took, and the actors' start-up, from creating them to all of them answering
        (each starts a Python process, imports searchprune and loads the problem)."""
        return {
            "name": "ray",
            "actors": self._actor_count,
            "connect_s": round(self.connect_s, 3),
            "startup_s": round(self.startup_s, 3),
            "replaced": self.replaced,
        }

    def _new_actor(self) -> Any:
        device = "cuda" if self._options["num_gpus"] > 0 else None
        return self._actor_class.options(**self._options).remote(
            self._problem_ref, self._threads, device
        )

    def _chunk_size(self, remaining: int) -> int:
        if self.chunk is not None:
            return self.chunk
        if self._seconds_per_eval is None:
            size = 4
        else:
            size = int(self.target_seconds / max(self._seconds_per_eval, 1e-6))
        fair = math.ceil(remaining / len(self.actors))  # keep every actor busy
        return max(1, min(size, fair, 256))

    def _score(self, genomes: np.ndarray, labels: list[str]) -> list[Evaluation]:
        pending: deque[tuple[int, int]] = deque()
        start = 0
        while start < len(genomes):
            size = self._chunk_size(len(genomes) - start)
            pending.append((start, min(start + size, len(genomes))))
            start += size
        results: list[Evaluation | None] = [None] * len(genomes)
        running: dict[Any, tuple[int, tuple[int, int]]] = {}
        deaths: dict[tuple[int, int], int] = {}
        idle = list(range(len(self.actors)))
        while pending or running:
            while pending and idle:
                index, (a, b) = idle.pop(), pending.popleft()
                future = self.actors[index].score.remote(genomes[a:b], labels[a:b])
                running[future] = (index, (a, b))
            done, _ = ray.wait(list(running), num_returns=1)
            index, (a, b) = running.pop(done[0])
            try:
                chunk_results, seconds = ray.get(done[0])
            except RayActorError as error:  # the actor died: replace it, run its chunk again
                deaths[(a, b)] = deaths.get((a, b), 0) + 1
                if deaths[(a, b)] >= self.max_deaths:
                    message = self._died_message(labels[a:b], deaths[(a, b)], error)
                    raise RayWorkerError(message) from None
                self.actors[index] = self._new_actor()
                self.replaced += 1
                pending.appendleft((a, b))
            except RayTaskError as error:
                cause = error.cause if isinstance(error.cause, Exception) else error
                if isinstance(cause, FitnessError):
                    raise FitnessError(str(cause)) from None
                raise
            else:
                results[a:b] = chunk_results
                per_eval = seconds / max(b - a, 1)
                previous = self._seconds_per_eval
                self._seconds_per_eval = (
                    per_eval if previous is None else 0.7 * previous + 0.3 * per_eval
                )
            idle.append(index)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    @staticmethod
    def _died_message(labels: list[str], deaths: int, error: Exception) -> str:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"a Ray actor died {deaths} times while scoring candidates {labels[0]} to "
            f"{labels[-1]}; one of them probably kills the process (out of memory, a crash "
            "in the fitness or the model). Check the worker logs under "
            f"/tmp/ray/session_latest/logs. Last error: {first}"
        )

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
