"""Config validation: every bad input names its key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchprune.compare import plan
from searchprune.config import (
    ConfigError,
    apply_override,
    load_config,
    read_config_data,
    validate_config,
)

BASE = {"task": "digits-mlp", "budget": {"sparsity": 0.9}, "searcher": {"name": "ga"}}


def _error(data: dict) -> str:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as caught:
        validate_config(data)
    return str(caught.value)


def test_shorthand_and_defaults() -> None:
    config = validate_config({**BASE, "fitness": "r_flops", "searcher": "random"})
    assert config.fitness.name == "r_flops" and config.searcher is not None
    assert config.searcher.name == "random"
    assert config.space.name == "layer-ratios" and config.run.max_evals == 1000
    assert config.baselines == ["magnitude-global", "magnitude-layer"]
    resolved = config.resolved()
    assert resolved["task"] == {"name": "digits-mlp", "seed": 0}
    assert validate_config(resolved).resolved() == resolved


def test_unknown_key_suggests_the_right_one() -> None:
    message = _error({**BASE, "evaluator": {"devcie": "cpu"}})
    assert "evaluator.devcie: unknown key 'devcie'; did you mean 'device'?" in message
    assert "channels_last" in message  # lists the valid keys
    assert "unknown key 'budjet'" in _error({**BASE, "budjet": 1})


def test_wrong_type_and_out_of_range_values() -> None:
    assert "run.max_evals" in _error({**BASE, "run": {"max_evals": "many"}})
    assert "run.max_evals: Input should be greater than or equal to 1" in _error(
        {**BASE, "run": {"max_evals": 0}}
    )
    assert "budget.sparsity must be a fraction strictly between 0 and 1" in _error(
        {**BASE, "budget": {"sparsity": 1.5}}
    )
    assert "budget: unknown budget 'speed'; use one of sparsity" in _error(
        {**BASE, "budget": {"speed": 2}}
    )
    assert "budget must name exactly one of" in _error(
        {**BASE, "budget": {"flops": 0.5, "params": 0.5}}
    )
    assert "space.granularity: unknown granularity 'filter'" in _error(
        {**BASE, "space": {"granularity": "filter"}}
    )


def test_searcher_or_method_exactly_one() -> None:
    assert "exactly one of 'searcher'" in _error({**BASE, "method": "magnitude-global"})
    no_search = {k: v for k, v in BASE.items() if k != "searcher"}
    assert "exactly one of 'searcher'" in _error(no_search)


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: digits-mlp\nbudget: {sparsity: 0.9}\nsearcher: ga\n")
    config = load_config(path, ["searcher.population=8", "run.seed=3", "budget.sparsity=0.5"])
    assert config.searcher is not None and config.searcher.model_extra == {"population": 8}
    assert config.run.seed == 3 and config.budget == {"sparsity": 0.5}
    data: dict = {}  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_override(data, "no-equals-sign")


def test_unreadable_or_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_committed_config_is_valid() -> None:
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        if path.parent.name == "compare":
            _, cells, _ = plan(read_config_data(path))
            assert cells
        else:
            load_config(path)


def test_seeds_bounds_penalties_devices_and_populations() -> None:
    assert "run.seed: Input should be greater than or equal to 0 (got -1)" in _error(
        {**BASE, "run": {"seed": -1}}
    )
    assert "run.seed: Input should be less than or equal to 4294967295" in _error(
        {**BASE, "run": {"seed": 2**70}}
    )
    assert validate_config({**BASE, "run": {"seed": 2**32 - 1}}).run.seed == 2**32 - 1
    inverted = {**BASE, "space": {"layer_bounds": {"fc1": [0.8, 0.2]}}}
    assert "space.layer_bounds.fc1: [0.8, 0.2] is not a [min, max] pruning ratio" in _error(
        inverted
    )
    assert "space.layer_bounds.fc1: [-0.1, 0.5]" in _error(
        {**BASE, "space": {"layer_bounds": {"fc1": [-0.1, 0.5]}}}
    )
    for value in (float("inf"), float("nan")):
        message = _error({**BASE, "fitness": {"penalty": value}})
        assert f"fitness.penalty: must be a finite number (got {value})" in message
    assert "evaluator.device: 'banana' is not a torch device" in _error(
        {**BASE, "evaluator": {"device": "banana"}}
    )
    assert validate_config({**BASE, "evaluator": {"device": "cuda:1"}}).evaluator.device == "cuda:1"
    assert "searcher.population: at most 1,000,000 genomes per round" in _error(
        {**BASE, "searcher": {"name": "ga", "population": 10**8}}
    )


def test_a_key_given_twice_is_named_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: digits-mlp\nsearcher: {name: ga, population: 8, population: 16}\n")
    with pytest.raises(ConfigError, match=r"key 'population' is given twice \(lines 2 and 2\)"):
        load_config(path)
    path.write_text("task: digits-mlp\nbudget: {sparsity: 0.9}\nsearcher: ga\ntask: digits-cnn\n")
    with pytest.raises(ConfigError, match=r"key 'task' is given twice \(lines 1 and 4\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="the value of run.seed is not valid YAML"):
        apply_override({}, "run.seed=[1, 2")


def test_binary_values_and_files_that_are_not_text(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: {name: digits-mlp, blob: !!binary AAEC}\nbudget: {sparsity: 0.9}\n")
    with pytest.raises(ConfigError, match=r"task.blob: a binary value \(!!binary\)"):
        load_config(path, ["searcher=ga"])
    path.write_bytes(b"\x00\xff\xfe\x80")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)
