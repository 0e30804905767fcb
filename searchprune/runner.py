"""Builds a run from a config and drives the one search loop every searcher shares.

The loop owns termination (evaluations, wall time, target fitness), seeding, the
progress bar, ``history.jsonl``, a checkpoint after every generation and resuming from
it (to the same history, line for line, as an uninterrupted run). At the end it scores
the best candidate and the baselines on val and test and writes the report. Search and
fitness never see the test split: only the :class:`Problem` (built from
``task.without_test()``) scores candidates.

A run holds its directory's lock while it runs. SIGINT or SIGTERM drops the batch being
evaluated (or, arriving while a batch is being logged and checkpointed, lets that
finish), writes the best masks so far and a summary marked ``"finished": false``, and
raises :class:`RunInterrupted`, whose message names the directory to resume.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from searchprune.assemble import (
    build_problem,
    build_task,
    check_rebuilt,
    dense_record,
    scored_state,
)
from searchprune.config import Config, ConfigError
from searchprune.core.masks import MaskSet
from searchprune.evaluate import Evaluator, LocalEvaluator, Result
from searchprune.fitness import FITNESSES
from searchprune.problem import Evaluation, Problem
from searchprune.provenance import environment, now_iso
from searchprune.pruners import baseline_method, make_method, method_class
from searchprune.registry import SpecError
from searchprune.report import (
    comparison_table,
    dense_figures,
    final_test_split,
    latency_section,
    mask_figures,
    test_accuracy,
    write_report,
)
from searchprune.rundir import RunDir
from searchprune.runtime import prepare_process
from searchprune.search import SEARCHERS, Searcher, make_searcher
from searchprune.search.base import FrontMember
from searchprune.search.streams import GlobalStreams
from searchprune.space import BudgetMode
from searchprune.tasks import TASKS, Task
from searchprune.tracking import Callbacks, RunCallback, make_loggers


# --------------------------------------------------------------------- building
def build_searcher(config: Config, problem: Problem) -> Searcher:
    assert config.searcher is not None
    params = dict(config.searcher.model_extra or {})
    length = getattr(SEARCHERS.get(config.searcher.name), "run_length_param", None)
    if length is not None and length not in params:
        params[length] = config.run.max_evals
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
        connect_timeout=spec.connect_timeout_s,
        cache=spec.cache,
        budget_mode=budget_mode,
    )


def check_names(config: Config) -> None:
    """Fail fast, before any training, on names no registry knows."""
    from searchprune.criteria import CRITERIA
    from searchprune.search.warm import check_warm_start
    from searchprune.space import SPACES, check_space_settings

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
        check_space_settings(config.space.name, config.space.options)
        extra = (config.searcher.model_extra or {}) if config.searcher is not None else {}
        warm_start = extra.get("warm_start")
        if isinstance(warm_start, list):  # a wrong type is named when the searcher is built
            check_warm_start(warm_start)
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
    unique: int = 0  # evaluations the cache did not answer
    repeat_rounds: int = 0  # rounds in a row that scored nothing new
    stopped: str = ""  # why the search stopped early, when a guard stopped it
    top: list[list[Any]] = field(default_factory=list)  # [fitness, index, genome, metrics]

    def spent(self, count: str) -> int:
        """Evaluations spent, as ``run.count`` counts them."""
        return self.unique if count == "unique" else self.evals

    def update(self, index: int, result: Result, keep: int = 0) -> None:
        """Count ``result``; make it the best (and keep it among the ``keep`` best) when
        it was scored on all of val (a multi-fidelity shard score never is)."""
        if not result.cached:
            self.unique += 1
        if result.evaluation.metrics.get("fidelity", 1.0) < 1.0:
            return
        if keep and not result.cached:
            entry = [result.fitness, index, result.genome.copy(), dict(result.evaluation.metrics)]
            self.top = sorted([*self.top, entry], key=lambda item: -item[0])[:keep]
        if result.fitness > self.best_fitness:
            self.best_fitness = result.fitness
            self.best_genome = result.genome.copy()
            self.best_index = index
            self.best_metrics = dict(result.evaluation.metrics)


class RunInterrupted(KeyboardInterrupt):
    """A run ended by SIGINT or SIGTERM; what a resume needs is on disk."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        self.signum = signum
        self.run_dir = run_dir
        super().__init__(
            f"interrupted by {signal.Signals(signum).name}; resume with: "
            f"searchprune run --resume {run_dir}"
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class Interrupts:
    """SIGINT and SIGTERM during a run, raised as :class:`RunInterrupted` in the main
    thread: at once, except inside :meth:`deferred` (a batch being logged and
    checkpointed), which raises it once the block is done."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.pending: int | None = None
        self._deferring = False

    def _handle(self, signum: int, frame: object) -> None:
        if self._deferring:
            self.pending = self.pending or signum
            return
        raise RunInterrupted(signum, self.run_dir)

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Handle the signals inside the block (in the main thread only, where Python
        lets a program handle signals; elsewhere they keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._handle) for sig in signals}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.pending is not None:
            raise RunInterrupted(self.pending, self.run_dir)


def _genome_record(genome: np.ndarray) -> list[float] | str:
    if genome.dtype == bool:
        return np.packbits(genome).tobytes().hex()
    return [round(float(g), 6) for g in genome]


def _history_row(
    index: int, result: Result, best: float, seeded: str | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "eval": index,
        "fitness": result.fitness,
        "best": best,
        **{k: round(v, 6) for k, v in result.evaluation.metrics.items()},
        "cached": result.cached,
        "genome": _genome_record(result.genome),
    }
    if seeded is not None:
        row["seeded"] = seeded
    if result.evaluation.error:
        row["error"] = result.evaluation.error
    return row


def _checkpoint(state: LoopState, searcher: Searcher, evaluator: Evaluator) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly, as plain data."""
    return {
        "loop": asdict(state),
        "searcher": searcher.state_dict(),
        "evaluator": evaluator.state_dict(),
        "process_rng": GlobalStreams.capture().state_dict(),
    }


def search_loop(
    config: Config,
    searcher: Searcher,
    evaluator: Evaluator,
    run_dir: RunDir,
    state: LoopState,
    interrupts: Interrupts | None = None,
    callback: RunCallback | None = None,
) -> LoopState:
    """Ask, evaluate, tell, log and checkpoint until a stopping rule fires; ``callback``
    hears of every evaluation and generation once they are checkpointed.

    ``state`` is updated in place, one whole batch at a time, together with the history
    and the checkpoint (inside ``interrupts.deferred()``), so whatever interrupts the
    loop, ``state`` is the one the last checkpoint holds.
    """
    run = config.run
    commit: Callable[[], AbstractContextManager[None]] = (
        interrupts.deferred if interrupts is not None else nullcontext
    )
    started = time.perf_counter() - state.elapsed
    searcher.attach_novelty(evaluator.novel)
    bar = tqdm(
        total=run.max_evals,
        initial=state.spent(run.count),
        disable=not (sys.stderr.isatty() if run.progress is None else run.progress),
        desc=config.method_name,
        unit="eval",
        dynamic_ncols=True,
    )
    while state.spent(run.count) < run.max_evals and not state.stopped:
        if run.max_seconds is not None and time.perf_counter() - started >= run.max_seconds:
            break
        if run.target_fitness is not None and state.best_fitness >= run.target_fitness:
            break
        before = state.spent(run.count)
        genomes = searcher.ask(min(searcher.batch_size, run.max_evals - before))
        seeded = searcher.seeded(genomes)
        results = evaluator.evaluate(genomes, first_index=state.evals)
        with commit():
            searcher.tell(
                np.stack([r.genome for r in results]),
                np.array([r.fitness for r in results]),
                [r.evaluation.metrics for r in results],
            )
            rows = []
            for result, label in zip(results, seeded, strict=True):
                state.update(state.evals, result, config.selection.top_k)
                rows.append(_history_row(state.evals, result, state.best_fitness, label))
                state.evals += 1
            _guard_repeats(state, results, run.max_repeat_rounds)
            run_dir.append_history([json.dumps(row) for row in rows])
            state.elapsed = time.perf_counter() - started
            run_dir.save_checkpoint(_checkpoint(state, searcher, evaluator))
        if callback is not None:
            for row in rows:
                callback.on_evaluation(row)
            callback.on_generation(state.evals, state.best_fitness, rows)
        bar.update(state.spent(run.count) - before)
        bar.set_postfix(best=f"{state.best_fitness:.4f}", refresh=False)
    bar.close()
    return state


def _guard_repeats(state: LoopState, results: list[Result], limit: int) -> None:
    """Count rounds in a row that scored nothing new; at ``limit`` such rounds, mark the
    search stopped (a space this nearly exhausted would loop on cache hits for ever)."""
    if any(not result.cached for result in results):
        state.repeat_rounds = 0
        return
    state.repeat_rounds += 1
    if state.repeat_rounds >= limit:
        state.stopped = (
            f"stopped after {limit} rounds in a row that proposed only candidates already "
            f"scored ({state.unique} unique of {state.evals} evaluations): the space is "
            "(nearly) exhausted at this budget; raise run.max_repeat_rounds to keep trying"
        )


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
    selection: tuple[dict[str, Any], MaskSet] | None = None,
    evaluator_section: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the best masks and the baselines on val and test; write the plots (the
    caller writes ``summary.json``).

    ``best_problem`` scores the best masks when they belong to another model than
    ``problem``'s (a training-time method's trained copy); dense figures and baselines
    always come from ``problem``'s original model. ``selection`` is the summary's
    ``selection`` section and the val best's masks, whose test accuracy it adds when
    the re-scored pick is another candidate.
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
        "finished": True,
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
    if state.stopped:
        summary["stopped"] = state.stopped
        echo(state.stopped)
    if selection is not None:
        section, val_best = selection
        if section["changed"]:
            section["val_best_test_accuracy"] = test_accuracy(problem, val_best, test)
        summary["selection"] = section
    if evaluator_section:  # a Ray evaluator's connect and actor start-up times
        summary["evaluator"] = evaluator_section
    if problem.latency is not None:
        summary["latency_model"] = latency_section(problem)
    write_report(run_dir, summary, densities, front or [], config)
    return summary


