"""Builds a run from a config and drives the one search loop every searcher shares.

The loop owns termination (evaluations, wall time, target fitness), seeding, the
progress bar, ``history.jsonl``, a checkpoint after every generation and resuming from
it. At the end it scores the best candidate and the baselines on val and test and
writes the report. Search and fitness never see the test split: only the
:class:`Problem` (built from ``task.without_test()``) scores candidates.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from searchprune.assemble import build_problem, build_task
from searchprune.config import (
    Config,
    ConfigError,
    apply_override,
    describe_errors,
    validate_config,
)
from searchprune.core.masks import MaskSet
from searchprune.evaluate import Evaluator, LocalEvaluator, Result
from searchprune.finetune import finetune
from searchprune.fitness import FITNESSES
from searchprune.latency import LatencyModel, deployed, measure_ms
from searchprune.problem import Evaluation, Problem
from searchprune.pruners.oneshot import METHODS
from searchprune.pruners.training import TRAINING_METHODS
from searchprune.registry import SpecError, unknown_name_message
from searchprune.report import (
    comparison_table,
    plot_fitness,
    plot_layer_sparsity,
    read_history,
    write_front,
    write_json,
)
from searchprune.runtime import prepare_process
from searchprune.search import SEARCHERS, Searcher, make_searcher
from searchprune.search.base import FrontMember
from searchprune.tasks import TASKS, Split, Task, score_model

CHECKPOINT = "checkpoint.pkl"
TRAINED_MODEL = "trained_model.pt"
LATENCY_MODEL = "latency_model.json"
HISTORY = "history.jsonl"


# --------------------------------------------------------------------- building
def build_searcher(config: Config, problem: Problem) -> Searcher:
    assert config.searcher is not None
    params = config.searcher.model_extra or {}
    return make_searcher(
        config.searcher.name, problem.space, seed=config.run.seed, problem=problem, **params
    )


def build_evaluator(config: Config, problem: Problem) -> Evaluator:
    spec = config.evaluator
    if spec.name == "local":
        return LocalEvaluator(problem, cache=spec.cache)
    from searchprune.evaluate.ray import RayEvaluator  # Ray loads only when asked for

    return RayEvaluator(
        problem,
        actors=spec.actors,
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        threads=spec.threads,
        address=spec.address,
        chunk=spec.chunk,
        max_deaths=spec.max_deaths,
        cache=spec.cache,
    )


def check_names(config: Config) -> None:
    """Fail fast, before any training, on names no registry knows."""
    from searchprune.pruners.criteria import CRITERIA
    from searchprune.space import SPACES

    checks: list[tuple[Any, str]] = [
        (TASKS, config.task.name),
        (SPACES, config.space.name),
        (CRITERIA, config.space.criterion),
        (FITNESSES, config.fitness.name),
    ]
    if config.searcher is not None:
        checks.append((SEARCHERS, config.searcher.name))
    checks += [(METHODS, name) for name in config.baselines]
    for registry, name in checks:
        try:
            registry.get(name)
        except SpecError as error:
            raise ConfigError(str(error).replace("method:", "baselines:", 1)) from None
    if config.method is not None:
        known = METHODS.names() + TRAINING_METHODS.names()
        if config.method.name not in known:
            raise ConfigError(
                unknown_name_message("method.name", "method", config.method.name, known)
            )


# ------------------------------------------------------------------------- loop
@dataclass
class LoopState:
    """What the run loop must remember across a checkpoint."""

    evals: int = 0
    elapsed: float = 0.0
    best_fitness: float = -math.inf
    best_genome: np.ndarray | None = None
    best_index: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)

    def update(self, index: int, result: Result) -> None:
        if result.fitness > self.best_fitness:
            self.best_fitness = result.fitness
            self.best_genome = result.genome.copy()
            self.best_index = index
            self.best_metrics = dict(result.evaluation.metrics)


def _genome_record(genome: np.ndarray) -> list[float] | str:
    if genome.dtype == bool:
        return np.packbits(genome).tobytes().hex()
    return [round(float(g), 6) for g in genome]


def _history_line(index: int, result: Result, best: float) -> str:
    row: dict[str, Any] = {
        "eval": index,
        "fitness": result.fitness,
        "best": best,
        **{k: round(v, 6) for k, v in result.evaluation.metrics.items()},
        "cached": result.cached,
        "genome": _genome_record(result.genome),
    }
    if result.evaluation.error:
        row["error"] = result.evaluation.error
    return json.dumps(row)


def _save_checkpoint(out: Path, state: LoopState, searcher: Searcher) -> None:
    tmp = out / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump({"loop": state, "searcher": searcher.state_dict()}, handle)
    os.replace(tmp, out / CHECKPOINT)


def _load_checkpoint(out: Path, searcher: Searcher) -> LoopState:
    with open(out / CHECKPOINT, "rb") as handle:
        saved = pickle.load(handle)
    searcher.load_state_dict(saved["searcher"])
    state: LoopState = saved["loop"]
    lines = (out / HISTORY).read_text().splitlines(keepends=True)[: state.evals]
    (out / HISTORY).write_text("".join(lines))
    return state


def search_loop(
    config: Config, searcher: Searcher, evaluator: Evaluator, out: Path, state: LoopState
) -> LoopState:
    """Ask, evaluate, tell, log and checkpoint until a stopping rule fires."""
    run = config.run
    started = time.perf_counter() - state.elapsed
    bar = tqdm(
        total=run.max_evals,
        initial=state.evals,
        disable=not run.progress,
        desc=f"{searcher.name}",
        unit="eval",
        dynamic_ncols=True,
    )
    with open(out / HISTORY, "a") as history:
        while state.evals < run.max_evals:
            if run.max_seconds is not None and time.perf_counter() - started >= run.max_seconds:
                break
            if run.target_fitness is not None and state.best_fitness >= run.target_fitness:
                break
            genomes = searcher.ask(min(searcher.batch_size, run.max_evals - state.evals))
            results = evaluator.evaluate(genomes, first_index=state.evals)
            searcher.tell(
                np.stack([r.genome for r in results]),
                np.array([r.fitness for r in results]),
                [r.evaluation.metrics for r in results],
            )
            for result in results:
                state.update(state.evals, result)
                history.write(_history_line(state.evals, result, state.best_fitness) + "\n")
                state.evals += 1
            history.flush()
            state.elapsed = time.perf_counter() - started
            _save_checkpoint(out, state, searcher)
            bar.update(len(results))
            bar.set_postfix(best=f"{state.best_fitness:.4f}", refresh=False)
    bar.close()
    return state


# ----------------------------------------------------------------------- report
def _test_split(task: Task, device: torch.device) -> Split | None:
    if task.test is None:
        return None
    split = task.split("test")
    tensors = split.tensors
    return (
        split
        if tensors is None
        else Split((tensors[0].to(device), tensors[1].to(device)), split.batch_size)
    )


def _dense_latency(problem: Problem) -> dict[str, float]:
    """The dense model's measured latency, when the run measures latency."""
    if problem.latency is None:
        return {}
    return {
        "latency_ms": measure_ms(problem.model, problem.task.example_input().to(problem.device))
    }


