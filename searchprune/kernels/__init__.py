"""Faster execution of pruned models: compact (physically smaller) dense models, and
per-layer CSR/BSR, gather-scatter and 2:4 semi-structured kernels chosen by measurement."""

from searchprune.kernels.compact import compact
from searchprune.kernels.sparse import median_latency, sparsify

__all__ = ["compact", "median_latency", "sparsify"]
