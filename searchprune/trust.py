"""Which plug-ins a received run directory may make searchprune import and call.

A config names plug-in callables as ``"package.module:Name"`` (task factories, fitness
functions, searchers, criteria, spaces, methods), and a task factory is called with the
config's keyword options. A user who runs a config they wrote chose those callables. A
config read back from a run directory (``run --resume``, ``export``) may come from
someone else, and ``task: {name: "subprocess:getoutput", cmd: ...}`` would run a
command. So before anything of such a config is imported, each plug-in's module is
located (``importlib.util.find_spec`` on its top-level package, which runs none of its
code) and accepted only when it is

- part of searchprune's own plug-in packages (:data:`SEARCHPRUNE_PLUGIN_PACKAGES`), or
- in an installed distribution that is a searchprune plug-in package: one that requires
  searchprune (``Requires-Dist``) or declares ``searchprune.*`` entry points
  (importlib.metadata), or
- a file under the current working directory (the user's own code; not a virtual
  environment's site-packages that lies there),

and never when it is a standard-library module, on :data:`DENIED` (modules that run
processes or code, or load pickles), or a file inside the run directory itself. Other
installed distributions (numpy, torch, PyYAML, ...) are refused too: their functions
called with options a stranger chose can load pickles or run code (``numpy:load`` with
``allow_pickle``, ``yaml:unsafe_load``). ``--trust-plugins`` lifts the check for a run
directory the user trusts.
"""

from __future__ import annotations

import re
import site
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import metadata, util
from pathlib import Path
from typing import Any

import yaml

from searchprune.config import Config, ConfigError
from searchprune.rundir import RunDir

TRUST_FLAG = "--trust-plugins"

PLUGIN_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""A string a config field may name a plug-in with: ``package.module:Name``."""

SEARCHPRUNE_PLUGIN_PACKAGES = (
    "searchprune.tasks",
    "searchprune.search",
    "searchprune.criteria",
    "searchprune.pruners",
    "searchprune.fitness",
    "searchprune.space",
    "envs",
)
"""searchprune's modules that hold tasks, searchers, criteria, methods, fitness functions
and spaces; its other modules (the run directory, export, the CLI) write files and are
not plug-ins."""

DENIED = frozenset(
    {
        # the standard library's process, code and deserialization entry points
        "builtins", "code", "codeop", "ctypes", "importlib", "marshal", "multiprocessing",
        "os", "pdb", "pickle", "_pickle", "posix", "nt", "pty", "runpy", "shelve", "shutil",
        "socket", "subprocess", "_posixsubprocess", "sys", "webbrowser", "zipimport",
        # installed packages that unpickle, execute or install code
        "cloudpickle", "dill", "joblib", "IPython", "pip", "pkg_resources", "setuptools",
        "_distutils_hack", "yaml", "ray",
    }
)  # fmt: skip
"""Top-level modules refused whatever the working directory (named in the message)."""


class UntrustedPluginError(ConfigError):
    """A run directory's config names a plug-in that is not run without --trust-plugins."""


def plugin_references(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(field, "package.module:Name")`` string in plain config data, the field as a
    dotted path (``task.name``, ``baselines[0]``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from plugin_references(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from plugin_references(value, f"{where}[{index}]")
    elif isinstance(data, str) and PLUGIN_PATH.match(data):
        yield where, data


def _location(top: str) -> Path | None:
    """Where the top-level module ``top`` would be imported from (its file, or its
    package's directory), without running any of its code; ``None`` if it is not found
    or has no file (a built-in module)."""
    try:
        spec = util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).resolve()
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _installed(location: Path) -> bool:
    """Whether ``location`` lies in this Python's installation or its site-packages (a
    virtual environment inside the working directory is not the user's own code)."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    prefixes.add(site.getusersitepackages())
    return any(_inside(location, Path(prefix).resolve()) for prefix in prefixes)


@cache
def _plugin_distributions() -> frozenset[str]:
    """Top-level packages of installed distributions that are searchprune plug-in
    packages: they require searchprune, or declare ``searchprune.*`` entry points."""
    tops = set()
    for top, names in metadata.packages_distributions().items():
        for name in names:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            requires = [
                re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")
                for requirement in dist.requires or []
            ]
            groups = {point.group for point in dist.entry_points}
            if "searchprune" in requires or any(g.startswith("searchprune.") for g in groups):
                tops.add(top)
    return frozenset(tops)


def refusal(module: str, run_dir: Path | None = None) -> str | None:
    """Why a received run directory may not make searchprune import ``module`` (see the
    module docstring), or ``None`` when it may."""
    top = module.split(".")[0]
    if top in DENIED:
        return f"module {top!r} can run processes or code"
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"{top!r} is a standard-library module, not a searchprune plug-in"
    location = _location(top)
    if location is None:
        return None  # nothing to import: the import itself reports it, naming the field
    if run_dir is not None and _inside(location, Path(run_dir).resolve()):
        return f"module {top!r} is a file inside the run directory ({location})"
    if top in ("searchprune", "envs"):
        if any(module == p or module.startswith(p + ".") for p in SEARCHPRUNE_PLUGIN_PACKAGES):
            return None
        return (
            f"{module!r} is not one of searchprune's plug-in packages "
            f"({', '.join(SEARCHPRUNE_PLUGIN_PACKAGES)})"
        )
    if top in _plugin_distributions():
        return None
    if _inside(location, Path.cwd().resolve()) and not _installed(location):
        return None
    return (
        f"module {top!r} ({location}) is neither under the working directory nor in an "
        "installed searchprune plug-in package"
    )


def check_plugins(config: Config, run_dir: Path) -> None:
    """Refuse the plug-ins of a config read from ``run_dir`` that a received run directory
    may not run (see the module docstring).

    :raises UntrustedPluginError: naming the field, the callable, why, and the flag.
    """
    for field, path in plugin_references(config.resolved()):
        reason = refusal(path.partition(":")[0], run_dir)
        if reason is not None:
            raise UntrustedPluginError(
                f"{field}: {path!r} in {Path(run_dir) / 'config.yaml'} is not imported from "
                f"a run directory: {reason}. A run directory's plug-ins must come from the "
                "working directory or an installed searchprune plug-in package; if you "
                f"trust this run directory, pass {TRUST_FLAG}"
            )


def read_received_config(
    run_dir: str | Path, overrides: Iterable[str] = (), *, trust: bool = False
) -> Config:
    """The config saved in ``run_dir`` (with the overrides a resumed run may take), its
    plug-ins checked unless ``trust``.

    :raises ConfigError: naming the file when it is missing, damaged or invalid, or
        (:class:`UntrustedPluginError`) naming a plug-in it may not run.
    """
    files = RunDir(run_dir)
    path = files / RunDir.CONFIG
    try:
        config = files.read_config(overrides)
    except ConfigError as error:
        if str(error).startswith("--set") or not path.exists():
            raise
        raise ConfigError(f"{path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{path} cannot be read ({type(error).__name__}: {error}); the run directory is "
            "damaged: start the run again in a new directory"
        ) from None
    if not trust:
        check_plugins(config, files.path)
    return config
