"""Kill runs and resume them (the crash tests and docs/reliability.md's figures).

:func:`kill_at_every_write_point` runs ``searchprune run`` in subprocesses with
``SEARCHPRUNE_FAULT`` set (:mod:`searchprune.rundir`: the process SIGKILLs itself at the
``n``-th write of a file, before or after the write lands); :func:`kill_at_random_moments`
sends SIGKILL from outside once the run has logged a random number of evaluations. Both
resume each killed run the way a user would and compare the result with an
uninterrupted run's: ``history.jsonl`` line for line, and ``summary.json`` but its wall
time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from searchprune.rundir import FAULT_ENV, WRITE_POINTS, RunDir

# the files a searcher run writes (latency_model.json only with a latency budget, and
# trained_model.pt only for a training-time method: their atomic writes are tested alone)
RUN_WRITES = tuple(
    point.split(":")[1]
    for point in WRITE_POINTS[::2]
    if point.split(":")[1] not in ("latency_model.json", "trained_model.pt")
)


@dataclass
class KillReport:
    """What a sweep did: processes killed, killed runs that resumed to completion, and
    completed runs whose history and summary equal the uninterrupted run's."""

    killed: int = 0
    runs: int = 0
    resumed: int = 0
    identical: int = 0
    points: dict[str, int] = field(default_factory=dict)  # write point -> kills there
    failures: list[str] = field(default_factory=list)


def _reference(workdir: Path, searcher: str, evals: int) -> tuple[Path, Path, Any]:
    """The directory of the searcher's runs of ``evals`` evaluations, their config file,
    and an uninterrupted run's outcome."""
    root = workdir / f"{searcher}-{evals}"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(searcher, evals)))
    if not (root / "reference" / RunDir.SUMMARY).exists():
        cli(["run", str(config), "--out", str(root / "reference")], root)
    return root, config, outcome(root / "reference")


def _compare(report: KillReport, out: Path, expected: Any, label: str) -> None:
    """Count a killed run that was resumed to its end, and whether it ends as the
    uninterrupted run did."""
    report.resumed += 1
    if outcome(out) == expected:
        report.identical += 1
    else:
        report.failures.append(f"{label}: differs from the uninterrupted run")


def run_config(searcher: str, evals: int, population: int = 8, **settings: Any) -> dict[str, Any]:
    """A small searcher run on digits-mlp (no baselines, so it ends fast)."""
    return {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.9},
        "searcher": {"name": searcher, "population": population, **settings},
        "run": {"max_evals": evals, "seed": 0, "progress": False},
        "baselines": [],
    }


def child_env(fault: str | None = None) -> dict[str, str]:
    """The environment of a child process that imports what this one imports, with the
    fault injected (``SEARCHPRUNE_FAULT``) or none."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    return env


def start_run(
    config: Path, out: Path, stderr: int | None = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """``searchprune run CONFIG --out OUT`` started in a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "searchprune.cli", "run", str(config), "--out", str(out)],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def cli(args: Sequence[str], cwd: Path, fault: str | None = None) -> int:
    """``searchprune ARGS`` in a subprocess; its exit status (-9 when the fault killed it)."""
    done = subprocess.run(
        [sys.executable, "-m", "searchprune.cli", *args],
        cwd=cwd,
        env=child_env(fault),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"searchprune {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.returncode


def outcome(out: Path) -> tuple[list[str], dict[str, Any]]:
    """A finished run's history lines and its summary without the wall time."""
    summary = json.loads((out / RunDir.SUMMARY).read_text())
    for key in ("wall_time_s", "total_time_s", "environment"):  # when and where it ran
        summary.pop(key)
    return (out / RunDir.HISTORY).read_text().splitlines(), summary


def _continue(config: Path, out: Path, fault: str | None) -> int:
    """Continue a killed run as a user would: ``--resume`` once the run directory has its
    config, otherwise the same command again."""
    if (out / RunDir.CONFIG).exists():
        return cli(["run", "--resume", str(out)], out.parent, fault)
    return cli(["run", str(config), "--out", str(out)], out.parent, fault)


def kill_at_every_write_point(
    workdir: Path,
    searchers: Iterable[str] = ("ga",),
    evals: int = 24,
    most: int = 3,
    files: Sequence[str] = RUN_WRITES,
) -> KillReport:
    """For each searcher, each file and phase (before/after), and the 1st to ``most``-th
    write of that file: run with the fault, resume with the same fault (a kill inside
    the resume), then resume without it; count kills, completions and identical results.

    A fault that a run never reaches (its file is written fewer times) ends the counts
    for that point.
    """
    report = KillReport()
    for searcher in searchers:
        root, config, expected = _reference(workdir, searcher, evals)
        for name in files:
            for phase in ("before", "after"):
                point = f"{phase}:{name}"
                for count in range(1, most + 1):
                    out = root / f"{phase}-{name}-{count}"
                    fault = f"{point}:{count}"
                    try:
                        if cli(["run", str(config), "--out", str(out)], root, fault) == 0:
                            break  # the run writes this file fewer than `count` times
                        report.runs += 1
                        report.killed += 1
                        report.points[point] = report.points.get(point, 0) + 1
                        if _continue(config, out, fault) != 0:
                            report.killed += 1
                            report.points[point] += 1
                            _continue(config, out, None)
                        _compare(report, out, expected, f"{searcher} {fault}")
                    except (RuntimeError, OSError, ValueError) as error:
                        report.failures.append(f"{searcher} {fault}: {error}")
    return report


def kill_at_random_moments(
    workdir: Path,
    searchers: Iterable[str] = ("ga",),
    kills: int = 10,
    evals: int = 64,
    seed: int = 0,
) -> KillReport:
    """For each searcher, ``kills`` runs each sent SIGKILL once it has logged a random
    number (0 to ``evals - 1``, drawn from ``seed``) of evaluations, wherever the run is
    then (a run that ends first is not counted), each resumed and compared."""
    report, draw = KillReport(), random.Random(seed)
    for searcher in searchers:
        root, config, expected = _reference(workdir, searcher, evals)
        for index in range(kills):
            out, wanted = root / f"random-{index}", draw.randrange(evals)
            process = start_run(config, out)
            history = out / RunDir.HISTORY
            while process.poll() is None and not (
                history.exists() and len(history.read_bytes().splitlines()) >= wanted
            ):
                time.sleep(0.005)
            if process.poll() is not None:
                continue  # the run ended before the kill
            process.kill()
            process.wait()
            report.runs += 1
            report.killed += 1
            point = f"after {wanted} lines"
            report.points[point] = report.points.get(point, 0) + 1
            try:
                _continue(config, out, None)
                _compare(report, out, expected, f"{searcher} kill {index}")
            except (RuntimeError, OSError, ValueError) as error:
                report.failures.append(f"{searcher} kill {index}: {error}")
    return report
