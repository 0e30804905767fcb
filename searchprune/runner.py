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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from searchprune.assemble import build_problem, build_task
from searchprune.config import Config, ConfigError
from searchprune.core.masks import MaskSet
from searchprune.evaluate import Evaluator, LocalEvaluator, Result
from searchprune.fitness import FITNESSES
from searchprune.latency import LatencyModel
from searchprune.problem import Evaluation, Problem
from searchprune.pruners import baseline_method, make_method, method_class
from searchprune.registry import SpecError
from searchprune.report import (
    dense_figures,
    final_test_split,
    latency_section,
    mask_figures,
    write_report,
)
from searchprune.rundir import RunDir
from searchprune.runtime import prepare_process
from searchprune.search import SEARCHERS, Searcher, make_searcher
from searchprune.search.base import FrontMember
from searchprune.space import BudgetMode
from searchprune.tasks import TASKS, Task


# --------------------------------------------------------------------- building
def build_searcher(config: Config, problem: Problem) -> Searcher:
    assert config.searcher is not None
    params = config.searcher.model_extra or {}
    return make_searcher(
        config.searcher.name, problem.space, seed=config.run.seed, problem=problem, **params
    )


def build_evaluator(config: Config, problem: Problem, budget_mode: BudgetMode) -> Evaluator:
    spec = config.evaluator
    if spec.name == "local":
        return LocalEvaluator(problem, cache=spec.cache, budget_mode=budget_mode)
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
        budget_mode=budget_mode,
    )


def check_names(config: Config) -> None:
    """Fail fast, before any training, on names no registry knows."""
    from searchprune.criteria import CRITERIA
    from searchprune.space import SPACES

    checks: list[tuple[Any, str]] = [
        (TASKS, config.task.name),
        (SPACES, config.space.name),
        (CRITERIA, config.space.criterion),
        (FITNESSES, config.fitness.name),
    ]
    if config.searcher is not None:
        checks.append((SEARCHERS, config.searcher.name))
    try:
        for registry, name in checks:
            registry.get(name)
        if config.method is not None:
            method_class(config.method.name)
        for name in config.baselines:
            baseline_method(name)
    except SpecError as error:
        raise ConfigError(str(error)) from None


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


def search_loop(
    config: Config, searcher: Searcher, evaluator: Evaluator, run_dir: RunDir, state: LoopState
) -> LoopState:
    """Ask, evaluate, tell, log and checkpoint until a stopping rule fires."""
    run = config.run
    started = time.perf_counter() - state.elapsed
    bar = tqdm(
        total=run.max_evals,
        initial=state.evals,
        disable=not run.progress,
        desc=config.method_name,
        unit="eval",
        dynamic_ncols=True,
    )
    with run_dir.append_history() as history:
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
            run_dir.save_checkpoint({"loop": state, "searcher": searcher.state_dict()})
            bar.update(len(results))
            bar.set_postfix(best=f"{state.best_fitness:.4f}", refresh=False)
    bar.close()
    return state


# ------------------------------------------------------------------- finishing
def _run_method(
    config: Config, task: Task, problem: Problem
) -> tuple[Problem, MaskSet, dict[str, Any]]:
    """Run the config's ``method`` on the problem; a trained copy of the model (from a
    training-time method) gets a problem of its own."""
    assert config.method is not None
    try:
        method = make_method(config.method.name, config.run.seed, **config.method.options)
    except SpecError as error:
        raise ConfigError(str(error)) from None
    result = method.run(problem)
    if result.model is None:
        return problem, result.masks, result.info
    trained_problem = build_problem(config, replace(task, model=result.model), problem.latency)
    return trained_problem, result.masks, result.info


