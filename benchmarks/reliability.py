"""How searchprune takes bad input, received run directories and concurrent use.

Run: ``.venv/bin/python benchmarks/reliability.py`` (about two minutes; prints a Markdown
report, the figures of docs/reliability.md). Everything goes through the real command
line (:func:`searchprune.cli.main`, in this process, or ``python -m searchprune.cli`` in a
child process where a second process is the point), in a scratch directory:

- **bad inputs**: every config section's wrong types and out-of-range values, unknown
  names and keys, broken YAML and ``--set`` values, ``--out`` on a file, damaged run
  directories, plug-ins that fail on import, compare configs with bad settings, and
  usage errors. Each must exit with status 2 and a message naming the field (the
  documented contract), print no traceback, and leave no run directory behind.
- **planted files**: checkpoints and weight files that would run code if unpickled, and
  run-directory configs that name a command, a code-loading function or a module inside
  the run directory as a plug-in, each tried with ``run --resume``, ``export`` and
  ``compare``. A marker file records any code that ran; the goal is that none does.
- **concurrent use**: a second ``run`` into, and a ``--resume`` of, a directory whose
  run is still going, each refused while the first run holds the directory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from searchprune.cli import main
from searchprune.rundir import RunDir

BASE: dict[str, Any] = {
    "task": "digits-mlp",
    "budget": {"sparsity": 0.9},
    "searcher": {"name": "random", "population": 8},
    "run": {"max_evals": 8, "progress": False},
    "baselines": [],
}
SEARCHERS = ("ga", "pso", "sa", "nsga2", "cmaes", "amc", "random")


@dataclass
class Case:
    """One bad input: the command line, and what its error message must name."""

    label: str
    argv: list[str]
    names: str
    code: int = 2
    out: Path | None = None  # a run directory the command must not leave behind


@dataclass
class Outcome:
    code: int | str
    err: str
    traceback: bool


@dataclass
class Report:
    tried: int = 0
    exit_2: int = 0
    named: int = 0
    tracebacks: int = 0
    left_behind: int = 0
    failures: list[str] = field(default_factory=list)


def call(argv: Sequence[str]) -> Outcome:
    """``searchprune ARGV`` in this process: exit status, stderr, and whether an exception
    escaped ``main`` or a traceback was printed."""
    err, out = io.StringIO(), io.StringIO()
    escaped = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code: int | str = main(list(argv))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException:  # what the benchmark counts
            escaped = True
            code = "exception"
            traceback.print_exc(file=err)
    text = err.getvalue()
    return Outcome(code, text, escaped or "Traceback (most recent call last)" in text)


def error_line(err: str) -> str:
    """The line of stderr that says what went wrong (not a progress bar's)."""
    lines = err.strip().splitlines() or [""]
    return next((line for line in lines if line.startswith("searchprune")), lines[0])


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------- fixtures
class Scratch:
    """The scratch directory: configs, a finished run, and places for bad inputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = write_yaml(root / "config.yaml", BASE)
        method = {k: v for k, v in BASE.items() if k != "searcher"}
        self.method_config = write_yaml(
            root / "method.yaml", {**method, "method": "magnitude-global"}
        )
        self.finished = root / "finished"
        outcome = call(["run", str(self.config), "--out", str(self.finished)])
        assert outcome.code == 0, outcome.err
        self.afile = root / "afile"
        self.afile.write_text("not a directory\n")
        self._count = 0

    def out(self) -> Path:
        self._count += 1
        return self.root / "outs" / f"o{self._count}"

    def copy_run(self, name: str) -> Path:
        target = self.root / "copies" / name
        shutil.copytree(self.finished, target)
        return target

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path


def override_cases(s: Scratch) -> list[Case]:
    """``run CONFIG --set KEY=VALUE`` with a bad value for every section."""
    bad: list[tuple[str, str]] = [
        # run
        ("run.max_evals=0", "run.max_evals"),
        ("run.max_evals=-5", "run.max_evals"),
        ("run.max_evals=many", "run.max_evals"),
        ("run.max_evals=1.5", "run.max_evals"),
        ("run.max_evals=[1]", "run.max_evals"),
        ("run.max_evals=null", "run.max_evals"),
        ("run.max_seconds=0", "run.max_seconds"),
        ("run.max_seconds=-1", "run.max_seconds"),
        ("run.max_seconds=soon", "run.max_seconds"),
        ("run.max_seconds=.inf", "run.max_seconds"),
        ("run.target_fitness=.nan", "run.target_fitness"),
        ("run.target_fitness=high", "run.target_fitness"),
        ("run.seed=-1", "run.seed"),
        (f"run.seed={2**70}", "run.seed"),
        (f"run.seed={2**32}", "run.seed"),
        ("run.seed=x", "run.seed"),
        ("run.seed=1.5", "run.seed"),
        ("run.seed=.inf", "run.seed"),
        ("run.progress=maybe", "run.progress"),
        ("run.bogus=1", "run.bogus"),
        # task
        ("task=digits-mlpp", "task.name"),
        ("task.name=nomodule.x:f", "task.name"),
        ("task.name=123", "task.name"),
        ("task.name=[a]", "task.name"),
        ("task.seed=-2", "task.seed"),
        (f"task.seed={2**70}", "task.seed"),
        ("task.seed=abc", "task.seed"),
        ("task.depth=3", "task"),
        ("task.name=searchprune.rundir:write_json", "task"),
        ("task.name=searchprune.registry:Registry", "task"),
        # budget
        ("budget.sparsity=0", "budget.sparsity"),
        ("budget.sparsity=1", "budget.sparsity"),
        ("budget.sparsity=1.5", "budget.sparsity"),
        ("budget.sparsity=-0.1", "budget.sparsity"),
        ("budget.sparsity=high", "budget.sparsity"),
        ("budget.sparsity=.nan", "budget.sparsity"),
        ("budget.sparsity=0.9999", "budget.sparsity"),
        ("budget={speed: 2}", "budget"),
        ("budget={flops: 0.5, params: 0.5}", "budget"),
        ("budget={}", "budget"),
        ("budget=5", "budget"),
        ("budget={flops: 0}", "budget.flops"),
        ("budget={latency_ms: -1}", "budget.latency_ms"),
        ("budget={latency_ms: 1.0e-9}", "budget.latency_ms"),
        # space
        ("space.name=nope", "space.name"),
        ("space.granularity=filter", "space.granularity"),
        ("space.granularity=7", "space.granularity"),
        ("space.criterion=snp", "space.criterion"),
        ("space.criterion=nomodule:Crit", "space.criterion"),
        ("space.min_ratio=-0.1", "space.min_ratio"),
        ("space.min_ratio=1.5", "space.min_ratio"),
        ("space.max_ratio=2", "space.max_ratio"),
        ("space.max_ratio=.nan", "space.max_ratio"),
        ("space.layer_bounds={net.0: [0.8, 0.2]}", "space.layer_bounds"),
        ("space.layer_bounds={net.0: [0, 2]}", "space.layer_bounds"),
        ("space.layer_bounds={net.0: [-1, 0.5]}", "space.layer_bounds"),
        ("space.layer_bounds={net.0: [0.1]}", "space.layer_bounds"),
        ("space.layer_bounds={fc9: [0, 0.5]}", "space.layer_bounds"),
        ("space.layer_bounds=abc", "space.layer_bounds"),
        ("space.exclude=[fc9]", "space.exclude"),
        ("space.exclude=5", "space.exclude"),
        ("space.exclude_output=maybe", "space.exclude_output"),
        ("space.granularty=channel", "granularty"),
        # fitness
        ("fitness=nope", "fitness.name"),
        ("fitness.name=nomodule.x:f", "fitness.name"),
        ("fitness.penalty=.inf", "fitness.penalty"),
        ("fitness.penalty=-.inf", "fitness.penalty"),
        ("fitness.penalty=.nan", "fitness.penalty"),
        ("fitness.penalty=low", "fitness.penalty"),
        ("fitness.bn_samples=-1", "fitness.bn_samples"),
        ("fitness.target=1", "target"),
        ("fitness=latency_aware", "target_ms"),
        ("fitness={name: latency_aware, target_ms: -1}", "target_ms"),
        ("fitness.predict_latency=maybe", "fitness.predict_latency"),
        # searcher
        ("searcher.name=gaa", "searcher.name"),
        ("searcher.name=nomodule:Searcher", "searcher.name"),
        ("searcher.popsize=3", "searcher.popsize"),
        ("searcher.population=100000000", "searcher.population"),
        ("searcher.population=big", "searcher.population"),
        ("searcher={name: ga, population: 2}", "searcher.population"),
        ("searcher={name: nsga2, population: 6}", "searcher.population"),
        ("searcher.name=[ga]", "searcher.name"),
        # evaluator
        ("evaluator.name=gpu", "evaluator.name"),
        ("evaluator.device=banana", "evaluator.device"),
        ("evaluator.device=cuda:99", "evaluator.device"),
        ("evaluator.threads=0", "evaluator.threads"),
        ("evaluator.actors=0", "evaluator.actors"),
        ("evaluator.num_cpus=0", "evaluator.num_cpus"),
        ("evaluator.num_gpus=-1", "evaluator.num_gpus"),
        ("evaluator.chunk=0", "evaluator.chunk"),
        ("evaluator.max_deaths=0", "evaluator.max_deaths"),
        ("evaluator.connect_timeout_s=0", "evaluator.connect_timeout_s"),
        ("evaluator.cache=maybe", "evaluator.cache"),
        ("evaluator.channels_last=maybe", "evaluator.channels_last"),
        ("evaluator.bogus=1", "evaluator.bogus"),
        # finetune
        ("finetune.epochs=-1", "finetune.epochs"),
        ("finetune.lr=0", "finetune.lr"),
        ("finetune.lr=.inf", "finetune.lr"),
        ("finetune.batch_size=0", "finetune.batch_size"),
        ("finetune.weight_decay=-1", "finetune.weight_decay"),
        ("finetune.bogus=1", "finetune.bogus"),
        # baselines and the top level
        ("baselines=[nope]", "baselines"),
        ("baselines=[gradual-magnitude]", "baselines"),
        ("baselines=5", "baselines"),
        ("bogus=1", "bogus"),
        ("budjet={sparsity: 0.9}", "budjet"),
        ("method=magnitude-global", "searcher"),
        # --set itself
        ("no-equals-sign", "--set"),
        ("=3", "--set"),
        ("run.seed=[unclosed", "run.seed"),
        ("run.seed={a: 1, a: 2}", "run.seed"),
        ("run.max_evals.deep=1", "run.max_evals"),
    ]
    if not torch.cuda.is_available():
        bad.append(("evaluator.device=cuda", "evaluator.device"))
    for name in SEARCHERS:
        bad.append((f"searcher={{name: {name}, bogus: 1}}", "searcher.bogus"))
        bad.append((f"searcher={{name: {name}, population: 0}}", "searcher.population"))
    cases = []
    for assignment, names in bad:
        out = s.out()
        argv = ["run", str(s.config), "--set", assignment, "--out", str(out)]
        cases.append(Case(f"--set {assignment}", argv, names, out=out))
    for assignment, names in [
        ("method=nope", "method.name"),
        ("method.bogus=1", "method"),
        ("method={name: gradual-magnitude, epochs: -1}", "method.epochs"),
        ("method={name: lottery, bogus: 1}", "method.bogus"),
    ]:
        out = s.out()
        argv = ["run", str(s.method_config), "--set", assignment, "--out", str(out)]
        cases.append(Case(f"method: --set {assignment}", argv, names, out=out))
    return cases


def file_cases(s: Scratch) -> list[Case]:
    """Config files that are not configs."""
    files: list[tuple[str, str | bytes, str]] = [
        ("empty.yaml", "", "task"),
        ("invalid.yaml", "task: [unclosed\n", "invalid.yaml"),
        ("list.yaml", "- task\n- budget\n", "list.yaml"),
        ("scalar.yaml", "just words\n", "scalar.yaml"),
        ("tabs.yaml", "task:\n\t- x\n", "tabs.yaml"),
        ("binary.yaml", b"\x00\xff\xfe\x80", "binary.yaml"),
        (
            "dup-top.yaml",
            "task: digits-mlp\nbudget: {sparsity: 0.9}\nsearcher: ga\ntask: x\n",
            "'task'",
        ),
        (
            "dup-nested.yaml",
            "task: digits-mlp\nbudget: {sparsity: 0.9, sparsity: 0.5}\nsearcher: ga\n",
            "'sparsity'",
        ),
        ("no-budget.yaml", "task: digits-mlp\nsearcher: ga\n", "budget"),
        ("no-task.yaml", "budget: {sparsity: 0.9}\nsearcher: ga\n", "task"),
        ("no-searcher.yaml", "task: digits-mlp\nbudget: {sparsity: 0.9}\n", "searcher"),
        (
            "alias-bomb.yaml",
            "a: &a [x, x]\nb: &b [*a, *a]\ntask: *b\nbudget: {sparsity: 0.9}\nsearcher: ga\n",
            "task",
        ),
    ]
    cases = []
    for name, text, names in files:
        out = s.out()
        path = s.file(name, text)
        cases.append(
            Case(f"config file {name}", ["run", str(path), "--out", str(out)], names, out=out)
        )
    missing = s.root / "files" / "missing.yaml"
    cases.append(
        Case("config file missing", ["run", str(missing), "--out", str(s.out())], "missing.yaml")
    )
    cases.append(
        Case("config is a directory", ["run", str(s.root), "--out", str(s.out())], str(s.root))
    )
    return cases


def cli_cases(s: Scratch) -> list[Case]:
    """Usage errors, --out, --resume and export of damaged or unfinished directories."""
    cases = [
        Case("no command", [], "command"),
        Case("unknown command", ["frobnicate"], "frobnicate"),
        Case("run without CONFIG", ["run"], "CONFIG"),
        Case("list with an argument", ["list", "extra"], "extra"),
        Case("--out is a file", ["run", str(s.config), "--out", str(s.afile)], "--out"),
        Case("--out under a file", ["run", str(s.config), "--out", str(s.afile / "x")], "--out"),
        Case("--out ''", ["run", str(s.config), "--out", ""], "--out"),
        Case(
            "--out holds a run", ["run", str(s.config), "--out", str(s.finished)], str(s.finished)
        ),
        Case("--resume of nothing", ["run", "--resume", str(s.root / "nothing")], "nothing"),
        Case("--resume of a file", ["run", "--resume", str(s.afile)], "afile"),
        Case(
            "--resume with a setting it keeps",
            ["run", "--resume", str(s.finished), "--set", "searcher.population=4"],
            "searcher.population",
        ),
        Case(
            "--resume with another CONFIG",
            ["run", str(s.method_config), "--resume", str(s.finished)],
            "differs",
        ),
        Case("export --format bogus", ["export", str(s.finished), "--format", "bogus"], "--format"),
        Case("export without --format", ["export", str(s.finished)], "--format"),
        Case(
            "export of nothing",
            ["export", str(s.root / "nothing"), "--format", "masked"],
            "nothing",
        ),
    ]
    damaged: list[tuple[str, str, str | bytes]] = [
        ("config-yaml", RunDir.CONFIG, "task: [unclosed\n"),
        ("config-scalar", RunDir.CONFIG, "just a string\n"),
        ("config-binary", RunDir.CONFIG, b"\x00\xff\xfe\x80"),
        (
            "config-invalid",
            RunDir.CONFIG,
            "task: digits-mlp\nbudget: {sparsity: 7}\nsearcher: ga\n",
        ),
        ("config-empty", RunDir.CONFIG, ""),
        ("checkpoint-garbage", RunDir.CHECKPOINT, b"not a zip file at all"),
        ("checkpoint-truncated", RunDir.CHECKPOINT, b"PK\x03\x04truncated"),
        ("dense-garbage", RunDir.DENSE_MODEL, b"garbage"),
        ("dense-record", RunDir.DENSE_RECORD, "{not json"),
    ]
    for label, name, content in damaged:
        for command in ("resume", "export"):
            if command == "export" and name == RunDir.CHECKPOINT:
                continue  # export reads no checkpoint
            run_dir = s.copy_run(f"{label}-{command}")
            if command == "resume":
                (run_dir / RunDir.SUMMARY).unlink()  # a run cut short
            path = run_dir / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            argv = {
                "resume": ["run", "--resume", str(run_dir)],
                "export": ["export", str(run_dir), "--format", "masked"],
            }[command]
            cases.append(Case(f"{command}, damaged {name}", argv, name))
    unfinished = s.copy_run("unfinished")
    (unfinished / RunDir.SUMMARY).unlink()
    argv = ["export", str(unfinished), "--format", "masked"]
    cases.append(Case("export of an unfinished run", argv, "not finished"))
    trained = s.copy_run("trained-garbage")
    (trained / RunDir.TRAINED_MODEL).write_bytes(b"garbage")
    argv = ["export", str(trained), "--format", "masked"]
    cases.append(Case("export, damaged trained_model.pt", argv, RunDir.TRAINED_MODEL))
    return cases


def plugin_cases(s: Scratch) -> list[Case]:
    """Plug-ins (in the working directory) that fail on import or are not what they say."""
    modules = {
        "syntax_plugin": "def f(:\n",
        "raising_plugin": "raise RuntimeError('no GPU here')\n",
        "exiting_plugin": "import sys\nsys.exit(3)\n",
        "missing_dep_plugin": "import no_such_dependency\n",
        "plain_plugin": "VALUE = 3\n\nclass NotASearcher:\n    pass\n",
    }
    for name, code in modules.items():
        (s.root / f"{name}.py").write_text(code)
    fields = [
        ("task.name={}:make", "task.name"),
        ("fitness={}:score", "fitness.name"),
        ("searcher.name={}:Searcher", "searcher.name"),
        ("space.criterion={}:Crit", "space.criterion"),
    ]
    cases = []
    for module in ("syntax_plugin", "raising_plugin", "exiting_plugin", "missing_dep_plugin"):
        for assignment, names in fields:
            out = s.out()
            argv = ["run", str(s.config), "--set", assignment.format(module), "--out", str(out)]
            cases.append(Case(f"plug-in {module} as {names}", argv, names, out=out))
    for assignment, names in [
        ("task.name=plain_plugin:missing", "task.name"),
        ("task.name=plain_plugin:VALUE", "task.name"),
        ("searcher.name=plain_plugin:NotASearcher", "searcher.name"),
        ("fitness=plain_plugin:VALUE", "fitness.name"),
    ]:
        out = s.out()
        argv = ["run", str(s.config), "--set", assignment, "--out", str(out)]
        cases.append(Case(f"plug-in {assignment}", argv, names, out=out))
    return cases


def compare_cases(s: Scratch) -> list[Case]:
    base = {"task": "digits-mlp", "run": {"max_evals": 8, "progress": False}}
    section = {"methods": ["random"], "budgets": [{"sparsity": 0.8}]}
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("no compare section", base, "compare"),
        ("unknown method", {**base, "compare": {**section, "methods": ["gaa"]}}, "compare.methods"),
        ("no methods", {**base, "compare": {**section, "methods": []}}, "methods"),
        ("no budgets", {**base, "compare": {**section, "budgets": []}}, "budgets"),
        (
            "bad budget",
            {**base, "compare": {**section, "budgets": [{"sparsity": 2}]}},
            "budget.sparsity",
        ),
        ("bad seed", {**base, "compare": {**section, "seeds": [-1]}}, "run.seed"),
        ("unknown key", {**base, "compare": {**section, "bogus": 1}}, "bogus"),
        (
            "settings typo",
            {**base, "compare": {**section, "settings": {"random": {"populaton": 8}}}},
            "searcher.populaton",
        ),
        (
            "settings for an unlisted method",
            {**base, "compare": {**section, "settings": {"ga": {"population": 8}}}},
            "compare.settings",
        ),
        (
            "bad setting value",
            {**base, "compare": {**section, "settings": {"random": {"population": 0}}}},
            "searcher.population",
        ),
        (
            "budget outside compare",
            {**base, "budget": {"sparsity": 0.5}, "compare": section},
            "budget",
        ),
        ("searcher outside compare", {**base, "searcher": "ga", "compare": section}, "searcher"),
    ]
    cases: list[Case] = []
    for label, data, names in bad:
        path = write_yaml(s.root / "files" / f"compare-{len(cases)}.yaml", data)
        out = s.out()
        cases.append(
            Case(f"compare: {label}", ["compare", str(path), "--out", str(out)], names, out=out)
        )
    path = write_yaml(s.root / "files" / "compare-ok.yaml", {**base, "compare": section})
    cases.append(
        Case("compare --out a file", ["compare", str(path), "--out", str(s.afile)], "--out")
    )
    return cases


def measure_bad_inputs(s: Scratch) -> Report:
    report = Report()
    cwd = Path.cwd()
    os.chdir(s.root)  # the plug-in modules live here, as a user's own code would
    sys.path.insert(0, str(s.root))
    try:
        cases = override_cases(s) + file_cases(s) + cli_cases(s) + plugin_cases(s)
        cases += compare_cases(s)
        for case in cases:
            outcome = call(case.argv)
            report.tried += 1
            report.exit_2 += outcome.code == 2
            named = outcome.code == case.code and case.names in outcome.err
            report.named += named
            report.tracebacks += outcome.traceback
            left = case.out is not None and case.out.exists()
            report.left_behind += left
            if not named or outcome.traceback or left:
                line = error_line(outcome.err)
                report.failures.append(f"{case.label}: exit {outcome.code}, {line[:200]}")
    finally:
        sys.path.remove(str(s.root))
        os.chdir(cwd)
    return report


# -------------------------------------------------------------- planted files
class Payload:
    """Code that, if it ever runs, creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Planted:
    tried: int = 0
    executed: int = 0
    refused: int = 0
    lines: list[str] = field(default_factory=list)


def measure_planted(s: Scratch) -> Planted:
    planted = Planted()
    marker = s.root / "PWNED"
    bomb = pickle.dumps(Payload(marker))

    def attempt(label: str, argv: list[str], cwd: Path | None = None) -> None:
        here = Path.cwd()
        if cwd is not None:
            os.chdir(cwd)
            sys.path.insert(0, "")  # python -m puts the working directory on sys.path
        try:
            outcome = call(argv)
        finally:
            if cwd is not None:
                sys.path.remove("")
                os.chdir(here)
        ran = marker.exists()
        planted.tried += 1
        planted.executed += ran
        planted.refused += outcome.code == 2
        line = error_line(outcome.err)
        planted.lines.append(f"{label}: exit {outcome.code}, code ran: {ran}; {line[:160]}")
        marker.unlink(missing_ok=True)

    # checkpoints and weight files that would run code if unpickled
    def cut_short(name: str) -> Path:
        run_dir = s.copy_run(name)
        (run_dir / RunDir.SUMMARY).unlink()
        return run_dir

    run_dir = cut_short("pickled-checkpoint")
    (run_dir / RunDir.CHECKPOINT).unlink()
    (run_dir / RunDir.PICKLED_CHECKPOINT).write_bytes(bomb)
    attempt("checkpoint.pkl pickle", ["run", "--resume", str(run_dir)])
    run_dir = cut_short("pickle-as-npz")
    (run_dir / RunDir.CHECKPOINT).write_bytes(bomb)
    attempt("checkpoint.npz holding a pickle", ["run", "--resume", str(run_dir)])
    run_dir = cut_short("object-array-npz")
    with open(run_dir / RunDir.CHECKPOINT, "wb") as handle:
        np.savez(handle, state=np.array([Payload(marker)], dtype=object))
    attempt("checkpoint.npz with an object array", ["run", "--resume", str(run_dir)])
    for name in (RunDir.DENSE_MODEL, RunDir.TRAINED_MODEL):
        run_dir = s.copy_run(f"pickled-{name}")
        torch.save({"weight": Payload(marker)}, run_dir / name)
        attempt(f"{name} pickle, export", ["export", str(run_dir), "--format", "masked"])
        if name == RunDir.DENSE_MODEL:  # a searcher run reads no trained weights on resume
            (run_dir / RunDir.SUMMARY).unlink()
            attempt(f"{name} pickle, resume", ["run", "--resume", str(run_dir)])
    run_dir = s.copy_run("object-masks")
    with np.load(run_dir / RunDir.BEST_MASKS) as saved:
        arrays = {key: saved[key] for key in saved.files}
    arrays[next(iter(arrays))] = np.array([Payload(marker)], dtype=object)
    with open(run_dir / RunDir.BEST_MASKS, "wb") as handle:
        np.savez(handle, **arrays)
    argv = ["export", str(run_dir), "--format", "masked"]
    attempt("best_masks.npz with an object array, export", argv)

    # a compare that reuses a planted run directory
    compare_data = {
        "task": "digits-mlp",
        "run": {"max_evals": 16, "progress": False},
        "compare": {
            "methods": ["random"],
            "budgets": [{"sparsity": 0.8}],
            "settings": {"random": {"population": 8}},
        },
    }
    config = write_yaml(s.root / "files" / "compare-planted.yaml", compare_data)
    out = s.root / "compare-planted"
    assert call(["compare", str(config), "--out", str(out)]).code == 0
    cell = out / "runs" / "digits-mlp" / "sparsity-0.8" / "random-s0"
    (cell / RunDir.SUMMARY).unlink()
    (cell / RunDir.CHECKPOINT).write_bytes(bomb)
    attempt("compare resuming a planted checkpoint", ["compare", str(config), "--out", str(out)])

    # configs naming plug-ins that run code
    (s.root / "files" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (s.root / "files" / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    np.save(
        s.root / "files" / "bomb.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True
    )
    tasks: list[dict[str, Any]] = [
        {"name": "subprocess:getoutput", "cmd": f"touch {marker}"},
        {"name": "os:system", "command": f"touch {marker}"},
        {"name": "runpy:run_path", "path_name": str(s.root / "files" / "evil.py")},
        {"name": "pickle:loads", "data": bomb},
        {
            "name": "yaml:unsafe_load",
            "stream": f"!!python/object/apply:os.system ['touch {marker}']",
        },
        {"name": "numpy:load", "file": str(s.root / "files" / "bomb.npy"), "allow_pickle": True},
        {
            "name": "torch.hub:load",
            "repo_or_dir": str(s.root / "files"),
            "model": "x",
            "source": "local",
        },
        {"name": "searchprune.rundir:write_json", "path": str(marker), "data": {}},
    ]
    sections: list[tuple[str, Any]] = [("task", task) for task in tasks]
    sections += [
        ("fitness", {"name": "os:system", "command": f"touch {marker}"}),
        ("space", {"criterion": "subprocess:getoutput"}),
        ("searcher", {"name": "builtins:exec", "population": 8}),
        ("baselines", ["runpy:run_path"]),
    ]
    for index, (section, value) in enumerate(sections):
        run_dir = s.copy_run(f"plugin-{index}")
        data = yaml.safe_load((run_dir / RunDir.CONFIG).read_text())
        data[section] = {**data.get(section, {}), **value} if section == "space" else value
        write_yaml(run_dir / RunDir.CONFIG, data)
        label = value["name"] if isinstance(value, dict) and "name" in value else str(value)
        attempt(f"{section}: {label}, export", ["export", str(run_dir), "--format", "masked"])
        (run_dir / RunDir.SUMMARY).unlink()
        attempt(f"{section}: {label}, resume", ["run", "--resume", str(run_dir)])
    # a module planted inside the run directory, which is the working directory
    run_dir = s.copy_run("plugin-inside")
    (run_dir / "inside.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef make():\n    pass\n"
    )
    data = yaml.safe_load((run_dir / RunDir.CONFIG).read_text())
    data["task"] = {"name": "inside:make"}
    write_yaml(run_dir / RunDir.CONFIG, data)
    attempt(
        "task: a module inside the run directory, export",
        ["export", ".", "--format", "masked"],
        run_dir,
    )
    (run_dir / RunDir.SUMMARY).unlink()
    attempt("task: a module inside the run directory, resume", ["run", "--resume", "."], run_dir)
    return planted


# ------------------------------------------------------------ concurrent use
def measure_concurrent(s: Scratch) -> tuple[int, int, list[str]]:
    """Second processes on a directory whose run is still going: (tried, refused, lines)."""
    if not hasattr(RunDir, "lock"):
        return 0, 0, ["RunDir has no lock: concurrent use is not guarded"]
    config = write_yaml(
        s.root / "files" / "long.yaml",
        {**BASE, "run": {"max_evals": 10**6, "progress": False}},
    )
    out = s.root / "busy"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen(
        [sys.executable, "-m", "searchprune.cli", "run", str(config), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lines, refused = [], 0
    try:
        history = out / RunDir.HISTORY
        deadline = time.monotonic() + 300
        while not (history.exists() and history.stat().st_size > 0):
            if time.monotonic() > deadline or first.poll() is not None:
                return 0, 0, ["the first run did not start"]
            time.sleep(0.1)
        attempts = [
            ["run", str(config), "--out", str(out)],
            ["run", "--resume", str(out)],
            ["run", "--resume", str(out), "--set", "run.max_evals=100"],
            ["export", str(out), "--format", "masked"],
        ]
        for argv in attempts:
            outcome = call(argv)
            ok = outcome.code == 2 and (
                str(first.pid) in outcome.err or "not finished" in outcome.err
            )
            refused += ok
            line = error_line(outcome.err)
            lines.append(f"{' '.join(argv[:2])}...: exit {outcome.code}; {line[:160]}")
        still_running = first.poll() is None
        lines.append(f"first run still running afterwards: {still_running}")
    finally:
        first.kill()
        first.wait()
    return len(attempts), refused, lines


def main_(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="list every planted attempt")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="searchprune-reliability-") as scratch:
        s = Scratch(Path(scratch))
        started = time.perf_counter()
        bad = measure_bad_inputs(s)
        planted = measure_planted(s)
        tried, refused, concurrent = measure_concurrent(s)
        seconds = time.perf_counter() - started
    print("| figure | value | goal |")
    print("|---|---|---|")
    print(f"| bad inputs tried | {bad.tried} | >= 150 |")
    print(f"| exit status 2 | {bad.exit_2} | all |")
    print(f"| exit 2 with the field named | {bad.named} | all |")
    print(f"| tracebacks | {bad.tracebacks} | 0 |")
    print(f"| run directories left behind by a rejected config | {bad.left_behind} | 0 |")
    print(f"| planted files and plug-ins tried | {planted.tried} | |")
    print(f"| planted code executed | {planted.executed} | 0 |")
    print(f"| planted attempts refused with exit 2 | {planted.refused} | all |")
    print(f"| concurrent-use attempts refused | {refused} / {tried} | all |")
    print(f"\n({seconds:.0f} s)")
    if bad.failures:
        print("\nNot as documented:\n")
        for line in bad.failures:
            print(f"- {line}")
    if args.verbose:
        print("\nPlanted:\n")
        for line in planted.lines:
            print(f"- {line}")
    print("\nConcurrent use:\n")
    for line in concurrent:
        print(f"- {line}")


if __name__ == "__main__":
    main_()
