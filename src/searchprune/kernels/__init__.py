"""Faster execution of pruned models: compact (physically smaller) dense models."""

from searchprune.kernels.compact import compact

__all__ = ["compact"]