def run(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    echo: Callable[[str], None] = print,
    callbacks: Sequence[RunCallback] = (),
) -> dict[str, Any]:
    """Run a config into directory ``out`` (or continue the run there); return the summary.
    ``callbacks`` and the config's ``tracking`` loggers follow the run
    (:class:`~searchprune.tracking.RunCallback`).

    :raises ConfigError: for a bad config, or a directory that is in use (naming the
        process), already holds a run (without ``resume``) or holds a finished method run.
    :raises RunInterrupted: on SIGINT or SIGTERM (see the module docstring).
    """
    if not resume and str(Path(out)) == ".":
        raise ConfigError(
            "--out: a run needs a directory of its own, not the working directory; "
            "e.g. --out runs/my-run"
        )
    run_dir = RunDir(out)
    check_names(config)
    started_at, clock = now_iso(), time.perf_counter()
    try:
        callback = Callbacks([*make_loggers(config.tracking), *callbacks])
    except SpecError as error:
        raise ConfigError(str(error)) from None
    with run_dir.lock(), Interrupts(run_dir.path).installed() as interrupts:
        if not resume and run_dir.holds_run:
            raise ConfigError(
                f"{out} already holds a run; pass --resume {out} or choose another --out"
            )
        if resume and config.method is not None and run_dir.finished:
            raise ConfigError(
                f"{out}: its {config.method.name} run is finished, so there is nothing to "
                "resume; choose another --out to run it again"
            )
        run_dir.create(config)
        callback.on_start(config.resolved(), run_dir.path)
        prepare_process(config.evaluator.threads)
        random.seed(config.run.seed)
        torch.manual_seed(config.run.seed)
        measured = run_dir.load_latency_model() if resume else None
        try:
            task = build_task(config)
            if resume and run_dir.started:  # the run continues on the model it scored
                stored = run_dir.load_dense_model()
                if stored is not None:
                    check_rebuilt(config, task, stored[1], run_dir.path)
            else:
                run_dir.save_dense_model(scored_state(task), dense_record(config, task))
            problem = build_problem(config, task, measured)
        except SpecError as error:
            raise ConfigError(str(error)) from None
        if problem.latency is not None and measured is None:
            run_dir.save_latency_model(problem.latency)  # a resumed run keeps this budget
        if config.method is not None:
            summary = _run_method_to_report(config, task, problem, run_dir, echo)
        else:
            summary = _search_to_report(
                config, task, problem, run_dir, echo, resume, interrupts, callback
            )
        summary["environment"] = environment(config.evaluator.device, started_at, resume)
        summary["total_time_s"] = round(time.perf_counter() - clock, 3)
        run_dir.write_summary(summary)
        callback.on_finish(summary)
        echo(comparison_table(summary, config.fitness.name))
        echo(f"run directory: {run_dir.path}")
        return summary


