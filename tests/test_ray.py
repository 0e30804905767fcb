"""The Ray evaluator on a real local Ray instance and a real two-node loopback cluster."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from ray._raylet import AuthenticationMode, get_authentication_mode

import searchprune
from searchprune import runner
from searchprune.cli import main
from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.evaluate.ray import RayEvaluator, RayWorkerError
from searchprune.fitness import FitnessContext
from searchprune.problem import Problem
from searchprune.space import BudgetMode
from searchprune.tasks.base import Task

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time (Makefile: -n 2)

BIN = Path(sys.executable).parent


def _ray_processes() -> set[int]:
    """Pids of Ray's own daemons (raylet, GCS server) running on this machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:  # the process ended while we looked
                continue
            if b"raylet" in command or b"gcs_server" in command:
                pids.add(int(entry.name))
    return pids


def _closed_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_address_fails_at_once_naming_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert not ray.is_initialized(), "runs before any test starts Ray in this process"
    address = f"127.0.0.1:{_closed_port()}"
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "digits-mlp",
                "budget": {"sparsity": 0.9},
                "searcher": "random",
                "run": {"max_evals": 8, "progress": False},
                "evaluator": {"connect_timeout_s": 5},
            }
        )
    )
    started = time.monotonic()
    argv = ["run", str(config), "--out", str(tmp_path / "r"), "--ray-address", address]
    assert main(argv) == 1
    assert time.monotonic() - started < 120, "Ray itself retries for over 300 s"
    err = capfd.readouterr().err
    assert f"evaluator.address: no Ray cluster answers at {address!r}" in err
    assert "rpc_client" not in err and "gcs_client" not in err  # no Ray log lines
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_evaluator(digits_mlp_task: Task) -> Iterator[RayEvaluator]:
    before = _ray_processes()
    problem = Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))
    evaluator = RayEvaluator(problem, actors=2, cache=False)
    assert _ray_processes() - before, "a local Ray instance was started"
    yield evaluator
    evaluator.close()
    assert not ray.is_initialized()
    deadline = time.monotonic() + 120  # a generous wait: shutdown is slow on a loaded machine
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_processes() - before, "Ray processes outlived close()"


def test_a_local_ray_keeps_rays_authentication(ray_evaluator: RayEvaluator) -> None:
    assert os.environ.get("RAY_AUTH_MODE") != "disabled"
    assert get_authentication_mode() == AuthenticationMode.TOKEN


def test_ray_results_equal_local_results(ray_evaluator: RayEvaluator) -> None:
    problem = ray_evaluator.problem
    genomes = problem.space.sample(np.random.default_rng(0), 64)
    local = LocalEvaluator(problem, cache=False).evaluate(genomes)
    remote = ray_evaluator.evaluate(genomes)
    assert [r.fitness for r in remote] == [r.fitness for r in local]
    assert all(np.array_equal(a.genome, b.genome) for a, b in zip(remote, local, strict=True))
    assert len({r.fitness for r in remote}) > 1


def test_the_summary_reports_the_actors_start_up_time(
    ray_evaluator: RayEvaluator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert 0 < ray_evaluator.startup_s < 120 and ray_evaluator.connect_s > 0

    def on_this_ray(config: object, problem: Problem, budget_mode: BudgetMode) -> RayEvaluator:
        # num_cpus=0: the fixture's two actors hold this Ray instance's two CPUs
        return RayEvaluator(problem, actors=1, num_cpus=0, budget_mode=budget_mode)

    monkeypatch.setattr(runner, "build_evaluator", on_this_ray)
    config: dict[str, object] = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.9},
        "searcher": "random",
        "evaluator": {"name": "ray"},
        "run": {"max_evals": 16, "progress": False},
    }
    summary = searchprune.run(config, out=str(tmp_path / "run"), echo=lambda line: None)
    section = json.loads((tmp_path / "run" / "summary.json").read_text())["evaluator"]
    assert section == summary["evaluator"]
    assert section["name"] == "ray" and section["actors"] == 1 and section["replaced"] == 0
    assert 0 < section["startup_s"] < 120
    assert section["connect_s"] < 1, "Ray was running: nothing to connect to"


@pytest.mark.slow
def test_a_killed_actor_is_replaced_and_nothing_is_lost(ray_evaluator: RayEvaluator) -> None:
    problem = ray_evaluator.problem
    genomes = problem.space.sample(np.random.default_rng(1), 48)
    expected = [r.fitness for r in LocalEvaluator(problem, cache=False).evaluate(genomes)]
    replaced = ray_evaluator.replaced
    ray.kill(ray_evaluator.actors[0])
    time.sleep(1.0)  # let the kill land before the next chunk is sent
    results = ray_evaluator.evaluate(genomes)
    assert [r.fitness for r in results] == expected
    assert ray_evaluator.replaced == replaced + 1


@pytest.mark.slow
def test_an_actor_killed_mid_evaluation_loses_nothing(ray_evaluator: RayEvaluator) -> None:
    problem = ray_evaluator.problem
    genomes = problem.space.sample(np.random.default_rng(2), 3000)
    expected = [r.fitness for r in LocalEvaluator(problem, cache=False).evaluate(genomes)]
    replaced = ray_evaluator.replaced
    killer = threading.Timer(0.3, ray.kill, args=(ray_evaluator.actors[1],))
    killer.start()
    started = time.perf_counter()
    results = ray_evaluator.evaluate(genomes)
    killer.join()
    assert time.perf_counter() - started > 0.3, "the kill must land while chunks are in flight"
    assert [r.fitness for r in results] == expected
    assert ray_evaluator.replaced == replaced + 1


@pytest.mark.slow
def test_candidates_that_keep_killing_actors_are_named(ray_evaluator: RayEvaluator) -> None:
    def exit_process(ctx: FitnessContext) -> float:  # a crash no exception can report
        os._exit(3)

    task = ray_evaluator.problem.task
    problem = Problem(task, budget=Budget("sparsity", 0.9), fitness=exit_process)
    # num_cpus=0: the fixture's two actors hold this Ray instance's two CPUs
    evaluator = RayEvaluator(problem, actors=1, num_cpus=0, chunk=2, cache=False)
    try:
        genomes = problem.space.sample(np.random.default_rng(3), 4)
        with pytest.raises(RayWorkerError, match="died 3 times while scoring candidates #0 to #1"):
            evaluator.evaluate(genomes)
        assert evaluator.replaced == 2
    finally:
        evaluator.close()
