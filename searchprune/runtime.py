"""Settings of the evaluating process that decide how fast a forward pass runs.

Two are set together, wherever candidates are scored (the run's own process and each Ray
actor):

- torch's intra-op threads (one per process by default: on small models more threads
  cost more than they give, and Ray actors each take their own core);
- glibc's allocator thresholds. By default glibc serves allocations above a *dynamic*
  threshold with fresh ``mmap`` pages and returns them on ``free``, so every forward
  pass whose activations exceed it page-faults its buffers in again. Whether the
  threshold has already risen depends on the process's allocation history, which made
  the same forward pass take 2.0 ms in some processes and 4.3 ms in others here
  (MNIST-1D CNN over its val split; oneDNN reorders 10x slower in the slow ones). Fixing
  the thresholds (``mallopt``) keeps such buffers on the heap and the timing steady.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # the most every 64-bit glibc accepts
TRIM_THRESHOLD_BYTES = 128 << 20


def steady_allocator() -> bool:
    """Keep allocations below 32 MiB on the heap and free memory cached up to 128 MiB.

    :returns: whether the thresholds were set (``False`` off glibc, where nothing is done).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):  # musl and other C libraries
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(mmap_set and trim_set)


def prepare_process(threads: int) -> None:
    """Set torch's thread count and the steady allocator for scoring candidates."""
    torch.set_num_threads(threads)
    steady_allocator()