def _write_unfinished(
    config: Config, problem: Problem, state: LoopState, run_dir: RunDir, signum: int
) -> None:
    """The best masks so far and a summary marked unfinished, for an interrupted run
    (nothing when no batch was checkpointed: a resume starts afresh)."""
    if state.best_genome is None:
        return
    run_dir.save_best_masks(problem.space.decode(state.best_genome))
    rows = run_dir.read_history()[: state.evals]
    run_dir.write_summary(
        {
            "finished": False,
            "interrupted_by": signal.Signals(signum).name,
            "resume": f"searchprune run --resume {run_dir.path}",
            "seed": config.run.seed,
            "task": config.task.name,
            "method": config.method_name,
            "evaluations": state.evals,
            "unique_evaluations": sum(1 for row in rows if not row.get("cached", False)),
            "wall_time_s": round(state.elapsed, 3),
            "budget": config.budget,
            "best": {
                "val_fitness": state.best_fitness,
                **{k: round(v, 6) for k, v in state.best_metrics.items()},
                "eval_index": state.best_index,
            },
        }
    )


def _run_method_to_report(
    config: Config, task: Task, problem: Problem, run_dir: RunDir, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Run the config's method, score its masks, and write the report."""
    assert config.method is not None
    started = time.perf_counter()
    best_problem, masks, info = _run_method(config, task, problem)
    if best_problem is not problem:  # keep the trained weights the masks belong to
        run_dir.save_trained_model(best_problem.model.state_dict())
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
    interrupts: Interrupts | None = None,
    callback: RunCallback | None = None,
) -> dict[str, Any]:
    """Run (or resume) the config's searcher through the loop, and write the report."""
    try:
        searcher = build_searcher(config, problem)
    except SpecError as error:
        raise ConfigError(str(error)) from None
    state, saved = LoopState(), None
    if resume and run_dir.started:
        saved = run_dir.load_checkpoint()
        try:
            state = LoopState(**saved["loop"])
            run_dir.cut_history(state.evals)
            searcher.load_state_dict(saved["searcher"])
            restored = GlobalStreams(0)
            restored.load_state_dict(saved["process_rng"])
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"{run_dir / RunDir.CHECKPOINT} does not fit this run "
                f"({type(error).__name__}: {error}); start the run again in a new directory"
            ) from None
        restored.install()
        echo(f"resuming {run_dir.path} at evaluation {state.evals}")
    else:
        run_dir.start_history()
    with build_evaluator(config, problem, searcher.budget_mode) as evaluator:
        if saved is not None:
            evaluator.load_state_dict(saved["evaluator"])
        try:
            state = search_loop(
                config, searcher, evaluator, run_dir, state, interrupts, callback
            )
        except RunInterrupted as interrupt:
            with interrupts.deferred() if interrupts is not None else nullcontext():
                _write_unfinished(config, problem, state, run_dir, interrupt.signum)
            raise
    if state.best_genome is None:
        raise RuntimeError("the run ended before any candidate was evaluated")
    val_best = problem.space.decode(state.best_genome)
    best_masks, selection = val_best, None
    if config.selection.top_k:
        selection, picked = _select(problem, state)
        state = replace(state, **picked)
        best_masks = problem.space.decode(picked["best_genome"])
    best_eval = Evaluation(state.best_fitness, state.best_metrics)
    return finish(
        config,
        task,
        problem,
        (best_masks, best_eval),
        state,
        run_dir,
        echo,
        searcher.front(),
        selection=(selection, val_best) if selection is not None else None,
        evaluator_section=evaluator.summary_section(),
    )


