"""The run directory: every file a run writes, and how it writes and reads them.

One :class:`RunDir` owns a run's files (the resolved config, ``history.jsonl``, the
checkpoint, the latency curve, a training-time method's trained weights, the best masks
and ``summary.json``), so the run loop, ``--resume``, ``compare`` and ``export`` share one
reading of the format. Files that are replaced are written to a temporary file and
renamed over the old one, so a reader (or a resumed run) never sees half a file.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from searchprune.config import Config, ConfigError, apply_override, validate_config
from searchprune.core.masks import MaskSet


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a temporary file in the same directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RunDir:
    """The files of one run under ``path``; see the module docstring."""

    CONFIG = "config.yaml"
    HISTORY = "history.jsonl"
    CHECKPOINT = "checkpoint.pkl"
    LATENCY_MODEL = "latency_model.json"
    TRAINED_MODEL = "trained_model.pt"
    BEST_MASKS = "best_masks.npz"
    SUMMARY = "summary.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ----------------------------------------------------------------- state
    @property
    def started(self) -> bool:
        """Whether a searcher run has checkpointed here (it can be resumed)."""
        return (self / self.CHECKPOINT).exists()

    @property
    def finished(self) -> bool:
        """Whether a run finished here (its summary is written)."""
        return (self / self.SUMMARY).exists()

    # ---------------------------------------------------------------- config
    def create(self, config: Config) -> None:
        """Make the directory and write the resolved config (every default filled in)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self / self.CONFIG, yaml.safe_dump(config.resolved(), sort_keys=False))

    def read_config(self, overrides: Iterable[str] = ()) -> Config:
        """The run's resolved config, with ``run.*`` overrides allowed (``--resume``)."""
        path = self / self.CONFIG
        if not path.exists():
            raise ConfigError(f"{self.path}: no run there (missing {self.CONFIG})")
        data = yaml.safe_load(path.read_text())
        for assignment in overrides:
            if not assignment.startswith("run."):
                raise ConfigError(
                    f"--set {assignment!r}: a resumed run only takes run.* overrides"
                )
            apply_override(data, assignment)
        return validate_config(data)

    # --------------------------------------------------------------- history
    def start_history(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """Begin ``history.jsonl`` afresh, with ``rows`` (one JSON object a line)."""
        write_atomically(self / self.HISTORY, "".join(json.dumps(row) + "\n" for row in rows))

    def append_history(self) -> IO[str]:
        """``history.jsonl`` opened for appending lines."""
        return open(self / self.HISTORY, "a")

    def read_history(self) -> list[dict[str, Any]]:
        """Every line of ``history.jsonl`` (none when it does not exist)."""
        path = self / self.HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------ checkpoint
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``state`` (loop and searcher state)."""
        tmp = self / f".{self.CHECKPOINT}.tmp"
        with open(tmp, "wb") as handle:
            pickle.dump(dict(state), handle)
        os.replace(tmp, self / self.CHECKPOINT)

    def load_checkpoint(self, evaluations: str = "evals") -> dict[str, Any]:
        """The last checkpoint; ``history.jsonl`` is cut back to the evaluations it
        counts (``state["loop"].<evaluations>``), dropping lines written after it."""
        with open(self / self.CHECKPOINT, "rb") as handle:
            state: dict[str, Any] = pickle.load(handle)
        kept = (self / self.HISTORY).read_text().splitlines(keepends=True)
        write_atomically(self / self.HISTORY, "".join(kept[: getattr(state["loop"], evaluations)]))
        return state

    # --------------------------------------------------------------- results
    def save_best_masks(self, masks: MaskSet) -> None:
        tmp = self / f".{self.BEST_MASKS}.tmp"
        masks.save(tmp)
        os.replace(tmp, self / self.BEST_MASKS)

    def load_best_masks(self) -> MaskSet:
        path = self / self.BEST_MASKS
        if not path.exists():
            raise ConfigError(f"{self.path}: the run has no best masks yet (not finished)")
        return MaskSet.load(path)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self / self.SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self / self.SUMMARY).read_text())
        return summary
