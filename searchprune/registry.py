"""String-to-object registries, so a config can say ``searcher: {name: ga}``.

An entry is registered with its object, or *lazily* with the ``"package.module:Name"``
path that holds it (imported on first use, so that listing names and descriptions
imports nothing heavy). Plug-in packages add entries through an entry-point group
(``searchprune.searchers`` for searchers; see :meth:`Registry.add_entry_points`), and any
config field that takes a registered name also takes a ``"package.module:Name"`` path.

From Python, such a field also takes the object itself (a :class:`~searchprune.Task`, a
fitness function, a searcher class, a criterion): :func:`hold_object` keeps it for the
process under ``"object:<module>.<name>"``, the name the saved config then shows.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class SpecError(ValueError):
    """A wrong name or value in what the user asked for (a config, or API arguments).

    The CLI reports these as config errors (exit status 2); the message names the
    field and the fix.
    """


class UnknownNameError(SpecError):
    """A name that is not in a registry; the message lists the valid names."""


OBJECT_PREFIX = "object:"
_HELD: dict[tuple[str, str], object] = {}


def hold_object(value: object, field: str, resolves_to: object = None) -> str:
    """Keep ``value`` (an object passed from Python where a config field takes a name)
    for this process; return the name that stands for it in the config,
    ``"object:<module>.<qualname>"`` of the object (of its class for an instance). The
    name resolves to ``resolves_to`` when given (a factory returning a task object),
    else to ``value``."""
    named = value if hasattr(value, "__qualname__") else type(value)
    name = f"{OBJECT_PREFIX}{getattr(named, '__module__', '?')}.{named.__qualname__}"
    _HELD[(field, name)] = value if resolves_to is None else resolves_to
    return name


def held_object(name: str, field: str) -> object:
    """The object :func:`hold_object` kept as ``name`` for ``field``.

    :raises SpecError: when this process holds none (a saved config from a run started
        from Python, read in another process).
    """
    try:
        return _HELD[(field, name)]
    except KeyError:
        raise SpecError(
            f"{field}: {name!r} stood for a Python object passed to searchprune.run(); "
            "pass the object again (searchprune.run(config, out, resume=True) with the same "
            "objects), or name a 'package.module:Name' the config can import"
        ) from None


@dataclass
class Entry(Generic[T]):
    """One registered name: its object, or the import path it is loaded from."""

    name: str
    description: str
    target: str = ""
    value: T | None = None


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
        """Register ``value`` under ``name``."""
        self._add(Entry(name, description, value=value))

    def add_lazy(self, name: str, target: str, description: str) -> None:
        """Register ``"package.module:Name"`` under ``name``, imported on first use."""
        if not is_import_path(target):
            raise ValueError(f"{target!r} is not of the form 'package.module:Name'")
        self._add(Entry(name, description, target=target))

    def add_entry_points(self, group: str) -> None:
        """Register the entry points of ``group`` that installed packages declare (in
        pyproject: ``[project.entry-points."<group>"] name = "package.module:Name"``).
        Their description is the loaded object's ``description`` or docstring."""
        for point in metadata.entry_points(group=group):
            if point.name not in self._entries:
                self._add(Entry(point.name, "", target=point.value))

    def _add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def get(self, name: str) -> T:
        """The entry called ``name``, or the object ``"package.module:Name"`` imports
        (a plug-in, used as it is, without registering it), or the object held for
        this field under an ``"object:..."`` name (:func:`hold_object`)."""
        if name.startswith(OBJECT_PREFIX):
            return cast(T, held_object(name, self.field))
        if is_import_path(name):
            return cast(T, import_object(name, self.field))
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.field, self.kind, name, self.names()))
        return self._load(self._entries[name])

    def resolve(self, spec: str | T) -> T:
        """:meth:`get` for a name or an import path; an object (a plug-in passed in
        from Python) is returned as it is."""
        return self.get(spec) if isinstance(spec, str) else spec

    def _load(self, entry: Entry[T]) -> T:
        if entry.value is None:
            entry.value = cast(T, import_object(entry.target, self.field))
            if not entry.description:
                entry.description = describe(entry.value)
        return entry.value

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        """Every entry, by name; entry-point plug-ins are loaded for their description."""
        for name in self.names():
            entry = self._entries[name]
            if not entry.description:
                self._load(entry)
            yield entry


def describe(value: object) -> str:
    """A plug-in's one-line description: its ``description`` attribute, else the first
    line of its docstring."""
    text = getattr(value, "description", None)
    if isinstance(text, str) and text:
        return text
    return (getattr(value, "__doc__", None) or "").strip().split("\n")[0]


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
        raise SpecError(f"{field}: {path!r} is not of the form 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0]:
            hint = (
                f"; {error.name!r} must be installed or be a folder or file in the working "
                f"directory ({os.getcwd()}): run searchprune from the folder that holds it, "
                "or add that folder to PYTHONPATH"
            )
        raise SpecError(
            f"{field}: cannot import module {module_name!r} ({error}){hint}"
        ) from error
    except (Exception, SystemExit) as error:  # the plug-in's own code failed on import
        raise SpecError(
            f"{field}: importing module {module_name!r} for {path!r} failed "
            f"({type(error).__name__}: {error}); fix the plug-in module"
        ) from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise SpecError(
            f"{field}: module {module_name!r} has no attribute {attribute!r}"
        ) from error
