"""How candidates are scored beyond one pass over val: multi-fidelity evaluation (a shard
first, the best share of each batch on all of val) and selection re-scoring of the top
candidates on train samples before the best is picked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from searchprune.cli import main
from searchprune.config import ConfigError, validate_config
from searchprune.core.budget import Budget
from searchprune.evaluate import Result
from searchprune.problem import Evaluation, Fidelity, Problem
from searchprune.registry import SpecError
from searchprune.runner import LoopState
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsResNet


def _task(val: int = 64, train: int = 96) -> Task:
    torch.manual_seed(0)
    model = DigitsResNet().eval()
    x_val, x_train = torch.rand(val, 64), torch.rand(train, 64)
    with torch.no_grad():  # labels the dense model gets right: pruning then costs accuracy
        y_val, y_train = model(x_val).argmax(1), model(x_train).argmax(1)
    return Task(model, (x_train, y_train), (x_val, y_val))


def _problem(task: Task, **options: object) -> Problem:
    return Problem(
        task,
        budget=Budget("flops", 0.5),
        space="layer-ratios",
        granularity="channel",
        bn_samples=32,
        **options,  # type: ignore[arg-type]
    )


def _genomes(problem: Problem, count: int) -> np.ndarray:
    return problem.space.repair(problem.space.sample(np.random.default_rng(0), count))


def test_fidelity_scores_a_shard_then_promotes_the_best_share() -> None:
    task = _task()
    problem = _problem(task, fidelity=Fidelity(shard=0.25, promote=0.25))
    genomes = _genomes(problem, 8)
    scored = problem.score(genomes, [f"#{i}" for i in range(8)])
    full = _problem(task).score(genomes, [f"#{i}" for i in range(8)])
    # the shard: the first quarter of val, calibrated on the first quarter of 32 samples
    head = Task(
        task.model,
        (task.train.tensors[0][:8], task.train.tensors[1][:8]),
        (task.val.tensors[0][:16], task.val.tensors[1][:16]),
    )
    shard = _problem(head).score(genomes, [f"#{i}" for i in range(8)])
    promoted = [i for i, e in enumerate(scored) if e.metrics["fidelity"] == 1.0]
    assert len(promoted) == 2
    best_on_shard = sorted(range(8), key=lambda i: -shard[i].fitness)[:2]
    assert sorted(promoted) == sorted(best_on_shard)
    for i, evaluation in enumerate(scored):
        reference = full[i] if i in promoted else shard[i]
        assert evaluation.fitness == pytest.approx(reference.fitness)
        spent = 16 + 8 + (64 + 32 if i in promoted else 0)
        assert evaluation.metrics["forward_samples"] == spent
        if i not in promoted:
            assert evaluation.metrics["fidelity"] == 0.25


def test_fidelity_needs_a_shard_and_a_promotion_share() -> None:
    with pytest.raises(SpecError, match="evaluator.fidelity: shard=1.0"):
        Fidelity(shard=1.0, promote=0.5)
    with pytest.raises(ConfigError, match="evaluator.fidelity.promote"):
        validate_config(
            {
                "task": "digits-cnn",
                "budget": {"flops": 0.5},
                "searcher": "ga",
                "evaluator": {"fidelity": {"shard": 0.25, "promote": 0}},
            }
        )


def test_the_best_is_always_scored_on_all_of_val() -> None:
    state = LoopState()
    genome = np.zeros(3)
    state.update(0, Result(genome, Evaluation(0.5, {"fidelity": 1.0})), keep=2)
    state.update(1, Result(genome, Evaluation(0.9, {"fidelity": 0.25})), keep=2)  # a shard
    state.update(2, Result(genome, Evaluation(0.6, {})), keep=2)
    assert (state.best_fitness, state.best_index) == (0.6, 2)
    assert [entry[1] for entry in state.top] == [2, 0]
    assert state.unique == 3


def test_selection_split_follows_the_calibration_samples() -> None:
    task = _task(train=96)
    problem = _problem(task, selection_samples=40)
    assert problem.selection is not None
    inputs, _ = problem.selection.tensors  # type: ignore[misc]
    assert torch.equal(inputs, task.train.tensors[0][32:72])
    shard = _problem(task, selection_samples=1000).selection
    assert shard is not None and len(shard) == 96 - 32
    with pytest.raises(SpecError, match="selection.samples=5.*leaves none"):
        _problem(_task(train=32), selection_samples=5)
    with pytest.raises(ValueError, match="not 'selection'"):
        _problem(task).score(_genomes(problem, 1), ["#0"], "selection")


def test_selection_scores_on_the_selection_split() -> None:
    task = _task()
    problem = _problem(task, selection_samples=64)
    genomes = _genomes(problem, 4)
    rescored = problem.score(genomes, ["a", "b", "c", "d"], "selection")
    assert problem.selection is not None
    inputs, targets = problem.selection.tensors  # type: ignore[misc]
    on_train = Task(task.model, task.train.tensors, (inputs, targets))
    expected = _problem(on_train).score(genomes, ["a", "b", "c", "d"])
    assert [e.fitness for e in rescored] == pytest.approx([e.fitness for e in expected])


def test_a_run_with_selection_reports_whether_the_pick_changed(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "task: digits-cnn\n"
        "space: {name: layer-ratios, granularity: channel}\n"
        "budget: {flops: 0.4}\n"
        "searcher: {name: random, population: 16, warm_start: []}\n"
        "run: {max_evals: 48, progress: false}\n"
        "selection: {top_k: 6, samples: 400}\n"
        "baselines: []\n"
    )
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    selection = summary["selection"]
    rows = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").open()]
    top = sorted(rows, key=lambda row: -row["fitness"])[:6]
    assert [c["eval"] for c in selection["candidates"]] == [row["eval"] for row in top]
    assert selection["samples"] == 400 and selection["top_k"] == 6
    pooled = [c["pooled_fitness"] for c in selection["candidates"]]
    assert selection["picked_index"] == selection["candidates"][int(np.argmax(pooled))]["eval"]
    assert summary["best"]["eval_index"] == selection["picked_index"]
    assert selection["changed"] == (selection["picked_index"] != top[0]["eval"])
    assert ("val_best_test_accuracy" in selection) == selection["changed"]