def finish(
    config: Config,
    task: Task,
    problem: Problem,
    best: tuple[MaskSet, Evaluation],
    state: LoopState,
    run_dir: RunDir,
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
    test = final_test_split(task, problem)
    masks, evaluation = best
    run_dir.save_best_masks(masks)
    best_problem = best_problem or problem
    densities = {"best": best_problem.layer_density(masks)}
    baselines: dict[str, dict[str, Any]] = {}
    for name in config.baselines:
        if config.method is not None and name == config.method.name:
            continue
        baseline_masks = make_method(name, config.run.seed).run(problem).masks
        baselines[name] = mask_figures(
            config, problem, baseline_masks, problem.score_masks(baseline_masks, name), test
        )
        densities[name] = problem.layer_density(baseline_masks)
    summary: dict[str, Any] = {
        "seed": config.run.seed,
        "task": config.task.name,
        "method": config.method_name,
        "evaluations": state.evals,
        "unique_evaluations": sum(
            1 for row in run_dir.read_history() if not row.get("cached", False)
        ),
        "wall_time_s": round(state.elapsed, 3),
        "budget": config.budget,
        "dense": dense_figures(problem, test),
        "best": {
            **mask_figures(config, best_problem, masks, evaluation, test),
            "eval_index": state.best_index,
        },
        "baselines": baselines,
    }
    if method_info:
        summary["method_info"] = method_info
    if problem.latency is not None:
        summary["latency_model"] = latency_section(problem)
    echo(write_report(run_dir, summary, densities, front or []))
    echo(f"run directory: {run_dir.path}")
    return summary


def run(
    config: Config, out: str | Path, *, resume: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run a config into directory ``out`` (or continue the run there); return the summary."""
    run_dir = RunDir(out)
    check_names(config)
    if not resume and run_dir.started:
        raise ConfigError(f"{out} already holds a run; pass --resume {out} or choose another --out")
    run_dir.create(config)
    prepare_process(config.evaluator.threads)
    random.seed(config.run.seed)
    torch.manual_seed(config.run.seed)
    measured = run_dir / RunDir.LATENCY_MODEL
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
        return _run_method_to_report(config, task, problem, run_dir, echo)
    return _search_to_report(config, task, problem, run_dir, echo, resume)


def _run_method_to_report(
    config: Config, task: Task, problem: Problem, run_dir: RunDir, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Run the config's method, score its masks, and write the report."""
    assert config.method is not None
    started = time.perf_counter()
    best_problem, masks, info = _run_method(config, task, problem)
    if best_problem is not problem:  # keep the trained weights the masks belong to
        torch.save(best_problem.model.state_dict(), run_dir / RunDir.TRAINED_MODEL)
    evaluation = best_problem.score_masks(masks, config.method.name)
    state = LoopState(
        evals=1,
        elapsed=time.perf_counter() - started,
        best_fitness=evaluation.fitness,
        best_index=0,
    )
    run_dir.start_history(
        [{"eval": 0, "fitness": evaluation.fitness, "best": evaluation.fitness,
          **evaluation.metrics}]
    )
    return finish(
        config,
        task,
        problem,
        (masks, evaluation),
        state,
        run_dir,
        echo,
        best_problem=best_problem,
        method_info=info,
    )


def _search_to_report(
    config: Config,
    task: Task,
    problem: Problem,
    run_dir: RunDir,
    echo: Callable[[str], None],
    resume: bool,
) -> dict[str, Any]:
    """Run (or resume) the config's searcher through the loop, and write the report."""
    try:
        searcher = build_searcher(config, problem)
    except SpecError as error:
        raise ConfigError(str(error)) from None
    state = LoopState()
    if resume and run_dir.started:
        saved = run_dir.load_checkpoint()
        searcher.load_state_dict(saved["searcher"])
        state = saved["loop"]
        echo(f"resuming {run_dir.path} at evaluation {state.evals}")
    else:
        run_dir.start_history()
    with build_evaluator(config, problem, searcher.budget_mode) as evaluator:
        state = search_loop(config, searcher, evaluator, run_dir, state)
    if state.best_genome is None:
        raise RuntimeError("the run ended before any candidate was evaluated")
    best_masks = problem.space.decode(state.best_genome)
    best_eval = Evaluation(state.best_fitness, state.best_metrics)
    return finish(
        config, task, problem, (best_masks, best_eval), state, run_dir, echo, searcher.front()
    )
