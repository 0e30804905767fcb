"""In-process evaluation: masks applied in place, one candidate after another."""

from __future__ import annotations

import numpy as np

from searchprune.evaluate.base import Evaluator
from searchprune.problem import Evaluation


class LocalEvaluator(Evaluator):
    """Scores candidates in this process with the problem's model, masked in place."""

    def _score(self, genomes: np.ndarray, labels: list[str]) -> list[Evaluation]:
        return self.problem.score(genomes, labels)
