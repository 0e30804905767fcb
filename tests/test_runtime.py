"""The evaluating process's settings: threads and the glibc allocator thresholds."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from searchprune.runtime import prepare_process, steady_allocator


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are a glibc feature",
)
def test_steady_allocator_sets_the_glibc_thresholds() -> None:
    assert steady_allocator() is True
    assert steady_allocator() is True  # idempotent


def test_prepare_process_sets_the_thread_count() -> None:
    previous = torch.get_num_threads()
    try:
        prepare_process(2)
        assert torch.get_num_threads() == 2
        prepare_process(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
