"""Scoring a masked model: the fitness plug-in API and the built-in fitness functions.

A fitness is any callable ``fitness(ctx) -> float | dict``. A dict must hold a
``"fitness"`` key; its other numeric entries are logged as metrics. Higher is better.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from searchprune.core.masks import MaskSet
from searchprune.registry import Registry, SpecError
from searchprune.tasks.base import LossFn, Split


class FitnessError(RuntimeError):
    """A fitness function raised, or returned something that is not a finite number."""


class FitnessContext:
    """What a fitness function sees.

    ``model`` has the candidate's masks applied and is in eval mode; ``val`` and
    ``train`` are the task's splits (never test); ``masks`` is the candidate's
    :class:`MaskSet` (built on first access); ``stats`` holds ``sparsity``,
    ``flops_fraction``, ``params_fraction``, ``flops`` and ``params`` of the candidate.
    """

    def __init__(
        self,
        model: nn.Module,
        val: Split,
        train: Split,
        device: torch.device,
        masks: MaskSet | Callable[[], MaskSet],
        stats: dict[str, float],
        loss: LossFn,
    ) -> None:
        self.model, self.val, self.train, self.device = model, val, train, device
        self.stats, self.loss = stats, loss
        self._masks = masks
        self._outputs: tuple[Tensor, Tensor] | None = None

    @property
    def masks(self) -> MaskSet:
        if not isinstance(self._masks, MaskSet):
            self._masks = self._masks()
        return self._masks

    def outputs(self) -> tuple[Tensor, Tensor]:
        """Logits and targets over the whole val split (computed once, then cached)."""
        if self._outputs is None:
            logits, targets = [], []
            for inputs, target in self.val:
                logits.append(self.model(inputs.to(self.device)))
                targets.append(target.to(self.device))
            if len(logits) == 1:
                self._outputs = (logits[0], targets[0])
            else:
                self._outputs = (torch.cat(logits), torch.cat(targets))
        return self._outputs

    def accuracy(self) -> float:
        logits, targets = self.outputs()
        return float((logits.argmax(dim=1) == targets).float().mean())

    def mean_loss(self) -> float:
        logits, targets = self.outputs()
        return float(self.loss(logits, targets))


FitnessFn = Callable[[FitnessContext], "float | dict[str, Any]"]
FITNESSES: Registry[Callable[..., float | dict[str, Any]]] = Registry("fitness", "fitness.name")


@FITNESSES.register("accuracy", "val accuracy of the masked model")
def accuracy(ctx: FitnessContext) -> dict[str, float]:
    acc = ctx.accuracy()
    return {"fitness": acc, "val_accuracy": acc, "val_loss": ctx.mean_loss()}


@FITNESSES.register("neg_loss", "minus the val loss of the masked model")
def neg_loss(ctx: FitnessContext) -> dict[str, float]:
    loss = ctx.mean_loss()
    return {"fitness": -loss, "val_accuracy": ctx.accuracy(), "val_loss": loss}


@FITNESSES.register("r_err", "AMC's R_err = -error (He et al. 2018)")
def r_err(ctx: FitnessContext) -> dict[str, float]:
    """AMC's resource-constrained reward ``R_err = -Error`` (He et al. 2018, eq. 1)."""
    acc = ctx.accuracy()
    return {"fitness": -(1.0 - acc), "val_accuracy": acc}


@FITNESSES.register("r_flops", "AMC's R_FLOPs = -error * log(FLOPs) (He et al. 2018)")
def r_flops(ctx: FitnessContext) -> dict[str, float]:
    """AMC's accuracy-guaranteed reward ``R_FLOPs = -Error * log(FLOPs)`` (He et al. 2018),
    which rewards FLOPs reduction on top of accuracy."""
    acc = ctx.accuracy()
    flops = max(float(ctx.stats["flops"]), 1.0)
    return {"fitness": -(1.0 - acc) * math.log(flops), "val_accuracy": acc}


