"""End-to-end: the real CLI on tiny budgets, exit codes, plug-ins and resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from searchprune.cli import main

PLUGINS = str(Path(__file__).parent / "plugins")


def _config(tmp_path: Path, **sections: object) -> Path:
    data = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.9},
        "searcher": {"name": "ga", "population": 8},
        "run": {"max_evals": 48, "seed": 0, "progress": False},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # run.count: unique (the default): 48 distinct candidates, repeats answered by the cache
    assert summary["unique_evaluations"] == 48 and summary["seed"] == 0
    assert summary["budget"] == {"sparsity": 0.9}
    best, dense = summary["best"], summary["dense"]
    assert best["sparsity"] >= 0.9 - 1e-6 and 0 < best["flops_fraction"] < 0.2
    assert (
        0.9 < dense["test_accuracy"] <= 1.0 and 0.1 < best["test_accuracy"] < dense["test_accuracy"]
    )
    assert set(summary["baselines"]) == {"magnitude-global", "magnitude-layer"}
    for figures in summary["baselines"].values():
        assert figures["sparsity"] >= 0.9 - 1e-6
    assert (
        best["val_fitness"] >= max(b["val_fitness"] for b in summary["baselines"].values()) - 0.05
    )
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == summary["evaluations"] >= 48
    assert sum(not row["cached"] for row in history) == 48
    assert history[-1]["best"] == pytest.approx(best["val_fitness"])
    assert all(row["sparsity"] >= 0.9 - 1e-6 for row in history)
    for name in ("config.yaml", "best_masks.npz", "fitness.png", "layer_sparsity.png"):
        assert (out / name).stat().st_size > 0
    assert "magnitude-global" in capsys.readouterr().out


def test_same_seed_same_result(tmp_path: Path) -> None:
    summaries = []
    for name in ("a", "b"):
        assert main(["run", str(_config(tmp_path)), "--out", str(tmp_path / name)]) == 0
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text())["best"])
    assert summaries[0] == summaries[1]


def test_baseline_method_and_channel_space(tmp_path: Path) -> None:
    config = _config(tmp_path, method="magnitude-global")
    data = yaml.safe_load(config.read_text())
    del data["searcher"]
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "m")]) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["method"] == "magnitude-global" and summary["evaluations"] == 1
    assert list(summary["baselines"]) == ["magnitude-layer"]
    binary = _config(
        tmp_path, space={"name": "binary", "granularity": "channel"}, budget={"flops": 0.5}
    )
    assert main(["run", str(binary), "--out", str(tmp_path / "b")]) == 0
    best = json.loads((tmp_path / "b" / "summary.json").read_text())["best"]
    assert best["flops_fraction"] <= 0.5 + 1e-9


def test_user_task_and_fitness_from_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    config = _config(
        tmp_path,
        task={"name": "user_plugin:make_task", "hidden": 12},
        fitness="user_plugin:sparse_accuracy",
        budget={"flops": 0.6},
    )
    assert main(["run", str(config), "--out", str(tmp_path / "u")]) == 0
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["best"]["flops_fraction"] <= 0.6 + 1e-9
    assert summary["dense"]["test_accuracy"] > 0.85


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("searcher.name=gaa", "searcher.name: unknown searcher 'gaa'; did you mean 'ga'?"),
        ("space.criterion=snp", "space.criterion: unknown criterion 'snp'"),
        ("budget.sparsity=0.9999", "budget.sparsity=0.9999 cannot be met"),
        ("task=digits-mlpp", "task.name: unknown task 'digits-mlpp'; did you mean 'digits-mlp'?"),
        ("searcher.popsize=3", "searcher.popsize: unknown key for searcher 'ga'"),
        ("fitness=nomodule.x:f", "fitness.name: cannot import module 'nomodule.x'"),
        ("space.exclude=[fc9]", "space.exclude names ['fc9']"),
        ("run.seed=-1", "run.seed: Input should be greater than or equal to 0"),
        ("run.seed=1180591620717411303424", "run.seed: Input should be less than or equal to"),
        ("task.seed=-2", "task.seed: Input should be greater than or equal to 0"),
        ("space.layer_bounds={net.0: [0.8, 0.2]}", "space.layer_bounds.net.0: [0.8, 0.2] is not"),
        ("space.layer_bounds={net.0: [0, 2]}", "space.layer_bounds.net.0: [0.0, 2.0] is not"),
        ("fitness.penalty=.inf", "fitness.penalty: must be a finite number (got inf)"),
        ("fitness.penalty=.nan", "fitness.penalty: must be a finite number (got nan)"),
        ("evaluator.device=banana", "evaluator.device: 'banana' is not a torch device"),
        ("searcher.population=100000000", "searcher.population: at most 1,000,000 genomes"),
        ("run.seed=[unclosed", "--set 'run.seed=[unclosed': the value of run.seed is not valid"),
        ("task.depth=3", "task: 'digits-mlp' does not take these options"),
    ],
)
def test_config_errors_exit_2_and_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    code = main(["run", str(_config(tmp_path)), "--set", override, "--out", str(tmp_path / "x")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a rejected config leaves no run directory behind"


def test_fitness_failure_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    config = _config(tmp_path, fitness="user_plugin:make_task")  # wrong signature: raises
    assert main(["run", str(config), "--out", str(tmp_path / "f")]) == 1
    assert re.search(
        r"fitness 'make_task' raised TypeError on candidate #\d+", capsys.readouterr().err
    )


def test_list_names_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "digits-resnet",
        "mnist1d-cnn",
        "ga",
        "random",
        "magnitude-global",
        "layer-ratios",
        "binary",
        "magnitude",
        "r_flops",
        "neg_loss",
    ):
        assert f"  {name} " in out


def test_existing_run_directory_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 0
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(["amc", "cmaes", "ga", "nsga2", "pso", "random", "sa"]))
def test_every_searcher_runs_from_a_config_within_the_budget(tmp_path: Path, name: str) -> None:
    config = _config(tmp_path, searcher={"name": name, "population": 8})
    out = tmp_path / name
    assert main(["run", str(config), "--out", str(out)]) == 0
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert sum(not row["cached"] for row in history) == 48
    assert all(row["sparsity"] >= 0.9 - 1e-6 for row in history)
    assert json.loads((out / "summary.json").read_text())["method"] == name


@pytest.mark.parametrize("under", [False, True])
def test_an_out_that_is_a_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], under: bool
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    out = afile / "run" if under else afile
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 2
    expected = f"lies under {afile}, which is a file" if under else "is a file"
    assert f"--out {out}: {expected}" in capsys.readouterr().err
    assert afile.read_text() == "mine\n"


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, code: str) -> None:
    """A plug-in module ``name`` in the working directory."""
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("def f(:\n", "(SyntaxError: "),
        ("raise RuntimeError('no GPU here')\n", "(RuntimeError: no GPU here)"),
        ("import sys\nsys.exit(3)\n", "(SystemExit: 3)"),
    ],
)
def test_a_plug_in_that_fails_on_import_is_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: str,
    message: str,
) -> None:
    _plugin(tmp_path, monkeypatch, "broken_plugin", code)
    config = _config(tmp_path, fitness="broken_plugin:score")
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "fitness.name: importing module 'broken_plugin' for 'broken_plugin:score' failed" in err
    assert message in err
    assert not (tmp_path / "r").exists()


def test_options_a_factory_passes_on_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    code = (
        "import user_plugin\n\ndef make(**options):\n    return user_plugin.make_task(**options)\n"
    )
    _plugin(tmp_path, monkeypatch, "passing_plugin", code)
    config = _config(tmp_path, task={"name": "passing_plugin:make", "depth": 3})
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "task: 'passing_plugin:make' does not take these options" in err
    assert "unexpected keyword argument 'depth'" in err


def test_a_fitness_that_returns_a_bool_is_not_a_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _plugin(tmp_path, monkeypatch, "bool_fitness", "def score(ctx):\n    return True\n")
    config = _config(tmp_path, fitness="bool_fitness:score")
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 1
    assert "fitness 'score' returned True (bool) on candidate #" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a CUDA GPU")
def test_a_device_this_torch_cannot_use_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, evaluator={"device": "cuda"})
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "evaluator.device: 'cuda' needs a CUDA GPU" in err and "evaluator.device: cpu" in err


def test_duplicate_keys_and_damaged_run_configs_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text(
        "task: digits-mlp\nbudget: {sparsity: 0.9}\nsearcher: ga\nbudget: {sparsity: 0.5}\n"
    )
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "key 'budget' is given twice (lines 2 and 4)" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for text in ("task: [unclosed\n", "just a string\n", "\x00\xff\xfe"):
        (damaged / "config.yaml").write_bytes(text.encode("latin-1"))
        assert main(["run", "--resume", str(damaged)]) == 2
        assert f"{damaged / 'config.yaml'}" in capsys.readouterr().err


def test_list_into_a_closed_pipe_exits_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "searchprune.cli", "list"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader leaves before the listing is written (`| head`)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err


UNSEEDED = """
import os

