"""searchprune export: compact and masked as torch.export programs that reload without
searchprune (and without a warning) at any batch size; sparse, and models torch.export
cannot capture, as TorchScript; ONNX beside them; atomic writes; the figures reported."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor
from torch.nn.utils import prune

import searchprune.export
from searchprune.cli import main
from searchprune.core.masks import MaskSet
from searchprune.export import export_run, load_run_problem
from searchprune.kernels.check import output_tolerance

ROWS = 37
"""Rows the tests run exported models at: neither the 2 they are exported at nor the
val batch they are checked at."""

ONNX_MISSING = [name for name in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(name)]

GATED_TASK = '''
import torch
from torch import nn

from searchprune import Task


class SignGate(nn.Module):
    """A branch on the data, which torch.export cannot capture (a trace records it)."""

    def forward(self, x):
        if bool(x.sum() < -1e9):
            return -x
        return x


def make_task():
    inputs = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), SignGate(), nn.Linear(16, 2))
    return Task(model=model.eval(), train=(inputs[:100], targets[:100]),
                val=(inputs[100:200], targets[100:200]), test=(inputs[200:], targets[200:]))
'''

LOAD_ALONE = """
import sys
sys.modules["searchprune"] = None  # importing searchprune fails from here on
import torch
data = torch.load(sys.argv[2], weights_only=True)
model = torch.export.load(sys.argv[1]).module()
with torch.inference_mode():
    got = model(data["inputs"])
print(float((got - data["expected"]).abs().max()))
print([name for name, module in sys.modules.items() if name.partition(".")[0] == "searchprune" and module])
"""


def _run(root: Path, **sections: object) -> Path:
    config = root / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "searcher": {"name": "ga", "population": 8},
                "baselines": [],
                "run": {"max_evals": 16, "progress": False},
                **sections,
            }
        )
    )
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(
        tmp_path_factory.mktemp("export"),
        task="digits-cnn",
        space={"granularity": "channel"},
        budget={"flops": 0.5},
    )


@pytest.fixture(scope="module")
def weight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("export-weight"), task="digits-mlp", budget={"sparsity": 0.9})


def _masked(run: Path, rows: int = ROWS) -> tuple[Tensor, Tensor]:
    """``rows`` val inputs and the masked model's outputs on them, as the run scored it."""
    problem, masks = load_run_problem(run)
    inputs = problem.val.first_batch()[0][:rows]
    with problem.masked(masks) as masked, torch.inference_mode():
        return inputs, masked(inputs)


@pytest.mark.parametrize("fmt", ["compact", "masked"])
def test_torch_export_files_load_without_searchprune_or_warnings(
    channel_run: Path, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(channel_run), "--format", fmt]) == 0
    path = channel_run / f"model-{fmt}.pt2"
    out = capsys.readouterr().out
    assert f"wrote {path}: {fmt}, torch.export program with a dynamic batch dimension" in out
    assert "load the torch.export file with torch.export.load(path).module()" in out
    inputs, expected = _masked(channel_run)
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")
    # -I: no PYTHONPATH, no user site, no working directory on the path; -W error: any
    # warning (torch.jit.load's DeprecationWarning among them) fails the run
    done = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c", LOAD_ALONE, str(path), "io.pt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    difference, imported = done.stdout.splitlines()
    assert float(difference) <= output_tolerance(expected)
    assert imported == "[]"


