"""The run directory survives kills and trusts nothing it reads: data-only checkpoints,
one process per directory, atomic writes (a kill at every write point resumes to the
same result), and SIGINT/SIGTERM that leave a resumable, clearly unfinished run."""

from __future__ import annotations

import ast
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from faults import RUN_WRITES, child_env, cli, kill_at_every_write_point, run_config, start_run
from searchprune.cli import main
from searchprune.config import ConfigError, validate_config
from searchprune.core.masks import MaskSet
from searchprune.latency import LatencyModel
from searchprune.rundir import RunDir, decode_state, encode_state, write_atomically
from searchprune.runner import run

REPO = Path(__file__).resolve().parents[1]


def _quiet(_: str) -> None:
    """Runs in these tests print nothing."""


def _lines(out: Path) -> list[str]:
    return (out / RunDir.HISTORY).read_text().splitlines()


def _config_file(tmp_path: Path, searcher: str = "ga", evals: int = 48) -> Path:
    path = tmp_path / f"{searcher}-{evals}.yaml"
    path.write_text(yaml.safe_dump(run_config(searcher, evals)))
    return path


# ------------------------------------------------------------- plain-data state
def test_state_round_trips_as_data_with_its_types(tmp_path: Path) -> None:
    random.seed(3)
    tree: dict[str, Any] = {
        "python_rng": random.getstate(),  # nested tuples; setstate insists on them
        "numpy_rng": np.random.RandomState(4).get_state(),
        "torch_rng": torch.Generator().manual_seed(5).get_state(),
        "pcg": np.random.default_rng(6).bit_generator.state,  # 128-bit ints
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"betas": (0.9, 0.999), "foreach": None, "params": [0]}],
        },
        "floats": [float("inf"), -float("inf"), 0.1, np.float64(0.2), np.int64(7)],
        "genomes": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "bits": np.array([True, False]),
        "keys": {b"\x00\x01": "a"},
        "__looks_like_a_tag__": 1,
    }
    RunDir(tmp_path).save_checkpoint(tree)
    back = RunDir(tmp_path).load_checkpoint()
    assert back.keys() == tree.keys()
    random.setstate(back["python_rng"])
    restored = random.random()
    random.seed(3)
    assert restored == random.random()
    assert back["numpy_rng"][0] == "MT19937" and isinstance(back["numpy_rng"], tuple)
    assert np.array_equal(back["numpy_rng"][1], tree["numpy_rng"][1])
    assert torch.equal(back["torch_rng"], tree["torch_rng"])
    assert back["pcg"] == tree["pcg"]
    assert back["optimizer"]["state"][0]["step"].item() == 3.0
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["floats"][:3] == [float("inf"), -float("inf"), 0.1]
    assert type(back["floats"][3]) is np.float64 and back["floats"][4] == 7
    assert back["genomes"].dtype == np.float32
    assert np.array_equal(back["genomes"], tree["genomes"])
    assert back["bits"].dtype == bool and back["keys"] == {b"\x00\x01": "a"}
    assert back["__looks_like_a_tag__"] == 1


def test_state_that_is_not_data_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"state root\.searcher\.fn: a function is not plain"):
        encode_state({"searcher": {"fn": lambda: 0}})
    with pytest.raises(TypeError, match="dtype object"):
        encode_state({"a": np.array([object()])})
    with pytest.raises(ValueError, match="unknown tag"):
        decode_state({"__exec__": "x"}, {})


def test_the_evaluator_cache_round_trips_exactly(tmp_path: Path) -> None:
    from searchprune.evaluate import LocalEvaluator
    from searchprune.problem import Evaluation
    from searchprune.space import LayerRatioSpace
    from synthetic import _PROBLEMS, make_space

    space = make_space(LayerRatioSpace)
    problem = _PROBLEMS[LayerRatioSpace]
    evaluator = LocalEvaluator(problem)
    evaluator.evaluate(space.sample(np.random.default_rng(0), 3))
    failed = Evaluation(-1.0, {"sparsity": 0.5, "flops_fraction": 0.4}, "ValueError: nan")
    evaluator._cache[b"\x01" * 8 * space.dim] = failed  # a penalty, its keys reordered
    RunDir(tmp_path).save_checkpoint({"evaluator": evaluator.state_dict()})
    restored = LocalEvaluator(problem)
    restored.load_state_dict(RunDir(tmp_path).load_checkpoint()["evaluator"])
    assert restored.scored == evaluator.scored == 3
    assert list(restored._cache) == list(evaluator._cache)
    for key, evaluation in evaluator._cache.items():
        again = restored._cache[key]
        assert again == evaluation and list(again.metrics) == list(evaluation.metrics)
        assert type(again.fitness) is float


