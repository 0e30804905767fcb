"""Using searchprune the way the field does: objects in memory, callbacks and loggers,
what summary.json records, and a command line that behaves in logs and scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

import searchprune
from searchprune.cli import main
from searchprune.config import read_config_data
from searchprune.tracking import RunCallback

PLUGINS = Path(__file__).parent / "plugins"
sys.path.insert(0, str(PLUGINS))
import toy_extensions  # noqa: E402
import user_plugin  # noqa: E402

SMALL = {
    "budget": {"flops": 0.6},
    "run": {"max_evals": 16, "seed": 0, "progress": False},
    "baselines": ["magnitude-global"],
}


class Recorder(RunCallback):
    """Keeps what a run told it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.rows: list[Mapping[str, Any]] = []
        self.generations: list[tuple[int, float]] = []
        self.summary: Mapping[str, Any] = {}

    def on_start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        self.events.append("start")
        self.config = dict(config)

    def on_evaluation(self, row: Mapping[str, Any]) -> None:
        self.rows.append(row)

    def on_generation(self, evaluations: int, best_fitness: float, rows: Sequence[Any]) -> None:
        self.generations.append((evaluations, best_fitness))

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        self.events.append("finish")
        self.summary = summary


def test_a_task_object_and_a_fitness_function_run_in_memory(tmp_path: Path) -> None:
    """A notebook user's Task and fitness function, passed as objects: a full run with
    baselines, report and plots; the saved config names them as objects."""
    task = user_plugin.make_task(hidden=12)
    recorder = Recorder()
    summary = searchprune.run(
        {**SMALL, "task": task, "fitness": user_plugin.sparse_accuracy, "searcher": "ga"},
        str(tmp_path / "run"),
        callbacks=[recorder],
        echo=lambda _: None,
    )
    assert summary["best"]["flops_fraction"] <= 0.6 + 1e-9
    assert summary["dense"]["test_accuracy"] > 0.85
    assert "magnitude-global" in summary["baselines"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["task"]["name"] == "object:searchprune.tasks.base.Task"
    assert saved["fitness"]["name"] == "object:user_plugin.sparse_accuracy"
    assert (tmp_path / "run" / "fitness.png").stat().st_size > 0
    # callbacks: started, every evaluation, every generation's best, finished
    assert recorder.events == ["start", "finish"]
    assert [row["eval"] for row in recorder.rows] == list(range(summary["evaluations"]))
    assert recorder.generations[-1] == (summary["evaluations"], max(r["fitness"] for r in recorder.rows))
    assert recorder.summary["best"] == summary["best"]


def test_a_searcher_class_and_a_criterion_function_run_in_memory(tmp_path: Path) -> None:
    summary = searchprune.run(
        {
            **SMALL,
            "task": "digits-mlp",
            "searcher": {"name": toy_extensions.UniformSweep, "population": 4},
            "space": {"criterion": toy_extensions.inverse_magnitude},
        },
        str(tmp_path / "run"),
        echo=lambda _: None,
    )
    assert summary["method"] == "object:toy_extensions.UniformSweep"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["searcher"]["name"] == "object:toy_extensions.UniformSweep"
    assert saved["space"]["criterion"] == "object:toy_extensions.inverse_magnitude"


def test_a_saved_config_naming_an_object_says_how_to_run_it_again(tmp_path: Path) -> None:
    """Another process cannot rebuild an object from its name: the error says so."""
    from searchprune.config import validate_config
    from searchprune.registry import SpecError
    from searchprune.runner import check_names

    config = validate_config(
        {**SMALL, "task": "digits-mlp", "searcher": "ga", "fitness": "object:nowhere.f"}
    )
    with pytest.raises(SpecError, match=r"fitness.name: 'object:nowhere.f' stood for a Python"):
        check_names(config)


def test_loggers_named_in_the_config_follow_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    summary = searchprune.run(
        {
            **SMALL,
            "task": "digits-mlp",
            "searcher": {"name": "ga", "population": 8},
            "tracking": ["tensorboard", {"name": "mlflow", "experiment": "api", "tracking_uri": uri}],
        },
        str(tmp_path / "run"),
        echo=lambda _: None,
    )
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    fitness = [event.value for event in events.Scalars("fitness")]
    assert len(fitness) == summary["evaluations"]
    assert events.Scalars("best_fitness")[-1].value == pytest.approx(max(fitness))
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("api").experiment_id])
    assert run.data.metrics["best.test_accuracy"] == pytest.approx(summary["best"]["test_accuracy"])