def _figures(
    config: Config, problem: Problem, masks: MaskSet, evaluation: Evaluation, test: Split | None
) -> dict[str, Any]:
    """Val and test figures of ``masks`` as scored, and after fine-tuning when configured."""
    stats = problem.exact_stats(masks)
    with problem.masked(masks) as model:
        val = score_model(model, problem.val, problem.task.loss)
        test_acc = score_model(model, test, problem.task.loss).accuracy if test else None
    figures: dict[str, Any] = {
        "val_fitness": evaluation.fitness,
        "val_accuracy": val.accuracy,
        "test_accuracy": test_acc,
        "sparsity": stats["sparsity"],
        "flops_fraction": stats["flops_fraction"],
        "params_fraction": stats["params_fraction"],
    }
    if problem.latency is not None:
        example = problem.task.example_input().to(problem.device)
        runnable = deployed(
            problem.masked_copy(masks),
            masks,
            problem.layers,
            problem.graph,
            problem.granularity,
            example,
        )
        figures["latency_ms"] = measure_ms(runnable, example)
        figures["latency_ms_predicted"] = stats["latency_ms"]
    tune = config.finetune
    if tune.epochs > 0:
        tuned = finetune(
            problem.model,
            masks,
            problem.train,
            epochs=tune.epochs,
            lr=tune.lr,
            batch_size=tune.batch_size,
            seed=config.run.seed,
            weight_decay=tune.weight_decay,
            loss=problem.task.loss,
        )
        figures["finetuned"] = {
            "epochs": tune.epochs,
            "val_accuracy": score_model(tuned, problem.val, problem.task.loss).accuracy,
            "test_accuracy": score_model(tuned, test, problem.task.loss).accuracy if test else None,
        }
    return figures