class _Payload:
    """Unpickling this writes a marker file: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "code ran"))


def test_a_planted_checkpoint_runs_no_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle  # the attacker's side of the test

    out, marker = tmp_path / "run", tmp_path / "marker"
    run(validate_config(run_config("random", 8)), out, echo=_quiet)
    (out / RunDir.CHECKPOINT).unlink()
    (out / RunDir.PICKLED_CHECKPOINT).write_bytes(pickle.dumps({"loop": _Payload(marker)}))
    assert main(["run", "--resume", str(out)]) == 2
    assert "checkpoint.pkl is a pickle" in capsys.readouterr().err
    (out / RunDir.PICKLED_CHECKPOINT).unlink()
    with open(out / RunDir.CHECKPOINT, "wb") as handle:  # an object array is a pickle
        np.savez(handle, state=np.frombuffer(b"{}", np.uint8), a0=np.array([_Payload(marker)]))
    assert main(["run", "--resume", str(out)]) == 2
    assert f"{out / RunDir.CHECKPOINT} cannot be read" in capsys.readouterr().err
    (out / RunDir.CHECKPOINT).write_bytes(b"PK\x03\x04 not a zip")
    assert main(["run", "--resume", str(out)]) == 2
    assert "is damaged or not a searchprune checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_no_module_unpickles_or_loads_pickles() -> None:
    """No pickle/dill/joblib load or dump, np.load never with allow_pickle=True, and
    torch.load always with weights_only=True, anywhere in searchprune/ or envs/."""
    bad = []
    for path in sorted([*(REPO / "searchprune").rglob("*.py"), *(REPO / "envs").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in {"pickle", "dill", "cloudpickle", "joblib", "marshal"}
                and node.attr in {"load", "loads", "dump", "dumps", "Unpickler", "Pickler"}
            ):
                bad.append(f"{where} {node.value.id}.{node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = f"{getattr(owner, 'id', '')}.{node.func.attr}"
                keywords = {k.arg: k.value for k in node.keywords}
                if name in {"np.load", "numpy.load"} and "allow_pickle" in keywords:
                    value = keywords["allow_pickle"]
                    if not (isinstance(value, ast.Constant) and value.value is False):
                        bad.append(f"{where} np.load(allow_pickle=...)")
                if name == "torch.load":
                    only = keywords.get("weights_only")
                    if not (isinstance(only, ast.Constant) and only.value is True):
                        bad.append(f"{where} torch.load without weights_only=True")
    assert bad == []


# --------------------------------------------------------------- one process
def test_one_process_per_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    config = _config_file(tmp_path, "random", 8)
    assert main(["run", str(config), "--out", str(out)]) == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom searchprune.rundir import RunDir\n"
            f"with RunDir({str(out)!r}).lock():\n    print('held', flush=True)\n    sys.stdin.read()",
        ],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        message = f"{out} is in use by another searchprune process (PID {holder.pid})"
        assert main(["run", str(config), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert main(["run", "--resume", str(out), "--set", "run.max_evals=16"]) == 2
        assert message in capsys.readouterr().err
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            run(validate_config(run_config("random", 16)), out, resume=True, echo=_quiet)
        assert len(_lines(out)) == 8
    finally:
        holder.kill()  # SIGKILL: the operating system releases the lock
        holder.wait()
    assert main(["run", "--resume", str(out), "--set", "run.max_evals=16"]) == 0
    assert len(_lines(out)) == 16


def test_finished_runs_and_the_working_directory_are_never_written_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {**run_config("ga", 8), "method": "magnitude-global"}
    del data["searcher"]
    config = tmp_path / "method.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "method"
    assert main(["run", str(config), "--out", str(out)]) == 0
    summary = (out / RunDir.SUMMARY).read_text()
    assert main(["run", str(config), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["run", "--resume", str(out)]) == 2
    assert "its magnitude-global run is finished" in capsys.readouterr().err
    assert (out / RunDir.SUMMARY).read_text() == summary
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(config), "--out", ""]) == 2
    assert "--out: a run needs a directory of its own" in capsys.readouterr().err
    assert not (tmp_path / RunDir.CONFIG).exists()


# -------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("phase", ["before", "after"])
def test_a_file_killed_while_written_is_the_old_or_the_new_one(tmp_path: Path, phase: str) -> None:
    """The latency curve (written in place before) through RunDir, killed at its second
    write: before the rename the first curve is whole, after it the second."""
    code = (
        "import sys\nfrom searchprune.latency import LatencyModel\n"
        "from searchprune.rundir import RunDir\nfiles = RunDir(sys.argv[1])\n"
        "for ms in (1.0, 2.0):\n"
        "    files.save_latency_model(LatencyModel('flops_fraction', 'dense', ((0.5, ms),)))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=child_env(f"{phase}:latency_model.json:2"),
        capture_output=True,
        text=True,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    curve = RunDir(tmp_path).load_latency_model()
    assert curve is not None and curve.points == ((0.5, 1.0 if phase == "before" else 2.0),)
    assert isinstance(curve, LatencyModel)


def test_write_atomically_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_atomically(target, "old")

    def fails_half_way(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fails_half_way)
    assert target.read_text() == "old"


def test_killed_between_history_and_checkpoint_resumes_to_the_same_history(
    tmp_path: Path,
) -> None:
    """SIGKILL half-way through appending the second batch's history lines: the resumed
    run cuts the history back to the checkpoint and ends as an uninterrupted run."""
    config = _config_file(tmp_path, "ga", 32)
    out = tmp_path / "killed"
    assert cli(["run", str(config), "--out", str(out)], tmp_path, "before:history.jsonl:3") == (
        -signal.SIGKILL
    )
    text = (out / RunDir.HISTORY).read_text()
    assert not text.endswith("\n") and len(text.splitlines()) > 8  # a line cut in half
    assert RunDir(out).load_checkpoint()["loop"]["evals"] == 8
    run(validate_config(run_config("ga", 32)), out, resume=True, echo=_quiet)
    run(validate_config(run_config("ga", 32)), tmp_path / "straight", echo=_quiet)
    assert _lines(out) == _lines(tmp_path / "straight")


_KILL_CHUNKS = 3  # the sweep takes over 3 minutes: in chunks, both test workers share it


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(_KILL_CHUNKS))
def test_a_kill_at_every_write_point_resumes_to_the_same_result(tmp_path: Path, chunk: int) -> None:
    """SIGKILL at the 1st and 2nd write of every file a run writes (the 2nd replaces a
    file already there), before and after the write lands (and again inside the
    resume): every run resumes, to the uninterrupted history and summary. The 3rd and
    later writes are covered by ``kill_at_every_write_point(..., most=3)``; two keep
    this test within the suite's time. Each chunk takes every third file."""
    files = RUN_WRITES[chunk::_KILL_CHUNKS]
    report = kill_at_every_write_point(tmp_path, ["ga"], most=2, files=files)
    assert report.failures == []
    assert set(report.points) == {f"{p}:{f}" for f in files for p in ("before", "after")}
    assert report.resumed == report.identical == report.runs >= 2 * len(files)


