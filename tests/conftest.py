"""Shared fixtures: one torch thread, a persistent cache of trained built-in models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Built-in models are trained once per machine and reused by later test sessions.
os.environ.setdefault("SEARCHPRUNE_CACHE", str(REPO / ".cache" / "models"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_mlp_task():  # type: ignore[no-untyped-def]
    from searchprune.tasks.builtin import load_builtin_task

    return load_builtin_task("digits-mlp")


@pytest.fixture(scope="session")
def digits_resnet_task():  # type: ignore[no-untyped-def]
    from searchprune.tasks.builtin import load_builtin_task

    return load_builtin_task("digits-resnet")
