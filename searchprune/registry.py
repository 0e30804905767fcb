"""String-to-object registries, so a config can say ``searcher: {name: ga}``."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class SpecError(ValueError):
    """A wrong name or value in what the user asked for (a config, or API arguments).

    The CLI reports these as config errors (exit status 2); the message names the
    field and the fix.
    """


class UnknownNameError(SpecError):
    """A name that is not in a registry; the message lists the valid names."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    description: str


class Registry(Generic[T]):
    """Named entries of one kind (searchers, criteria, fitness functions, ...)."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator registering ``value`` under ``name``."""

        def add(value: T) -> T:
            self.add(name, value, description)
            return value

        return add

    def add(self, name: str, value: T, description: str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, value, description)

    def get(self, name: str) -> T:
        """The entry called ``name``, or the object ``"package.module:Name"`` imports
        (a plug-in, used as it is, without registering it)."""
        if is_import_path(name):
            return import_object(name, self.field)  # type: ignore[return-value]
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.field, self.kind, name, self.names()))
        return self._entries[name].value

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[name] for name in self.names())


def unknown_name_message(field: str, kind: str, name: str, valid: list[str]) -> str:
    """``field: unknown kind 'x'; did you mean 'y'? valid: a, b, c``."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{field}: unknown {kind} {name!r}{hint} Valid names: {', '.join(valid)}"


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a plug-in (``"package.module:Name"``) rather than an entry."""
    return ":" in name


def import_object(path: str, field: str) -> object:
    """Import ``"package.module:attribute"``, with an error naming the config field."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise SpecError(f"{field}: {path!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"{field}: cannot import module {module_name!r} ({error})") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise SpecError(
            f"{field}: module {module_name!r} has no attribute {attribute!r}"
        ) from error
