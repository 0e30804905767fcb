"""A real two-node Ray cluster on loopback, started with ``ray start``.

Kept apart from ``test_ray.py``: ``ray stop`` ends every Ray process on the machine, and a
driver whose local Ray goes away exits, so no in-process Ray may be alive here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a two-node Ray cluster (about 40 s)

BIN = Path(sys.executable).parent


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _searchprune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "searchprune"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(shutil.which("ray", path=str(BIN)) is None, reason="ray CLI not installed")
def test_run_on_a_two_node_loopback_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    head = _ray(
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--disable-usage-stats",
        env=env,
    )
    try:
        assert head.returncode == 0, head.stderr
        worker = _ray(
            "start",
            f"--address=127.0.0.1:{port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            env=env,
        )
        assert worker.returncode == 0, worker.stderr
        config = Path(__file__).resolve().parents[1] / "configs" / "cluster" / "digits-cnn.yaml"
        small = ["--set", "run.max_evals=64", "--set", "searcher.population=16"]
        small += ["--set", "run.progress=false"]
        out = tmp_path / "cluster"
        result = _searchprune(
            "run",
            str(config),
            *small,
            "--out",
            str(out),
            "--ray-address",
            f"127.0.0.1:{port}",
            env=env,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["evaluations"] == 64 and summary["best"]["sparsity"] >= 0.9 - 1e-6
        local = tmp_path / "local"
        local_run = _searchprune(
            "run",
            str(config),
            *small,
            "--set",
            "evaluator.name=local",
            "--out",
            str(local),
            env=env,
        )
        assert local_run.returncode == 0, local_run.stderr[-2000:]
        assert json.loads((local / "summary.json").read_text())["best"] == summary["best"]
        job_out = tmp_path / "job"
        job = _ray(
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--",
            str(BIN / "searchprune"),
            "run",
            str(config),
            *small,
            "--out",
            str(job_out),
            "--ray-address",
            "auto",
            env=env,
        )
        assert job.returncode == 0, (job.stdout + job.stderr)[-2000:]
        assert json.loads((job_out / "summary.json").read_text())["best"] == summary["best"]
    finally:
        _ray("stop", env=env)
