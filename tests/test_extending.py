"""Extension points: a searcher and a criterion from a user's module, named
``module:Name`` in a config, run end to end (docs/extending.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from searchprune.cli import main
from searchprune.core.masks import MaskSet
from searchprune.registry import Registry, SpecError
from searchprune.tasks import load_builtin_task

PLUGINS = str(Path(__file__).parent / "plugins")


def _run(tmp_path: Path, **sections: object) -> Path:
    data = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.9},
        # a sweep repairs to few distinct genomes: count every proposal, repeats included
        "run": {"max_evals": 8, "seed": 0, "progress": False, "count": "all"},
        "baselines": [],
        **sections,
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return out


def test_a_plugin_searcher_and_criterion_run_from_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    out = _run(
        tmp_path,
        searcher={"name": "toy_extensions:UniformSweep", "population": 4},
        space={"criterion": "toy_extensions:inverse_magnitude"},
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "toy_extensions:UniformSweep"
    assert summary["evaluations"] == 8
    assert summary["best"]["sparsity"] == pytest.approx(0.9, abs=2e-3)
    # the criterion ranked the weights: every layer kept its smallest weights
    masks = MaskSet.load(out / "best_masks.npz")
    model = load_builtin_task("digits-mlp").model
    for name, keep in masks.weights.items():
        magnitude = dict(model.named_modules())[name].weight.detach().abs()
        if 0 < int(keep.sum()) < keep.numel():
            assert magnitude[keep].max() <= magnitude[~keep].min() + 1e-12, name


def test_a_plugin_that_is_not_a_searcher_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "digits-mlp",
                "budget": {"sparsity": 0.9},
                "searcher": "toy_extensions:inverse_magnitude",
            }
        )
    )
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "is not a Searcher subclass" in capsys.readouterr().err


def test_lazy_entries_load_on_first_use_and_name_their_field() -> None:
    registry: Registry[object] = Registry("thing", "section.name")
    registry.add_lazy("zeros", "torch:zeros", "torch.zeros, loaded when used")
    assert [e.description for e in registry] == ["torch.zeros, loaded when used"]
    assert registry.get("zeros") is torch.zeros
    assert registry.get("torch:ones") is torch.ones  # plug-in by import path
    with pytest.raises(SpecError, match="section.name: cannot import module 'no_such_mod'"):
        registry.get("no_such_mod:thing")
    with pytest.raises(SpecError, match="section.name: unknown thing 'zero'; did you mean"):
        registry.get("zero")


def test_the_amc_searcher_comes_from_the_envs_entry_point() -> None:
    from searchprune.search import SEARCHERS

    assert "amc" in SEARCHERS
    assert SEARCHERS.get("amc").__module__ == "envs.amc"
