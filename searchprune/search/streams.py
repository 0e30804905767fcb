"""Private random streams for libraries that draw from global generators.

DEAP's operators draw from Python's global ``random``; stable-baselines3 draws from
numpy's and torch's global generators. A searcher that uses them keeps its own states in
a :class:`GlobalStreams` and swaps them in around each call (:meth:`GlobalStreams.active`),
so runs are reproducible, checkpoints restore the streams exactly, and two searchers
never share a stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


class GlobalStreams:
    """Own states of Python's, numpy's and torch's global generators, seeded from ``seed``.

    ``python`` is a ``random.Random`` whose state is the one swapped in; code inside
    :meth:`active` may also draw from it directly (it is re-synchronised on exit).
    """

    def __init__(self, seed: int) -> None:
        self.python = random.Random(seed)
        self.numpy = np.random.RandomState(seed)
        self.torch = torch.Generator().manual_seed(seed).get_state()

    @classmethod
    def capture(cls) -> GlobalStreams:
        """The process's global generators as they are now (a run's checkpoint keeps them,
        so that code drawing from them, a user's fitness say, continues exactly)."""
        streams = cls(0)
        streams.python.setstate(random.getstate())
        streams.numpy.set_state(np.random.get_state())
        streams.torch = torch.get_rng_state()
        return streams

    def install(self) -> None:
        """Set the process's global generators to these states."""
        random.setstate(self.python.getstate())
        np.random.set_state(self.numpy.get_state())
        torch.set_rng_state(self.torch)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Swap this searcher's states into the global generators, and back out."""
        outer = random.getstate(), np.random.get_state(), torch.get_rng_state()
        self.install()
        try:
            yield
        finally:
            self.python.setstate(random.getstate())
            self.numpy.set_state(np.random.get_state())
            self.torch = torch.get_rng_state()
            random.setstate(outer[0])
            np.random.set_state(outer[1])
            torch.set_rng_state(outer[2])

    def state_dict(self) -> dict[str, Any]:
        return {
            "python": self.python.getstate(),
            "numpy": self.numpy.get_state(),
            "torch": self.torch.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.python.setstate(state["python"])
        self.numpy.set_state(state["numpy"])
        self.torch = state["torch"].clone()
