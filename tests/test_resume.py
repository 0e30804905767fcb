"""Exact resume: a run stopped after some generations and resumed writes the history, line
for line, and the summary an uninterrupted run writes, for every registered searcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from searchprune.cli import main
from searchprune.config import Config, ConfigError, validate_config
from searchprune.rundir import RunDir
from searchprune.runner import run
from searchprune.search import SEARCHERS

# small settings that let each searcher learn within 48 evaluations
_SETTINGS: dict[str, dict[str, Any]] = {"amc": {"warmup": 16, "batch_size": 16}}


def _quiet(_: str) -> None:
    """Runs in these tests print nothing."""


def _config(name: str, max_evals: int, **searcher: Any) -> Config:
    return validate_config(
        {
            "task": "digits-mlp",
            "budget": {"sparsity": 0.9},
            "searcher": {"name": name, "population": 8, **_SETTINGS.get(name, {}), **searcher},
            # every proposal counts, so a run stopped at 24 stops after whole generations
            "run": {"max_evals": max_evals, "count": "all", "seed": 0, "progress": False},
            "baselines": [],
        }
    )


def _lines(out: Path) -> list[str]:
    return (out / RunDir.HISTORY).read_text().splitlines()


def _summary(out: Path) -> dict[str, Any]:
    summary = RunDir(out).read_summary()
    for key in ("wall_time_s", "total_time_s", "environment"):  # when and where it ran
        del summary[key]
    return summary


def test_every_registered_searcher_is_tested() -> None:
    assert set(SEARCHERS.names()) == {"amc", "cmaes", "ga", "nsga2", "pso", "random", "sa"}


@pytest.mark.parametrize("name", sorted(SEARCHERS.names()))
def test_a_resumed_run_writes_the_uninterrupted_history(tmp_path: Path, name: str) -> None:
    """Stopped after 24 evaluations (three generations of 8, or part of a GA generation:
    the GA scores only changed children), then resumed to 48."""
    run(_config(name, 48), tmp_path / "straight", echo=_quiet)
    run(_config(name, 24), tmp_path / "split", echo=_quiet)
    run(_config(name, 48), tmp_path / "split", resume=True, echo=_quiet)
    straight = _lines(tmp_path / "straight")
    assert len(straight) == 48
    assert _lines(tmp_path / "split") == straight
    assert _summary(tmp_path / "split") == _summary(tmp_path / "straight")


def test_resume_keeps_the_cache_of_an_interrupted_run(tmp_path: Path) -> None:
    """The GA re-proposes elites and unchanged parents; the evaluator's cache answers
    them, so the resumed run counts the unique evaluations an uninterrupted one does."""
    run(_config("ga", 64), tmp_path / "straight", echo=_quiet)
    run(_config("ga", 32), tmp_path / "split", echo=_quiet)
    run(_config("ga", 64), tmp_path / "split", resume=True, echo=_quiet)
    straight = _summary(tmp_path / "straight")
    assert _summary(tmp_path / "split")["unique_evaluations"] == straight["unique_evaluations"]
    assert straight["unique_evaluations"] < 64


@pytest.mark.parametrize(
    "override", ["run.seed=5", "searcher.population=16", "budget.sparsity=0.8", "task=x"]
)
def test_resume_refuses_to_change_what_the_run_searched(
    tmp_path: Path, override: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(_config("random", 8), out, echo=lambda _: None)
    with pytest.raises(ConfigError, match=r"only run\.max_evals, run\.max_seconds"):
        RunDir(out).read_config([override])
    assert main(["run", "--resume", str(out), "--set", override]) == 2
    assert f"--set '{override}': a resumed run keeps its settings" in capsys.readouterr().err
    assert RunDir(out).read_config(["run.max_evals=16", "run.progress=true"]).run.max_evals == 16