import torch
from torch import nn

from searchprune import Task


def make_task():
    \"\"\"Fixed data; a model trained from an initial state no seed fixes.\"\"\"
    data = torch.Generator().manual_seed(0)
    inputs = torch.randn(600, 8, generator=data)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    if os.environ.get("FLIP_LABELS") == "1":
        targets = 1 - targets
    init = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=init))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[:400]), targets[:400]).backward()
        optimizer.step()
    return Task(model=model.eval(), train=(inputs[:400], targets[:400]),
                val=(inputs[400:500], targets[400:500]), test=(inputs[500:], targets[500:]))
"""


def test_exports_are_the_weights_that_were_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _plugin(tmp_path, monkeypatch, "unseeded", UNSEEDED)
    config = _config(tmp_path, task="unseeded:make_task", budget={"sparsity": 0.5})
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "dense_model.json").read_text())
    assert record["task"] == "unseeded:make_task" and len(record["sha256"]) == 64
    assert record["val_accuracy"] == summary["dense"]["val_accuracy"]
    stored = torch.load(out / "dense_model.pt", weights_only=True)
    assert sorted(stored) == ["0.bias", "0.weight", "2.bias", "2.weight"]

    assert main(["export", str(out), "--format", "masked"]) == 0
    exported = torch.export.load(out / "model-masked.pt2").module()
    inputs = torch.randn(600, 8, generator=torch.Generator().manual_seed(0))
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    with torch.inference_mode():
        predicted = exported(inputs[400:500]).argmax(dim=1)
    accuracy = int((predicted == targets[400:500]).sum()) / 100
    assert accuracy == pytest.approx(summary["best"]["val_accuracy"], abs=1e-9)

    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--set", "run.max_evals=64"]) == 2
    err = capsys.readouterr().err
    assert "task: 'unseeded:make_task' built a different dense model" in err
    assert "sha256" in err and record["sha256"] in err

    # the factory now builds other data: flipped labels score the stored model 1 - acc,
    # never its recorded accuracy (other random data could, by chance, score the same)
    monkeypatch.setenv("FLIP_LABELS", "1")
    assert main(["export", str(out), "--format", "compact"]) == 2
    assert "task: 'unseeded:make_task' rebuilt other data" in capsys.readouterr().err
