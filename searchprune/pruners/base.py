"""The :class:`Method` protocol and the one registry of pruning methods, :data:`METHODS`.

A method maps a :class:`~searchprune.problem.Problem` to masks that meet its budget, in
one call: a one-shot baseline computes them from a criterion's scores
(:mod:`searchprune.pruners.oneshot`), a training-time method trains a copy of the model
while it prunes (:mod:`searchprune.pruners.training`) and returns that copy with them.
A config names one as ``method: magnitude-global`` or, with settings,
``method: {name: gradual-magnitude, epochs: 20}``; one-shot methods also serve as
``baselines``. A new method is a :class:`Method` subclass in a module of its own,
registered with ``@METHODS.register(name, description)`` and imported in
:mod:`searchprune.pruners` (or named ``package.module:Class`` in a config).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from searchprune.config import describe_errors
from searchprune.core.masks import MaskSet
from searchprune.problem import Problem
from searchprune.registry import Registry, SpecError, UnknownNameError, unknown_name_message


class NoSettings(BaseModel):
    """The settings of a method that takes none (every key is an error)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodResult:
    """What a method returns: masks meeting the budget; the trained copy of the model
    they belong to, or ``None`` when they belong to the problem's own model; and
    method-specific figures for the report (``summary.json``'s ``method_info``)."""

    masks: MaskSet
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A pruning method: built from its validated settings (an instance of
    :attr:`Params`) and a seed, it prunes a problem in :meth:`run`.

    ``trains`` says whether :meth:`run` trains a copy of the model (and returns it in
    :attr:`MethodResult.model`); only methods that do not can be ``baselines``.
    """

    Params: ClassVar[type[BaseModel]] = NoSettings
    trains: ClassVar[bool] = False

    def __init__(self, params: BaseModel, seed: int) -> None:
        self.params = params
        self.seed = seed

    @abstractmethod
    def run(self, problem: Problem) -> MethodResult:
        """Masks for ``problem`` that meet its budget (``problem`` is left as it was)."""


METHODS: Registry[type[Method]] = Registry("method", "method.name")


def method_class(name: str, field: str = "method.name") -> type[Method]:
    """The method registered as ``name``, or the :class:`Method` subclass that
    ``"package.module:Class"`` imports.

    :raises SpecError: naming ``field``, for an unknown name or an object that is not a
        :class:`Method` subclass.
    """
    try:
        cls = METHODS.get(name)
    except UnknownNameError:
        raise SpecError(unknown_name_message(field, "method", name, METHODS.names())) from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise SpecError(f"{field}: {name!r} is not a searchprune.pruners.Method subclass")
    return cls


def make_method(name: str, seed: int = 0, **options: Any) -> Method:
    """The method ``name`` built with its settings ``options`` validated.

    :raises SpecError: naming the method, for an unknown name or a bad setting (any
        setting at all for a method that takes none).
    """
    cls = method_class(name)
    if options and not cls.Params.model_fields:
        raise SpecError(f"method: {name!r} takes no settings, got {sorted(options)}")
    try:
        params = cls.Params.model_validate(options)
    except ValidationError as error:
        raise SpecError(describe_errors(error, "method", cls.Params, name)) from None
    return cls(params, seed)


def baseline_method(name: str) -> type[Method]:
    """The method ``name`` of a config's ``baselines``: one that prunes the problem's own
    model without training.

    :raises SpecError: naming ``baselines``, for an unknown name or a training method.
    """
    cls = method_class(name, "baselines")
    if cls.trains:
        one_shot = [entry.name for entry in METHODS if not METHODS.get(entry.name).trains]
        raise SpecError(
            f"baselines: {name!r} trains a copy of the model; run it as 'method' instead. "
            f"Baselines are methods that do not train: {', '.join(one_shot)}"
        )
    return cls
