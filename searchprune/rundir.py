"""The run directory: every file a run writes, and how it writes and reads them.

One :class:`RunDir` owns a run's files (the resolved config, ``history.jsonl``, the
checkpoint, the latency curve, a training-time method's trained weights, the best masks
and ``summary.json``), so the run loop, ``--resume``, ``compare`` and ``export`` share one
reading of the format.

Crash safety. Every file but ``history.jsonl`` is written whole to a temporary file,
flushed to disk and renamed over the old one (:func:`write_atomically`), so a kill at any
moment leaves the old file or the new one, never half a file. ``history.jsonl`` grows by
whole batches of lines; a resumed run cuts it back to the evaluations its checkpoint
counts by rewriting a copy and renaming it. One process at a time may run in a directory
(:meth:`RunDir.lock`, an ``flock`` the operating system releases when the process dies).

Trust. A checkpoint is data only: :func:`encode_state` turns a state tree (dicts, lists,
tuples, strings, numbers, bytes, numpy arrays and scalars, torch tensors) into JSON plus
arrays, stored together in one ``.npz`` that is read with ``allow_pickle=False``, so
loading a received run directory never runs code.

Fault injection (for the crash tests): ``SEARCHPRUNE_FAULT=<phase>:<file>:<n>`` kills the
process with SIGKILL the ``n``-th time it writes ``<file>`` (``config.yaml``,
``history.jsonl``, ``checkpoint.npz``, ...), at ``<phase>`` ``before`` (the new content is
written beside the file, or a batch of history lines is appended up to the middle of
one) or ``after`` (the write is complete). :data:`WRITE_POINTS` lists them.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import numpy as np
import torch
import yaml

from searchprune.config import Config, ConfigError, apply_override, validate_config
from searchprune.core.masks import MaskSet
from searchprune.latency import LatencyModel

FAULT_ENV = "SEARCHPRUNE_FAULT"
_fault_counts: dict[str, int] = {}


def _fault(phase: str, name: str) -> None:
    """The fault-injection hook (module docstring): SIGKILL this process when
    ``SEARCHPRUNE_FAULT`` names this write point and its count is reached."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, count = spec.rpartition(":")
    here = f"{phase}:{name}"
    if point != here:
        return
    _fault_counts[here] = _fault_counts.get(here, 0) + 1
    if _fault_counts[here] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (where the platform allows it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: Path, content: str | bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` with ``content`` (text, bytes, or a function that writes the file
    it is given) through a temporary file in the same directory, flushed to disk first."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(content, str):
        tmp.write_text(content)
    elif isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        content(tmp)
    descriptor = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    _fault("before", path.name)
    os.replace(tmp, path)
    _fsync_directory(path.parent)
    _fault("after", path.name)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------- state encoding
_TAGS = ("__float__", "__bytes__", "__tuple__", "__dict__", "__array__", "__scalar__", "__tensor__")


def encode_state(tree: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """A state tree as JSON-ready data plus the arrays it refers to by name.

    Dicts with string keys stay JSON objects; tuples, dicts with other keys, bytes,
    non-finite floats, numpy arrays and scalars and torch tensors become one-key tagged
    objects, so :func:`decode_state` gives back the same types (``random.setstate``
    needs its tuples, ``torch.set_rng_state`` its tensor).

    :raises TypeError: naming where in the tree a value is not plain data.
    """
    arrays: dict[str, np.ndarray] = {}

    def stored(array: np.ndarray, where: str) -> str:
        if array.dtype.kind not in "biufcUS":
            raise TypeError(f"state {where}: arrays of dtype {array.dtype} are not plain data")
        name = f"a{len(arrays)}"
        arrays[name] = np.array(array, copy=True)
        return name

    def encode(value: Any, where: str) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, np.generic):  # before float: np.float64 is a float
            return {"__scalar__": stored(np.asarray(value), where)}
        if isinstance(value, (bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, bytes):
            return {"__bytes__": value.hex()}
        if isinstance(value, torch.Tensor):
            if value.dtype == torch.bfloat16:
                raise TypeError(f"state {where}: bfloat16 tensors are not stored")
            return {"__tensor__": stored(value.detach().cpu().numpy(), where)}
        if isinstance(value, np.ndarray):
            return {"__array__": stored(value, where)}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
            return {
                "__dict__": [
                    [encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ]
            }
        raise TypeError(f"state {where}: a {type(value).__name__} is not plain data")

    return encode(tree, "root"), arrays


def decode_state(data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The state tree :func:`encode_state` encoded (it runs no code of the data's choosing).

    :raises ValueError: on a tag it does not know or an array that is missing.
    """

    def array(name: Any) -> np.ndarray:
        if not isinstance(name, str) or name not in arrays:
            raise ValueError(f"the state refers to a missing array {name!r}")
        return np.array(arrays[name], copy=True)

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            tag, inner = next(iter(value.items()))
            if tag in _TAGS:
                if tag == "__float__":
                    return float(inner)
                if tag == "__bytes__":
                    return bytes.fromhex(inner)
                if tag == "__tuple__":
                    return tuple(decode(v) for v in inner)
                if tag == "__dict__":
                    return {decode(k): decode(v) for k, v in inner}
                if tag == "__array__":
                    return array(inner)
                if tag == "__scalar__":
                    return array(inner)[()]
                return torch.from_numpy(array(inner))
        if any(key.startswith("__") for key in value):
            raise ValueError(f"unknown tag in state: {sorted(value)}")
        return {key: decode(v) for key, v in value.items()}

    return decode(data)


# ------------------------------------------------------------------ run dir
WRITE_POINTS = tuple(
    f"{phase}:{name}"
    for name in (
        "config.yaml",
        "dense_model.pt",
        "dense_model.json",
        "latency_model.json",
        "history.jsonl",
        "checkpoint.npz",
        "trained_model.pt",
        "best_masks.npz",
        "summary.json",
    )
    for phase in ("before", "after")
)
"""Every place a run writes a file, as ``SEARCHPRUNE_FAULT`` names them."""

RESUMABLE_KEYS = ("run.max_evals", "run.max_seconds", "run.target_fitness", "run.progress")
"""The settings a resumed run may change (``--resume --set``)."""


class RunDir:
    """The files of one run under ``path``; see the module docstring."""

    CONFIG = "config.yaml"
    HISTORY = "history.jsonl"
    CHECKPOINT = "checkpoint.npz"
    PICKLED_CHECKPOINT = "checkpoint.pkl"  # written by searchprune before 0.1; never read
    LATENCY_MODEL = "latency_model.json"
    TRAINED_MODEL = "trained_model.pt"
    DENSE_MODEL = "dense_model.pt"  # the dense weights the run scores
    DENSE_RECORD = "dense_model.json"  # their fingerprint and val accuracy
    BEST_MASKS = "best_masks.npz"
    SUMMARY = "summary.json"
    LOCK = "run.lock"
    _STATE = "state"  # the checkpoint's JSON, stored in its .npz as utf-8 bytes

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ----------------------------------------------------------------- state
    @property
    def started(self) -> bool:
        """Whether a searcher run has checkpointed here (it can be resumed)."""
        return (self / self.CHECKPOINT).exists() or (self / self.PICKLED_CHECKPOINT).exists()

    @property
    def finished(self) -> bool:
        """Whether a run finished here (its summary is written and not marked unfinished,
        as an interrupted run's is)."""
        if not (self / self.SUMMARY).exists():
            return False
        return self.read_summary().get("finished", True) is not False

    @property
    def holds_run(self) -> bool:
        """Whether a run has left what a new run must not overwrite here: a checkpoint
        (a searcher run that can be resumed) or a summary (a finished run, or an
        interrupted one)."""
        return self.started or (self / self.SUMMARY).exists()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process (made if needed) until the block ends.

        The lock is an ``flock`` on ``run.lock``, which the operating system releases when
        the process ends, however it ends.

        :raises ConfigError: naming the PID of the process that holds it.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise ConfigError(
                f"{self.path}: cannot make a run directory there ({error.strerror}); "
                "choose another --out"
            ) from None
        descriptor = os.open(self / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                raise ConfigError(
                    f"{self.path} is in use by another searchprune process (PID "
                    f"{holder or 'unknown'}); wait for it to end or choose another --out"
                ) from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    # ---------------------------------------------------------------- config
    def create(self, config: Config) -> None:
        """Make the directory and write the resolved config (every default filled in)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self / self.CONFIG, yaml.safe_dump(config.resolved(), sort_keys=False))

    def read_config(self, overrides: Iterable[str] = ()) -> Config:
        """The run's resolved config, with the overrides a resumed run may take
        (:data:`RESUMABLE_KEYS`)."""
        path = self / self.CONFIG
        if not path.exists():
            raise ConfigError(f"{self.path}: no run there (missing {self.CONFIG})")
        data = yaml.safe_load(path.read_text())
        for assignment in overrides:
            key = assignment.split("=", 1)[0].strip()
            if key not in RESUMABLE_KEYS:
                raise ConfigError(
                    f"--set {assignment!r}: a resumed run keeps its settings; only "
                    f"{', '.join(RESUMABLE_KEYS)} may change (start a new run with --out "
                    f"to change {key})"
                )
            apply_override(data, assignment)
        return validate_config(data)

    # --------------------------------------------------------------- history
    def start_history(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """Begin ``history.jsonl`` afresh, with ``rows`` (one JSON object a line)."""
        write_atomically(self / self.HISTORY, "".join(json.dumps(row) + "\n" for row in rows))

    def append_history(self, lines: Sequence[str]) -> None:
        """Append whole lines (one evaluation each) to ``history.jsonl``, flushed to disk."""
        text = "".join(line + "\n" for line in lines)
        middle = len(lines) // 2  # the fault hook cuts this line in half
        cut = sum(len(line) + 1 for line in lines[:middle]) + len(lines[middle]) // 2
        with open(self / self.HISTORY, "a") as handle:
            handle.write(text[:cut])
            handle.flush()
            _fault("before", self.HISTORY)
            handle.write(text[cut:])
            handle.flush()
            os.fsync(handle.fileno())
        _fault("after", self.HISTORY)

    def cut_history(self, evaluations: int) -> None:
        """Keep the first ``evaluations`` lines of ``history.jsonl`` (a resumed run drops
        the lines written after its checkpoint); rewritten as a copy, then renamed."""
        path = self / self.HISTORY
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        complete = [line for line in lines[:evaluations] if line.endswith("\n")]
        if len(complete) < evaluations:
            raise ConfigError(
                f"{path} has {len(complete)} complete lines, but the checkpoint counts "
                f"{evaluations} evaluations; the directory was changed outside searchprune"
            )
        if len(lines) > evaluations:
            write_atomically(path, "".join(complete))

    def read_history(self) -> list[dict[str, Any]]:
        """Every line of ``history.jsonl`` (none when it does not exist)."""
        path = self / self.HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------ checkpoint
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``state`` (plain data; see :func:`encode_state`)."""
        tree, arrays = encode_state(dict(state))
        text = json.dumps({"format": 1, "state": tree}, allow_nan=False)
        arrays[self._STATE] = np.frombuffer(text.encode(), dtype=np.uint8)

        def write(path: Path) -> None:
            with open(path, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]

        write_atomically(self / self.CHECKPOINT, write)

    def load_checkpoint(self) -> dict[str, Any]:
        """The last checkpoint's state.

        :raises ConfigError: naming the file when it is damaged, or when the directory
            holds only a pickled checkpoint, which is never loaded (unpickling runs code).
        """
        path = self / self.CHECKPOINT
        if not path.exists() and (self / self.PICKLED_CHECKPOINT).exists():
            raise ConfigError(
                f"{self / self.PICKLED_CHECKPOINT} is a pickle (from an older searchprune), "
                "which searchprune never loads: unpickling a file can run any code; "
                "start the run again in a new directory"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            saved = json.loads(arrays.pop(self._STATE).tobytes().decode())
            if saved.get("format") != 1:
                raise ValueError(f"unknown checkpoint format {saved.get('format')!r}")
            state: dict[str, Any] = decode_state(saved["state"], arrays)
        except (OSError, BadZipFile, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(
                f"{path} cannot be read ({type(error).__name__}: {error}); it is damaged "
                "or not a searchprune checkpoint: start the run again in a new directory"
            ) from None
        return state

    # ------------------------------------------------------- latency, weights
    def save_latency_model(self, model: LatencyModel) -> None:
        write_atomically(self / self.LATENCY_MODEL, model.to_json())

    def load_latency_model(self) -> LatencyModel | None:
        """The latency curve measured when the run started, if it measured one."""
        path = self / self.LATENCY_MODEL
        return LatencyModel.load(path) if path.exists() else None

    def save_trained_model(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Keep a training-time method's trained weights (read with ``weights_only``)."""
        write_atomically(self / self.TRAINED_MODEL, lambda path: torch.save(dict(state_dict), path))

    def save_dense_model(
        self, state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any]
    ) -> None:
        """Keep the dense weights the run scores and their record (fingerprint, val
        accuracy; :func:`searchprune.assemble.dense_record`), the record last."""
        write_atomically(self / self.DENSE_MODEL, lambda path: torch.save(dict(state_dict), path))
        write_json(self / self.DENSE_RECORD, record)

    def load_dense_model(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The dense weights the run scored and their record (``None`` for a run that
        did not save them); the weights are read with ``weights_only=True``.

        :raises ConfigError: naming the file when it is damaged.
        """
        weights, record = self / self.DENSE_MODEL, self / self.DENSE_RECORD
        if not (weights.exists() and record.exists()):
            return None
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            info = json.loads(record.read_text())
            if not isinstance(state, dict) or not isinstance(info, dict):
                raise TypeError("not a state dict and a JSON object")
        except Exception as error:  # torch.load raises many kinds on a damaged file
            raise ConfigError(
                f"{weights} or {record} cannot be read ({type(error).__name__}: {error}); "
                "the run directory is damaged"
            ) from None
        return state, info

    # --------------------------------------------------------------- results
    def save_best_masks(self, masks: MaskSet) -> None:
        write_atomically(self / self.BEST_MASKS, masks.save)

    def load_best_masks(self) -> MaskSet:
        """The best masks of a finished run.

        :raises ConfigError: when the run has not finished (it was interrupted, or is
            still going), saying how to finish it.
        """
        if not self.finished:
            where = ""
            if (self / self.SUMMARY).exists():
                where = f" (interrupted at evaluation {self.read_summary().get('evaluations')})"
            raise ConfigError(
                f"{self.path}: the run has not finished{where}; finish it with "
                f"`searchprune run --resume {self.path}`, then export"
            )
        return MaskSet.load(self / self.BEST_MASKS)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self / self.SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self / self.SUMMARY).read_text())
        return summary
