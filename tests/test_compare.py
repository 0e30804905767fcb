"""The compare harness end to end, fine-tuning in runs, and compare config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from searchprune.cli import main
from searchprune.compare import plan
from searchprune.config import ConfigError

BASE = {
    "task": "digits-mlp",
    "budget": {"sparsity": 0.8},
    "run": {"max_evals": 64, "seed": 0, "progress": False},
}


def _write(tmp_path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_finetuning_is_reported_for_best_and_baselines(tmp_path: Path) -> None:
    config = _write(tmp_path, {**BASE, "searcher": "ga", "finetune": {"epochs": 2}})
    assert main(["run", str(config), "--out", str(tmp_path / "f")]) == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    for figures in [summary["best"], *summary["baselines"].values()]:
        tuned = figures["finetuned"]
        assert tuned["epochs"] == 2
        assert tuned["test_accuracy"] > figures["test_accuracy"]  # 80% sparse MLP recovers


def test_compare_end_to_end_and_rerun_reuses_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "task": "digits-mlp",
        "run": {"max_evals": 32},
        "compare": {
            "methods": ["ga", "random", "magnitude-global"],
            "budgets": [{"sparsity": 0.8}, {"sparsity": 0.9}],
            "seeds": [0, 1],
            "settings": {"ga": {"population": 8}, "random": {"population": 8}},
        },
    }
    config = _write(tmp_path, data)
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 3 * 2
    assert {row["method"] for row in rows} == {"ga", "random", "magnitude-global"}
    for row in rows:
        assert row["seeds"] == "2"
        expected = 1 if row["method"] == "magnitude-global" else 32
        assert float(row["unique_evaluations"]) == expected
        assert float(row["sparsity"]) >= float(row["budget"].split()[1]) - 1e-6
    markdown = (out / "compare.md").read_text()
    assert "| digits-mlp | sparsity 0.9 | ga |" in markdown
    assert (out / "accuracy_vs_budget_digits-mlp.png").stat().st_size > 0
    summary = out / "runs" / "digits-mlp" / "sparsity-0.9" / "ga-s1" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    assert main(["compare", str(config), "--out", str(out)]) == 0
    assert summary.stat().st_mtime_ns == stamp, "a finished run is reused, not rerun"


def test_compare_config_errors() -> None:
    with pytest.raises(ConfigError, match="needs a 'compare' section"):
        plan({"task": "digits-mlp"})
    with pytest.raises(ConfigError, match="compare.methods: unknown searcher, method or variant"):
        plan(
            {"task": "digits-mlp", "compare": {"methods": ["gaa"], "budgets": [{"sparsity": 0.5}]}}
        )
    with pytest.raises(ConfigError, match="budget: a compare config sets this per run"):
        plan(
            {
                "task": "digits-mlp",
                "budget": {"sparsity": 0.5},
                "compare": {"methods": ["ga"], "budgets": [{"sparsity": 0.5}]},
            }
        )
    _, cells, skipped = plan(
        {
            "task": "digits-mlp",
            "space": {"name": "binary", "granularity": "channel"},
            "compare": {"methods": ["ga", "cmaes"], "budgets": [{"flops": 0.5}], "seeds": [0, 1]},
        }
    )
    assert [c.method for c in cells] == ["ga", "ga"] and skipped and "cmaes" in skipped[0]


def _compare_config(tmp_path: Path, **compare: object) -> Path:
    data = {
        "task": "digits-mlp",
        "run": {"max_evals": 16},
        "compare": {
            "methods": ["random"],
            "budgets": [{"sparsity": 0.8}],
            "settings": {"random": {"population": 8}},
            **compare,
        },
    }
    return _write(tmp_path, data)


def test_every_cells_settings_are_checked_before_the_first_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _compare_config(
        tmp_path,
        methods=["random", "ga"],
        settings={"random": {"population": 8}, "ga": {"populaton": 8}},
    )
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run digits-mlp/sparsity-0.8/ga-s0" in err
    assert "searcher.populaton: unknown key for searcher 'ga'" in err
    assert not out.exists(), "nothing ran"
    typo = _compare_config(tmp_path, settings={"randon": {"population": 8}})
    assert main(["compare", str(typo), "--out", str(out)]) == 2
    assert "compare.settings: unknown method of compare.methods 'randon'" in (
        capsys.readouterr().err
    )


def test_runs_of_other_settings_are_refused_until_asked_to_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _compare_config(tmp_path)
    out = tmp_path / "cmp"
    run = out / "runs" / "digits-mlp" / "sparsity-0.8" / "random-s0"
    assert main(["compare", str(config), "--out", str(out)]) == 0
    stamp = (run / "summary.json").stat().st_mtime_ns
    larger = ["compare", str(config), "--out", str(out), "--set", "run.max_evals=24"]
    assert main(larger) == 2
    err = capsys.readouterr().err
    assert f"{run}: run.max_evals: 16 -> 24" in err and "--rerun-changed" in err
    assert (run / "summary.json").stat().st_mtime_ns == stamp, "the old run is left alone"

    # a run cut short (no summary yet) is not resumed under another population either
    (run / "summary.json").unlink()
    smaller = ["compare", str(config), "--out", str(out)]
    smaller += ["--set", "compare.settings.random.population=4"]
    assert main(smaller) == 2
    assert f"{run}: searcher.population: 8 -> 4" in capsys.readouterr().err

    assert main([*larger, "--rerun-changed"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unique_evaluations"] == 24
    assert main(larger) == 0, "the rerun run matches its cell now"