def test_export_reports_the_exported_models_real_figures(channel_run: Path, tmp_path: Path) -> None:
    problem, masks = load_run_problem(channel_run)
    pruned, dense = problem.exact_stats(masks), problem.exact_stats(problem.dense())
    val_rows = len(problem.val.first_batch()[0])

    small = export_run(channel_run, "compact", tmp_path / "small.pt2")
    assert small.path == tmp_path / "small.pt2" and os.fspath(small) == str(small.path)
    assert small.file.container == "torch.export" and small.onnx is None
    assert small.file.size_bytes == small.path.stat().st_size > 0
    assert not (tmp_path / ".small.pt2.tmp").exists()
    # the compact model holds exactly what the run counted (digits-cnn has no norms)
    assert (small.params, small.flops) == (pruned["params"], pruned["flops"])
    assert (small.dense_params, small.dense_flops) == (dense["params"], dense["flops"])
    assert small.flops <= 0.5 * small.dense_flops  # the run's budget: FLOPs 0.5
    assert (small.exported_batch, small.checked_batch) == (2, val_rows) and val_rows > 2
    assert 0 <= small.file.max_diff <= small.tolerance
    assert small.latency_ms > 0 and small.dense_latency_ms > 0
    assert small.latency_ratio == pytest.approx(small.latency_ms / small.dense_latency_ms)
    assert small.notes == ()
    report = "\n".join(small.lines())
    assert f"params: {small.params:,} stored" in report
    assert f"FLOPs: {small.flops:,} multiply-adds per sample" in report
    assert f"{small.latency_ratio:.2f}x the dense model's" in report

    masked = export_run(channel_run, "masked", tmp_path / "masked.pt2")
    # the masked model keeps the dense shape and runs every multiply, zeros included
    assert (masked.params, masked.flops) == (dense["params"], dense["flops"])
    assert pruned["params"] <= masked.nonzero_params < masked.params
    assert masked.file.size_bytes > small.file.size_bytes


