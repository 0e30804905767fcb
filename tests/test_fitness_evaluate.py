"""Fitness functions, their error handling, the local evaluator and BN recalibration."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.fitness import FitnessContext, FitnessError, accuracy, neg_loss, r_err, r_flops
from searchprune.problem import Problem
from searchprune.tasks.base import Task, score_model


def _problem(task: Task, fitness=accuracy, **kwargs) -> Problem:  # type: ignore[no-untyped-def]
    return Problem(task, budget=Budget("sparsity", 0.8), fitness=fitness, **kwargs)


def test_builtin_fitness_functions_agree_with_the_model(digits_mlp_task: Task) -> None:
    problem = _problem(digits_mlp_task)
    masks = problem.dense()
    scores = score_model(problem.model, problem.val, problem.task.loss)
    stats = {"flops": problem.cost.dense_flops}
    ctx = FitnessContext(
        problem.model, problem.val, problem.train, problem.device, masks, stats, problem.task.loss
    )
    with torch.inference_mode():
        assert accuracy(ctx)["fitness"] == pytest.approx(scores.accuracy)
        assert neg_loss(ctx)["fitness"] == pytest.approx(-scores.loss, rel=1e-5)
        assert r_err(ctx)["fitness"] == pytest.approx(scores.accuracy - 1.0)
        expected = -(1.0 - scores.accuracy) * math.log(problem.cost.dense_flops)
        assert r_flops(ctx)["fitness"] == pytest.approx(expected)


def test_in_place_evaluation_equals_a_deepcopy_with_masks(digits_mlp_task: Task) -> None:
    problem = _problem(digits_mlp_task)
    dense_state = copy.deepcopy(problem.model.state_dict())
    evaluator = LocalEvaluator(problem)
    genomes = problem.space.sample(np.random.default_rng(0), 6)
    results = evaluator.evaluate(genomes)
    for result in results:
        copied = copy.deepcopy(problem.model)
        modules = dict(copied.named_modules())
        for name, mask in problem.space.decode(result.genome).weights.items():
            modules[name].weight.data.mul_(mask.bool())  # type: ignore[union-attr]
        expected = score_model(copied, problem.val).accuracy
        assert result.fitness == pytest.approx(expected)
        assert result.evaluation.metrics["sparsity"] == pytest.approx(0.8, abs=1e-4)
    after = problem.model.state_dict()
    assert all(torch.equal(dense_state[k], after[k]) for k in dense_state), "model left dense"
    assert len({r.fitness for r in results}) > 1


def test_cache_answers_repeated_genomes(digits_mlp_task: Task) -> None:
    evaluator = LocalEvaluator(_problem(digits_mlp_task))
    genomes = np.random.default_rng(1).uniform(0, 0.99, size=(3, evaluator.problem.space.dim))
    first = evaluator.evaluate(genomes)
    second = evaluator.evaluate(np.vstack([genomes, genomes[:1]]))
    assert evaluator.scored == 3
    assert all(r.cached for r in second)
    assert [r.fitness for r in second[:3]] == [r.fitness for r in first]


def test_nan_fitness_names_the_candidate_or_takes_the_penalty(digits_mlp_task: Task) -> None:
    def broken(ctx: FitnessContext) -> float:
        return float("nan") if ctx.stats["sparsity"] > 0 else 1.0

    genomes = np.full((2, 2), 0.8)
    with pytest.raises(
        FitnessError, match=r"'broken' returned nan on candidate #7.*fitness.penalty"
    ):
        LocalEvaluator(_problem(digits_mlp_task, fitness=broken)).evaluate(genomes, first_index=7)
    results = LocalEvaluator(_problem(digits_mlp_task, fitness=broken, penalty=-1.0)).evaluate(
        genomes
    )
    assert [r.fitness for r in results] == [-1.0, -1.0]
    assert "nan" in (results[0].evaluation.error or "")


def test_raising_and_malformed_fitness_are_reported(digits_mlp_task: Task) -> None:
    def raises(ctx: FitnessContext) -> float:
        raise ZeroDivisionError("boom")

    def no_key(ctx: FitnessContext) -> dict[str, float]:
        return {"accuracy": 1.0}

    genomes = np.full((1, 2), 0.8)
    with pytest.raises(FitnessError, match="raised ZeroDivisionError on candidate #0: boom"):
        LocalEvaluator(_problem(digits_mlp_task, fitness=raises)).evaluate(genomes)
    with pytest.raises(FitnessError, match="without a 'fitness' key"):
        LocalEvaluator(_problem(digits_mlp_task, fitness=no_key)).evaluate(genomes)


def test_fitness_never_sees_the_test_split(digits_mlp_task: Task) -> None:
    seen: list[int] = []

    def spy(ctx: FitnessContext) -> float:
        seen.append(len(ctx.val))
        assert not hasattr(ctx, "test")
        return ctx.accuracy()

    problem = _problem(digits_mlp_task, fitness=spy)
    assert problem.task.test is None and digits_mlp_task.test is not None
    LocalEvaluator(problem).evaluate(np.full((1, 2), 0.5))
    assert seen == [len(digits_mlp_task.split("val"))]


def test_batchnorm_recalibration_changes_scores_and_is_undone(digits_resnet_task: Task) -> None:
    plain = Problem(
        digits_resnet_task,
        budget=Budget("flops", 0.5),
        fitness=accuracy,
        granularity="channel",
        bn_samples=0,
    )
    recal = Problem(
        digits_resnet_task,
        budget=Budget("flops", 0.5),
        fitness=accuracy,
        granularity="channel",
        bn_samples=512,
    )
    before = copy.deepcopy(recal.model.state_dict())
    genome = recal.space.repair(np.full((1, recal.space.dim), 0.5))
    with_recal = LocalEvaluator(recal).evaluate(genome)[0].fitness
    without = LocalEvaluator(plain).evaluate(genome)[0].fitness
    after = recal.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running stats restored"
    assert with_recal != without
    assert with_recal > without - 0.05  # recalibration should not hurt much, usually helps


def test_channels_last_conv_masking_matches_a_contiguous_reference() -> None:
    from searchprune.tasks.models import DigitsCNN

    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 64), torch.randint(0, 10, (64,))
    task = Task(model=DigitsCNN(), train=(inputs, targets), val=(inputs, targets))
    reference_model = copy.deepcopy(task.model)
    problem = Problem(task, budget=Budget("sparsity", 0.7), fitness="neg_loss", channels_last=True)
    conv = next(m for m in problem.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    results = LocalEvaluator(problem).evaluate(problem.space.sample(np.random.default_rng(0), 5))
    for result in results:
        masked = copy.deepcopy(reference_model)
        modules = dict(masked.named_modules())
        for name, mask in problem.space.decode(result.genome).weights.items():
            modules[name].weight.data.mul_(mask)  # type: ignore[union-attr]
        expected = -score_model(masked, problem.val).loss
        assert result.fitness == pytest.approx(expected, rel=1e-4)


def test_a_pickled_problem_still_masks_its_own_model(digits_resnet_task: Task) -> None:
    """Problems travel to Ray actors pickled: the applier must rebind to the copy's tensors."""
    import pickle

    problem = Problem(
        digits_resnet_task, budget=Budget("flops", 0.5), fitness=accuracy, granularity="channel"
    )
    copy_ = pickle.loads(pickle.dumps(problem))
    genomes = problem.space.repair(problem.space.sample(np.random.default_rng(3), 4))
    expected = [r.fitness for r in problem.score(genomes, ["x"] * 4)]
    assert [r.fitness for r in copy_.score(genomes, ["x"] * 4)] == expected
    dense = score_model(problem.model, problem.val).accuracy
    assert any(abs(f - dense) > 0.01 for f in expected), "masks must change the scores"


def test_moving_a_problem_keeps_its_scores(digits_resnet_task: Task) -> None:
    problem = Problem(digits_resnet_task, budget=Budget("flops", 0.5), granularity="channel")
    genomes = problem.space.repair(problem.space.sample(np.random.default_rng(4), 3))
    before = [r.fitness for r in problem.score(genomes, ["x"] * 3)]
    assert problem.to("cpu") is problem
    assert [r.fitness for r in problem.score(genomes, ["x"] * 3)] == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_problem_scores_the_same_on_a_gpu(digits_mlp_task: Task) -> None:
    problem = Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))
    genomes = problem.space.repair(problem.space.sample(np.random.default_rng(5), 8))
    on_cpu = [r.fitness for r in problem.score(genomes, ["x"] * 8)]
    on_gpu = [r.fitness for r in problem.to("cuda").score(genomes, ["x"] * 8)]
    assert on_gpu == pytest.approx(on_cpu, abs=1 / 270)  # at most one val sample flips
    problem.to("cpu")