@FITNESSES.register(
    "latency_aware", "MnasNet's ACC x (LAT/T)^w on the predicted latency (Tan et al. 2019)"
)
def latency_aware(
    ctx: FitnessContext, *, target_ms: float, weight: float = -0.07
) -> dict[str, float]:
    """MnasNet's latency-aware objective ``ACC(m) x (LAT(m) / T) ** w`` (Tan et al. 2019,
    eq. 2), with their soft-constraint exponent ``w = -0.07`` by default: a model twice as
    slow as the target ``T`` loses about 5% of its score, one twice as fast gains as much.
    ``LAT`` is the candidate's predicted latency (``ctx.stats["latency_ms"]``, from the
    latency curve the run measures when this fitness is chosen).
    """
    if "latency_ms" not in ctx.stats:
        raise ValueError(
            "latency_aware needs predicted latency: build the Problem with predict_latency=True"
        )
    acc = ctx.accuracy()
    latency = ctx.stats["latency_ms"]
    score = acc * (latency / target_ms) ** weight
    return {"fitness": score, "val_accuracy": acc, "latency_ms": latency}


def _check_latency_aware(target_ms: float, weight: float = -0.07) -> None:
    for name, value in (("target_ms", target_ms), ("weight", weight)):
        if not _is_number(value) or not math.isfinite(float(value)):
            raise ValueError(f"fitness.{name} must be a finite number, got {value!r}")
    if not target_ms > 0:
        raise ValueError(f"fitness.target_ms must be positive, got {target_ms}")


LATENCY_FITNESSES = frozenset({"latency_aware"})
_OPTION_CHECKS: dict[Callable[..., Any], Callable[..., None]] = {
    latency_aware: _check_latency_aware
}
"""Checks of a built-in fitness's option values, run when the options are bound."""


def resolve_fitness(
    fitness: str | FitnessFn, options: Mapping[str, Any] | None = None
) -> FitnessFn:
    """A fitness callable from a built-in name, a ``"package.module:function"`` string,
    or the callable itself, with keyword ``options`` bound.

    :raises SpecError: naming the fitness and its options when ``options`` do not fit its
        signature (an unknown key, a missing required one).
    """
    fn: Callable[..., float | dict[str, Any]]
    if callable(fitness):
        fn = fitness
    else:
        found = FITNESSES.get(fitness)
        if not callable(found):
            raise SpecError(f"fitness.name: {fitness!r} is not callable")
        fn = found
    options = dict(options or {})
    signature = inspect.signature(fn)
    try:
        signature.bind(None, **options)
    except TypeError as error:
        accepted = list(signature.parameters)[1:]
        raise SpecError(
            f"fitness {getattr(fn, '__name__', fitness)!r}: {error}; its options are "
            f"{accepted or 'none'} (set them as fitness.<option> keys)"
        ) from None
    check = _OPTION_CHECKS.get(fn)
    if check is not None:
        try:
            check(**options)
        except (TypeError, ValueError) as error:
            raise SpecError(str(error)) from None
    return partial(fn, **options) if options else fn


def call_fitness(
    fn: FitnessFn, ctx: FitnessContext, candidate: str
) -> tuple[float, dict[str, float]]:
    """Run ``fn`` and check what it returns.

    :raises FitnessError: naming ``candidate`` when ``fn`` raises or returns a value that
        is not a finite number.
    """
    name = getattr(fn, "__name__", None) or type(fn).__name__
    try:
        value = fn(ctx)
    except Exception as error:
        raise FitnessError(
            f"fitness {name!r} raised {type(error).__name__} on candidate {candidate}: {error}"
        ) from error
    metrics: dict[str, float] = {}
    if isinstance(value, dict):
        if "fitness" not in value:
            raise FitnessError(
                f"fitness {name!r} returned a dict without a 'fitness' key on candidate "
                f"{candidate} (keys: {sorted(value)})"
            )
        metrics = {k: float(v) for k, v in value.items() if k != "fitness" and _is_number(v)}
        value = value["fitness"]
    if not _is_number(value):
        raise FitnessError(
            f"fitness {name!r} returned {value!r} ({type(value).__name__}) on candidate "
            f"{candidate}; return a float or a dict with a 'fitness' key"
        )
    score = float(value)
    if not math.isfinite(score):
        raise FitnessError(
            f"fitness {name!r} returned {score} on candidate {candidate}; set "
            "fitness.penalty to score such candidates instead of stopping"
        )
    return score, metrics


def _is_number(value: object) -> bool:
    """A real number: a Python or numpy scalar or a one-element tensor, but not a bool (a
    fitness that returns ``True`` is a bug, not a score of 1)."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    if isinstance(value, (bool, np.bool_, complex, np.complexfloating)):
        return False
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes))
