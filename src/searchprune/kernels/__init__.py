"""Faster execution of pruned models: compact (physically smaller) dense models and
sparse CSR/BSR kernels."""

from searchprune.kernels.compact import compact
from searchprune.kernels.sparse import median_latency, sparsify

__all__ = ["compact", "median_latency", "sparsify"]