def test_weight_granularity_compact_is_no_smaller_and_sparse_is_torchscript(
    weight_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problem, masks = load_run_problem(weight_run)
    pruned = problem.exact_stats(masks)
    assert main(["export", str(weight_run), "--format", "compact"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: the compact model is no smaller than the masked one: at weight granularity "
        "the masks remove no whole channel, so it keeps the dense shape" in out
    )

    compact_result = export_run(weight_run, "compact")
    assert compact_result.params == compact_result.dense_params
    assert compact_result.nonzero_params == pruned["params"]  # kept weights and biases
    sparse = export_run(weight_run, "sparse")
    assert sparse.path == weight_run / "model-sparse.pt" and sparse.file.container == "TorchScript"
    assert sparse.notes == (
        "sparse is written as TorchScript: torch.export cannot hold the CSR/BSR tensors of "
        "its kernels",
    )
    assert sparse.nonzero_params == compact_result.nonzero_params  # the same weights
    assert pruned["flops"] <= sparse.flops <= sparse.dense_flops
    assert 0 <= sparse.file.max_diff <= sparse.tolerance
    with pytest.warns(DeprecationWarning, match=r"torch\.jit\.load"):
        loaded = torch.jit.load(str(sparse.path))
    inputs, expected = _masked(weight_run)
    with torch.inference_mode():
        assert float((loaded(inputs) - expected).abs().max()) <= output_tolerance(expected)


@pytest.mark.filterwarnings("ignore:.*could not be traced", "ignore::torch.jit.TracerWarning")
def test_a_model_torch_export_cannot_capture_is_written_as_torchscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gated.py").write_text(GATED_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run = _run(tmp_path, task="gated:make_task", budget={"sparsity": 0.5})
    capsys.readouterr()
    assert main(["export", str(run), "--format", "masked"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {run / 'model-masked.pt'}: masked, TorchScript" in captured.out
    (notice,) = [line for line in captured.out.splitlines() if "torch.export cannot" in line]
    assert notice.startswith(
        "  note: torch.export cannot export this model (GuardOnDataDependentSymNode: "
    )
    assert notice.endswith("written as TorchScript instead, which torch 2.13 deprecates")
    assert "def forward" not in captured.err  # torch's partial graph is not dumped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(run / "model-masked.pt"))
    inputs, expected = _masked(run)
    with torch.inference_mode():
        assert float((loaded(inputs) - expected).abs().max()) <= output_tolerance(expected)


def test_a_failed_check_writes_nothing(
    channel_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def differs(got: Tensor, expected: Tensor, what: str) -> None:
        raise ValueError(f"{what} differs from the masked model")

    monkeypatch.setattr(searchprune.export, "check_outputs", differs)
    target = tmp_path / "model.pt2"
    assert main(["export", str(channel_run), "--format", "compact", "--out", str(target)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_an_export_killed_before_its_rename_leaves_the_old_file(
    channel_run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "model.pt2"
    target.write_bytes(b"the previous export")
    code = "import sys; from searchprune.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "export", str(channel_run), "--format", "masked"]
    killed = subprocess.run(
        [*command, "--out", str(target)],
        env={**os.environ, "SEARCHPRUNE_FAULT": "before:model.pt2:1"},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"the previous export"
    written = tmp_path / "written.pt2"  # the temporary file is whole, just not renamed
    (tmp_path / ".model.pt2.tmp").rename(written)
    inputs, expected = _masked(channel_run)
    with torch.inference_mode():
        got = torch.export.load(str(written)).module()(inputs)
    assert float((got - expected).abs().max()) <= output_tolerance(expected)


def test_onnx_without_its_packages_or_for_sparse_is_a_usage_error(
    channel_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "model.pt2"
    command = ["export", str(channel_run), "--out", str(target), "--onnx"]
    assert main([*command, "--format", "sparse"]) == 2
    assert "--onnx: ONNX is written for --format compact or masked" in capsys.readouterr().err
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    assert main([*command, "--format", "compact"]) == 2
    assert (
        "--onnx needs onnx, onnxscript, onnxruntime, which are not installed: "
        "pip install onnx onnxscript onnxruntime" in capsys.readouterr().err
    )
    assert not target.exists()


@pytest.mark.skipif(bool(ONNX_MISSING), reason=f"not installed: {', '.join(ONNX_MISSING)}")
def test_onnx_file_runs_in_onnxruntime_at_any_batch_size(channel_run: Path, tmp_path: Path) -> None:
    import onnxruntime

    result = export_run(channel_run, "compact", tmp_path / "model.pt2", onnx=True)
    assert result.onnx is not None and result.onnx.path == tmp_path / "model.onnx"
    assert result.onnx.container == "ONNX" and 0 <= result.onnx.max_diff <= result.tolerance
    assert result.onnx.size_bytes == result.onnx.path.stat().st_size
    session = onnxruntime.InferenceSession(str(result.onnx.path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert isinstance(given.shape[0], str)  # a named, dynamic batch dimension
    inputs, expected = _masked(channel_run)
    got = torch.from_numpy(session.run(None, {given.name: inputs.numpy()})[0])
    assert float((got - expected).abs().max()) <= output_tolerance(expected)


def test_torch_prune_export_loads_into_the_architecture(channel_run: Path) -> None:
    out = channel_run / "pruned-state.pt"
    assert main(["export", str(channel_run), "--format", "torch-prune", "--out", str(out)]) == 0
    problem, masks = load_run_problem(channel_run)
    state = torch.load(out, weights_only=True)
    model = problem.model
    for name in masks.layer_names():
        module = model.get_submodule(name)
        if hasattr(module, "weight") and f"{name}.weight_mask" in state:
            prune.identity(module, "weight")
            if f"{name}.bias_mask" in state:
                prune.identity(module, "bias")
    model.load_state_dict(state)
    assert MaskSet.from_torch_prune(model, "channel").weights.keys() == {
        k.removesuffix(".weight_mask") for k in state if k.endswith(".weight_mask")
    }
    inputs, expected = _masked(channel_run)
    with torch.inference_mode():
        assert float((model(inputs) - expected).abs().max()) <= output_tolerance(expected)


def test_training_method_runs_export_their_trained_weights(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "digits-mlp",
                "budget": {"sparsity": 0.8},
                "baselines": [],
                "method": {"name": "gradual-magnitude", "epochs": 1},
                "run": {"progress": False},
            }
        )
    )
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "trained_model.pt").exists()
    assert main(["export", str(tmp_path / "run"), "--format", "masked"]) == 0
    inputs, expected = _masked(tmp_path / "run")
    with torch.inference_mode():
        got = torch.export.load(tmp_path / "run" / "model-masked.pt2").module()(inputs)
    assert float((got - expected).abs().max()) <= output_tolerance(expected)


def test_unknown_format_is_a_usage_error(channel_run: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(channel_run), "--format", "tflite"])
    assert exit_info.value.code == 2