@pytest.mark.slow
def test_a_run_killed_at_a_random_moment_resumes_exactly(tmp_path: Path) -> None:
    """A real ``kill -9`` from outside, whenever it lands."""
    config = _config_file(tmp_path, "ga", 100_000)
    out = tmp_path / "killed"
    process = start_run(config, out)
    _wait_for_lines(out, 200)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = RunDir(out).load_checkpoint()["loop"]["evals"]
    assert done > 0  # the checkpoint may trail the history lines the kill was timed by
    total = done + 48
    assert main(["run", "--resume", str(out), "--set", f"run.max_evals={total}"]) == 0
    run(validate_config(run_config("ga", total)), tmp_path / "straight", echo=_quiet)
    assert _lines(out) == _lines(tmp_path / "straight")


# ----------------------------------------------------------------- interrupts
def _wait_for_lines(out: Path, count: int) -> None:
    history = out / RunDir.HISTORY
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if history.exists() and len(history.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{history} never reached {count} lines")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_saves_its_best_and_resumes_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: int, code: int
) -> None:
    config = _config_file(tmp_path, "ga", 100_000)  # still running when the signal lands
    out = tmp_path / "run"
    process = start_run(config, out, stderr=subprocess.PIPE)
    _wait_for_lines(out, 16)
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert f"resume with: searchprune run --resume {out}\n" in err
    summary = RunDir(out).read_summary()
    done = summary["evaluations"]
    assert summary["finished"] is False and summary["interrupted_by"] == signal.Signals(sig).name
    assert done == len(_lines(out)) == RunDir(out).load_checkpoint()["loop"]["evals"] >= 16
    best = json.loads(_lines(out)[summary["best"]["eval_index"]])
    assert summary["best"]["val_fitness"] == best["fitness"] == best["best"]
    masks = MaskSet.load(out / RunDir.BEST_MASKS)
    assert set(masks.weights) and not RunDir(out).finished
    assert main(["export", str(out), "--format", "masked"]) == 2
    assert f"the run has not finished (interrupted at evaluation {done})" in (
        capsys.readouterr().err
    )
    total = done + 16
    assert main(["run", "--resume", str(out), "--set", f"run.max_evals={total}"]) == 0
    assert RunDir(out).finished
    run(validate_config(run_config("ga", total)), tmp_path / "straight", echo=_quiet)
    assert _lines(out) == _lines(tmp_path / "straight")
