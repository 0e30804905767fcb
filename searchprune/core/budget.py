"""Budgets: the constraint every candidate must meet.

``sparsity`` is the fraction of prunable weights removed (at least the target);
``flops`` and ``params`` are the fraction of the dense model's FLOPs or params kept
(at most the target); ``latency_ms`` is the measured latency of the deployed model in
milliseconds (at most the target; :mod:`searchprune.latency` turns it into a FLOPs or
params budget through a latency curve measured on the machine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BUDGET_KINDS = ("sparsity", "flops", "params", "latency_ms")
_STAT_OF = {
    "sparsity": "sparsity",
    "flops": "flops_fraction",
    "params": "params_fraction",
    "latency_ms": "latency_ms",
}
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    """A target fraction for one kind of cost."""

    kind: str
    target: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"unknown budget {self.kind!r}; use one of {', '.join(BUDGET_KINDS)}")
        if self.kind == "latency_ms":
            if not self.target > 0.0:
                raise ValueError(f"budget.latency_ms must be positive, got {self.target}")
        elif not 0.0 < self.target < 1.0:
            raise ValueError(
                f"budget.{self.kind} must be a fraction strictly between 0 and 1, got {self.target}"
            )

    @property
    def stat(self) -> str:
        """The key of :class:`searchprune.core.stats.MaskStats` this budget bounds."""
        return _STAT_OF[self.kind]

    @property
    def removes(self) -> bool:
        """True when the target is a fraction removed (sparsity), not a fraction kept."""
        return self.kind == "sparsity"

    def met_by(self, value: float) -> bool:
        """Whether a measured value of :attr:`stat` meets the budget."""
        if self.removes:
            return value >= self.target - TOLERANCE
        return value <= self.target + TOLERANCE

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, float]) -> Budget:
        if len(mapping) != 1:
            raise ValueError(
                "budget must name exactly one of sparsity, flops, params or latency_ms, "
                f"e.g. {{sparsity: 0.9}}; got {dict(mapping)}"
            )
        ((kind, target),) = mapping.items()
        return cls(kind, float(target))