def _run_method(
    config: Config, task: Task, problem: Problem
) -> tuple[Problem, MaskSet, dict[str, Any]]:
    """Run the config's ``method``: a one-shot baseline on the problem's model, or a
    training-time method, whose trained copy gets a problem of its own."""
    assert config.method is not None
    name, options = config.method.name, config.method.options
    if name in METHODS:
        if options:
            raise ConfigError(f"method: {name!r} takes no settings, got {sorted(options)}")
        return problem, METHODS.get(name)(problem), {}
    cls = TRAINING_METHODS.get(name)
    try:
        params = cls.Params.model_validate(options)
    except ValidationError as error:
        raise ConfigError(describe_errors(error, "method", cls.Params, name)) from None
    trained = cls(params, config.run.seed).run(problem)
    trained_problem = build_problem(config, replace(task, model=trained.model), problem.latency)
    return trained_problem, trained.masks, trained.info


def finish(
    config: Config,
    task: Task,
    problem: Problem,
    best: tuple[MaskSet, Evaluation],
    state: LoopState,
    out: Path,
    echo: Callable[[str], None],
    front: list[FrontMember] | None = None,
    best_problem: Problem | None = None,
    method_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the best masks and the baselines on val and test; write the report.

    ``best_problem`` scores the best masks when they belong to another model than
    ``problem``'s (a training-time method's trained copy); dense figures and baselines
    always come from ``problem``'s original model.
    """
    test = _test_split(task, problem.device)
    masks, evaluation = best
    masks.save(out / "best_masks.npz")
    dense_val = score_model(problem.model, problem.val, problem.task.loss)
    dense_test = score_model(problem.model, test, problem.task.loss) if test is not None else None
    best_problem = best_problem or problem
    densities = {"best": best_problem.layer_density(masks)}
    baselines: dict[str, dict[str, Any]] = {}
    for name in config.baselines:
        if config.method is not None and name == config.method.name:
            continue
        baseline_masks = METHODS.get(name)(problem)
        baselines[name] = _figures(
            config, problem, baseline_masks, problem.score_masks(baseline_masks, name), test
        )
        densities[name] = problem.layer_density(baseline_masks)
    history = read_history(out / HISTORY)
    summary = {
        "seed": config.run.seed,
        "task": config.task.name,
        "method": config.method_name,
        "evaluations": state.evals,
        "unique_evaluations": sum(1 for row in history if not row.get("cached", False)),
        "wall_time_s": round(state.elapsed, 3),
        "budget": config.budget,
        "dense": {
            "val_accuracy": dense_val.accuracy,
            "test_accuracy": dense_test.accuracy if dense_test else None,
            **_dense_latency(problem),
        },
        "best": {
            **_figures(config, best_problem, masks, evaluation, test),
            "eval_index": state.best_index,
        },
        "baselines": baselines,
    }
    if method_info:
        summary["method_info"] = method_info
    if problem.latency is not None:
        summary["latency_model"] = {
            "axis": problem.latency.axis,
            "kernels": problem.latency.kernels,
            "points": problem.latency.points,
            "search_budget": {problem.budget.kind: problem.budget.target},
        }
    if front:
        summary["pareto_front"] = write_front(
            front, out, f"{config.task.name}: val fitness vs cost"
        )
    write_json(out / "summary.json", summary)
    plot_fitness(
        history,
        out / "fitness.png",
        f"{summary['method']} on {config.task.name}",
    )
    plot_layer_sparsity(
        densities,
        out / "layer_sparsity.png",
        f"per-layer sparsity, {config.task.name}, budget {config.budget}",
    )
    echo(comparison_table(summary))
    echo(f"run directory: {out}")
    return summary


def run(
    config: Config, out: str | Path, *, resume: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run a config into directory ``out`` (or continue the run there); return the summary."""
    out = Path(out)
    check_names(config)
    if not resume and (out / CHECKPOINT).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume {out} or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.resolved(), sort_keys=False))
    prepare_process(config.evaluator.threads)
    random.seed(config.run.seed)
    torch.manual_seed(config.run.seed)
    measured = out / LATENCY_MODEL
    try:
        task = build_task(config)
        problem = build_problem(
            config, task, LatencyModel.load(measured) if resume and measured.exists() else None
        )
    except SpecError as error:
        raise ConfigError(str(error)) from None
    if problem.latency is not None:  # a resumed run searches under the same budget
        problem.latency.save(measured)
    if config.method is not None:
        started = time.perf_counter()
        best_problem, masks, info = _run_method(config, task, problem)
        if best_problem is not problem:  # keep the trained weights the masks belong to
            torch.save(best_problem.model.state_dict(), out / TRAINED_MODEL)
        evaluation = best_problem.score_masks(masks, config.method.name)
        state = LoopState(
            evals=1,
            elapsed=time.perf_counter() - started,
            best_fitness=evaluation.fitness,
            best_index=0,
        )
        (out / HISTORY).write_text(
            json.dumps(
                {
                    "eval": 0,
                    "fitness": evaluation.fitness,
                    "best": evaluation.fitness,
                    **evaluation.metrics,
                }
            )
            + "\n"
        )
        return finish(
            config,
            task,
            problem,
            (masks, evaluation),
            state,
            out,
            echo,
            best_problem=best_problem,
            method_info=info,
        )
    try:
        searcher = build_searcher(config, problem)
        problem.space.exact = searcher.budget_mode == "exact"
    except SpecError as error:
        raise ConfigError(str(error)) from None
    state = LoopState()
    if resume and (out / CHECKPOINT).exists():
        state = _load_checkpoint(out, searcher)
        echo(f"resuming {out} at evaluation {state.evals}")
    else:
        (out / HISTORY).write_text("")
    with build_evaluator(config, problem) as evaluator:
        state = search_loop(config, searcher, evaluator, out, state)
    if state.best_genome is None:
        raise RuntimeError("the run ended before any candidate was evaluated")
    best_masks = problem.space.decode(state.best_genome)
    best_eval = Evaluation(state.best_fitness, state.best_metrics)
    return finish(
        config, task, problem, (best_masks, best_eval), state, out, echo, searcher.front()
    )


def load_run_config(out: str | Path, overrides: list[str] | None = None) -> Config:
    """The resolved config of an existing run, with ``run.*`` overrides allowed."""
    path = Path(out) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"--resume {out}: no run there (missing config.yaml)")
    data = yaml.safe_load(path.read_text())
    for assignment in overrides or []:
        if not assignment.startswith("run."):
            raise ConfigError(f"--set {assignment!r}: a resumed run only takes run.* overrides")
        apply_override(data, assignment)
    return validate_config(data)