def _select(problem: Problem, state: LoopState) -> tuple[dict[str, Any], dict[str, Any]]:
    """Re-score the top candidates on the selection split and pick the one with the best
    fitness over val and selection samples together (a mean weighted by sample count):
    a larger sample than val alone, so a candidate that val ranks first by chance is less
    often picked. Returns the summary's ``selection`` section and the pick's
    :class:`LoopState` fields."""
    genomes = np.stack([entry[2] for entry in state.top])
    rescored = problem.score(genomes, [f"#{entry[1]}" for entry in state.top], "selection")
    assert problem.selection is not None
    n_val, n_selection = len(problem.val), len(problem.selection)
    pooled = [
        (n_val * entry[0] + n_selection * evaluation.fitness) / (n_val + n_selection)
        for entry, evaluation in zip(state.top, rescored, strict=True)
    ]
    pick = int(np.argmax(pooled))
    fitness, index, genome, metrics = state.top[pick]
    picked = {"best_fitness": fitness, "best_genome": genome, "best_index": index}
    section = {
        "top_k": len(state.top),
        "samples": n_selection,
        "val_best_index": state.top[0][1],
        "picked_index": index,
        "changed": pick != 0,
        "candidates": [
            {
                "eval": entry[1],
                "val_fitness": entry[0],
                "selection_fitness": evaluation.fitness,
                "pooled_fitness": value,
            }
            for entry, evaluation, value in zip(state.top, rescored, pooled, strict=True)
        ],
    }
    return section, {**picked, "best_metrics": metrics}
