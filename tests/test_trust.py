"""A received run directory is data: its config's plug-ins run only from the working
directory or a searchprune plug-in package, unless the user passes --trust-plugins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from searchprune.cli import main
from searchprune.trust import plugin_references, refusal

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **sections: object) -> Path:
    data = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.9},
        "searcher": {"name": "random", "population": 8},
        "run": {"max_evals": 16, "progress": False},
        "baselines": [],
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("received")
    out = root / "run"
    assert main(["run", str(_config(root)), "--out", str(out)]) == 0
    return out


def _plant(run_dir: Path, section: str, value: object) -> None:
    path = run_dir / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data[section] = value
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("command", ["export", "resume"])
def test_a_planted_command_in_a_received_config_is_refused_and_never_runs(
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    received = tmp_path / "received"
    received.mkdir()
    for path in finished_run.iterdir():
        (received / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "pwned"
    _plant(received, "task", {"name": "subprocess:getoutput", "cmd": f"touch {marker}"})
    argv = {
        "export": ["export", str(received), "--format", "masked"],
        "resume": ["run", "--resume", str(received), "--set", "run.max_evals=24"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "task.name: 'subprocess:getoutput'" in err
    assert "can run processes or code" in err and "--trust-plugins" in err
    assert not marker.exists()


def test_the_plug_in_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.chdir(REPO)
    assert refusal("searchprune.tasks.builtin") is None
    assert refusal("searchprune.search.genetic") is None
    assert refusal("envs.amc") is None
    assert refusal("user_plugin") is None  # the user's own code, under the working directory
    assert "not one of searchprune's plug-in packages" in str(refusal("searchprune.rundir"))
    assert "can run processes or code" in str(refusal("os.path"))
    assert "can run processes or code" in str(refusal("yaml"))  # yaml:unsafe_load
    assert "standard-library module" in str(refusal("json"))
    # installed, but not a searchprune plug-in package: numpy:load runs pickles
    assert "neither under the working directory" in str(refusal("numpy"))
    assert refusal("no_such_module_anywhere") is None  # the import reports it
    monkeypatch.chdir(tmp_path)
    assert "neither under the working directory" in str(refusal("user_plugin"))
    # a module inside the run directory is refused even when it is the working directory
    (tmp_path / "planted.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "inside the run directory" in str(refusal("planted", tmp_path))
    assert refusal("planted") is None


def test_every_plug_in_field_is_found() -> None:
    data = {
        "task": {"name": "pkg.tasks:make", "seed": 0, "path": "/data:x"},
        "fitness": {"name": "accuracy"},
        "space": {"criterion": "pkg.crit:Score", "granularity": "2:4"},
        "evaluator": {"address": "127.0.0.1:6379"},
        "baselines": ["magnitude-global", "pkg.methods:Mine"],
    }
    assert list(plugin_references(data)) == [
        ("task.name", "pkg.tasks:make"),
        ("space.criterion", "pkg.crit:Score"),
        ("baselines[1]", "pkg.methods:Mine"),
    ]


def test_a_users_own_plug_in_runs_fresh_and_needs_the_flag_once_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.chdir(tmp_path)  # the plug-in is not under the working directory
    config = _config(
        tmp_path,
        task={"name": "user_plugin:make_task", "hidden": 12},
        budget={"flops": 0.6},
    )
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0  # the user chose it
    capsys.readouterr()
    assert main(["export", str(out), "--format", "masked"]) == 2
    err = capsys.readouterr().err
    assert "task.name: 'user_plugin:make_task'" in err and "--trust-plugins" in err
    assert not (out / "model-masked.pt2").exists()
    assert main(["export", str(out), "--format", "masked", "--trust-plugins"]) == 0
    assert (out / "model-masked.pt2").stat().st_size > 0
    # resuming with the user's own CONFIG: the same plug-ins, chosen again
    resumed = ["run", str(config), "--resume", str(out), "--set", "run.max_evals=24"]
    assert main(resumed) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["best"]["flops_fraction"] <= 0.6 + 1e-9
