"""A real two-node Ray cluster on loopback, started with ``ray start``, running the
commands of docs/ray.md ("A cluster") as a user types them.

The commands run in a user's environment: the venv's ``bin`` first on ``PATH`` (as
``source .venv/bin/activate`` gives), ``RAY_AUTH_MODE=token``, no ``PYTHONPATH``, from
the repository root. The test adds only what keeps its cluster apart from anything else
on the machine: free ports, its own ``--temp-dir``, its own token file
(``RAY_AUTH_TOKEN_PATH``, so ``~/.ray/auth_token`` is neither read nor written) and a
marker variable in the environment of every process of its cluster.

Teardown stops this cluster only. Plain ``ray stop`` stops every Ray cluster on the
machine (other tests', other users', a benchmark's), so the test ends the processes that
carry its marker instead. Kept apart from ``test_ray.py``: no in-process Ray runs here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [  # a two-node Ray cluster and four quickstart runs (about 90 s)
    pytest.mark.slow,
    pytest.mark.xdist_group("ray"),  # one Ray at a time (Makefile: -n 2)
]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER = "SEARCHPRUNE_TEST_CLUSTER"

# docs/ray.md, verbatim: the test checks the page still holds these lines, then runs them
# with its own ports and output directories
HEAD = (
    "ray start --head --node-ip-address=127.0.0.1 --port=6390 --num-cpus=1 --include-dashboard=true"
)
WORKER = "ray start --address=127.0.0.1:6390 --node-ip-address=127.0.0.1 --num-cpus=1"
RUN = "searchprune run configs/quickstart.yaml --ray-address 127.0.0.1:6390 --out runs/on-cluster"
JOB = (
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m searchprune "
    'run configs/quickstart.yaml --ray-address auto --out "$PWD/runs/job"'
)


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _run(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        shlex.split(command),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _processes_with(marker: str) -> set[int]:
    """Pids of the processes whose environment holds ``marker`` (every process of the
    test's cluster inherits it from ``ray start``)."""
    found = set()
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:  # ended while we looked, or not ours to read
                continue
    return found


def _stop(marker: str) -> None:
    """Stop the processes of this cluster only (SIGTERM, then SIGKILL after 15 s)."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        pids = _processes_with(marker)
        for pid in pids:
            with contextlib.suppress(OSError):  # it ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def user_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The environment of a shell with the venv activated and RAY_AUTH_MODE=token, and
    a ``--temp-dir`` for the cluster (short: Ray's socket paths live in it)."""
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    token.chmod(0o600)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RAY_") and name not in ("PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(BIN.parent),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    env[MARKER] = uuid.uuid4().hex
    temp_dir = tempfile.mkdtemp(prefix="sp-ray-")
    yield env, temp_dir
    # not `ray stop`: that stops every Ray cluster on the machine, not just this one
    marker = f"{MARKER}={env[MARKER]}"
    _stop(marker)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _processes_with(marker), "processes of the test's cluster outlived it"


@pytest.mark.skipif(shutil.which("ray", path=str(BIN)) is None, reason="ray CLI not installed")
def test_the_documented_cluster_run_and_job(
    user_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, temp_dir = user_env
    docs = " ".join((ROOT / "docs" / "ray.md").read_text().split())
    for line in (HEAD, WORKER, RUN, JOB):
        assert line in docs, f"docs/ray.md no longer shows: {line}"
    port, dashboard = _free_port(), _free_port()
    own = f" --dashboard-port={dashboard} --temp-dir={temp_dir} --disable-usage-stats"
    head = _run(HEAD.replace("6390", port) + own, env, 120)
    assert head.returncode == 0, head.stdout + head.stderr
    worker = _run(WORKER.replace("6390", port), env, 120)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    local_out = shlex.quote(str(tmp_path / "local"))
    local = _run(f"searchprune run configs/quickstart.yaml --out {local_out}", env, 300)
    assert local.returncode == 0, local.stderr[-2000:]
    expected = json.loads((tmp_path / "local" / "summary.json").read_text())["best"]

    cluster_out = tmp_path / "on-cluster"
    run = RUN.replace("6390", port)
    cluster = _run(run.replace("runs/on-cluster", shlex.quote(str(cluster_out))), env, 300)
    assert cluster.returncode == 0, cluster.stderr[-2000:]
    summary = json.loads((cluster_out / "summary.json").read_text())
    assert summary["best"] == expected
    assert summary["evaluator"]["name"] == "ray" and summary["evaluator"]["actors"] == 2
    assert summary["evaluator"]["startup_s"] > 0

    # Ray 2.60 sends the token to an address given explicitly only with RAY_AUTH_MODE=token
    no_mode = {name: value for name, value in env.items() if name != "RAY_AUTH_MODE"}
    refused_out = tmp_path / "refused"
    refused = _run(run.replace("runs/on-cluster", shlex.quote(str(refused_out))), no_mode, 300)
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "needs RAY_AUTH_MODE=token here too" in refused.stderr

    # an absolute --out on the node the job's driver runs on (here): the job's working dir
    # is no place for it (the second node unpacks its copy into the same path, mid-run)
    job_out = tmp_path / "job"
    job_line = JOB.replace("8265", dashboard).replace('"$PWD/runs/job"', shlex.quote(str(job_out)))
    job = _run(job_line, env, 400)
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert f"run directory: {job_out}" in job.stdout  # the job's log, tailed by `ray job submit`
    summary = json.loads((job_out / "summary.json").read_text())
    assert summary["best"] == expected
    assert summary["evaluator"]["startup_s"] > 0