def test_an_unknown_logger_is_a_config_error_naming_tracking(tmp_path: Path) -> None:
    with pytest.raises(searchprune.ConfigError, match="tracking: unknown logger 'tensorbord'"):
        searchprune.run(
            {**SMALL, "task": "digits-mlp", "searcher": "ga", "tracking": ["tensorbord"]},
            str(tmp_path / "run"),
        )


def test_summary_records_versions_host_device_and_times(tmp_path: Path) -> None:
    import torch

    summary = searchprune.run(
        {**SMALL, "task": "digits-mlp", "method": "magnitude-global"},
        str(tmp_path / "run"),
        echo=lambda _: None,
    )
    environment = json.loads((tmp_path / "run" / "summary.json").read_text())["environment"]
    assert environment == summary["environment"]
    assert environment["torch"] == torch.__version__
    assert environment["searchprune"] == searchprune.provenance.version()
    assert environment["device"] == "cpu" and environment["host"]
    assert environment["started_at"] <= environment["finished_at"]
    assert environment["git_commit"] is None or len(environment["git_commit"]) >= 40
    assert summary["total_time_s"] >= summary["wall_time_s"] >= 0


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"searchprune {searchprune.provenance.version()}"


def test_set_on_a_budget_replaces_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"task": "digits-mlp", "budget": {"sparsity": 0.9}}))
    assert read_config_data(path, ["budget.flops=0.5"])["budget"] == {"flops": 0.5}
    assert read_config_data(path, ["budget.sparsity=0.8"])["budget"] == {"sparsity": 0.8}


def test_quiet_runs_print_nothing_and_pipes_get_no_progress_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    data = {**SMALL, "task": "digits-mlp", "searcher": "ga", "run": {"max_evals": 16}}
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    # not a terminal (captured by pytest), progress left to its default: no bar frames
    assert main(["run", str(config), "--out", str(tmp_path / "p")]) == 0
    captured = capsys.readouterr()
    assert "eval/s" not in captured.err and "|" not in captured.err
    assert "run directory:" in captured.out


def test_the_table_shows_the_fitness_when_it_is_not_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    data = {**SMALL, "task": "digits-mlp", "searcher": "ga", "fitness": "neg_loss"}
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "f")]) == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    lines = capsys.readouterr().out.splitlines()
    assert "fitness" in lines[1].split()
    best = next(line for line in lines if line.startswith("best (ga)"))
    assert best.split()[2] == f"{summary['best']['val_fitness']:.4g}"
    assert "total:" in lines[0]


def test_plug_ins_in_the_working_directory_are_found_by_the_console_script(
    tmp_path: Path,
) -> None:
    """`searchprune run` from the folder holding the plug-in module, as `python -m` users
    expect; from elsewhere the error names the fix."""
    config = tmp_path / "c.yaml"
    data = {**SMALL, "task": {"name": "user_plugin:make_task", "hidden": 12}, "searcher": "ga"}
    config.write_text(yaml.safe_dump(data))
    script = Path(sys.executable).parent / "searchprune"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [str(script), "run", str(config), "--out", str(tmp_path / "w"), "--quiet"],
        cwd=PLUGINS, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    missing = subprocess.run(
        [str(script), "run", str(config), "--out", str(tmp_path / "x"), "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert missing.returncode == 2
    assert "task.name: cannot import module 'user_plugin'" in missing.stderr
    assert "run searchprune from the folder that holds it" in missing.stderr


def test_amc_leaves_no_sb3_folders_in_the_temp_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    searchprune.run(
        {
            **SMALL,
            "task": "digits-mlp",
            "space": {"granularity": "channel"},
            "searcher": {"name": "amc", "population": 4},
        },
        str(tmp_path / "run"),
        echo=lambda _: None,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
