"""searchprune export: every format reloads without searchprune and matches the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.utils import prune

from searchprune.cli import main
from searchprune.core.masks import MaskSet
from searchprune.export import load_run_problem


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    config = root / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "digits-cnn",
                "space": {"granularity": "channel"},
                "budget": {"flops": 0.5},
                "searcher": {"name": "ga", "population": 8},
                "baselines": [],
                "run": {"max_evals": 16, "progress": False},
            }
        )
    )
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.mark.parametrize("fmt", ["compact", "sparse", "masked"])
def test_torchscript_exports_reproduce_the_masked_model(channel_run: Path, fmt: str) -> None:
    assert main(["export", str(channel_run), "--format", fmt]) == 0
    loaded = torch.jit.load(str(channel_run / f"model-{fmt}.pt"))
    problem, masks = load_run_problem(channel_run)
    batch = problem.val.first_batch()[0]
    with problem.masked(masks) as masked, torch.inference_mode():
        torch.testing.assert_close(loaded(batch), masked(batch), rtol=1e-4, atol=1e-4)
    if fmt == "compact":
        params = sum(p.numel() for p in loaded.parameters())
        assert params < sum(p.numel() for p in problem.model.parameters())


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
    with torch.inference_mode():
        out_pruned = model(problem.val.first_batch()[0])
    assert out_pruned.shape[1] == 10


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


def test_unknown_format_is_a_usage_error(channel_run: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(channel_run), "--format", "onnx"])
    assert exit_info.value.code == 2
