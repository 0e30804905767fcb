"""Following a run as it goes: callbacks, and TensorBoard and MLflow loggers.

A :class:`RunCallback` is told when the run starts, after every evaluation (its
``history.jsonl`` row), after every generation (evaluations so far, best fitness, the
generation's rows) and when the run finishes (``summary.json``). Pass callbacks to
:func:`searchprune.run` from Python, or name loggers in a config's ``tracking`` section:

    tracking: [tensorboard, {name: mlflow, experiment: pruning}]

The loggers are optional extras (``pip install "searchprune[tracking]"``: the
``tensorboard`` package for ``torch.utils.tensorboard``, and ``mlflow-skinny``); a
missing one is an error naming the extra.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from searchprune.registry import Registry, SpecError

Row = Mapping[str, Any]


class RunCallback:
    """Hooks of a run, each a no-op by default; override the ones you need."""

    def on_start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        """The run starts (or resumes) in ``run_dir`` with the resolved ``config``."""

    def on_evaluation(self, row: Row) -> None:
        """One evaluation was scored; ``row`` is its ``history.jsonl`` line."""

    def on_generation(self, evaluations: int, best_fitness: float, rows: Sequence[Row]) -> None:
        """A generation (one ask/evaluate/tell round) ended."""

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """The run finished; ``summary`` is ``summary.json``."""


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and other leaves as they are)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numeric figures of a summary's ``dense``, ``best`` and ``baselines`` sections,
    named like ``best.test_accuracy`` and ``baselines.magnitude-global.val_accuracy``."""
    sections = {key: summary[key] for key in ("dense", "best", "baselines") if key in summary}
    return {
        name: float(value)
        for name, value in _flatten(sections).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _missing(package: str, logger: str) -> SpecError:
    return SpecError(
        f"tracking: the {logger} logger needs the {package!r} package; install it with "
        "pip install 'searchprune[tracking]'"
    )


class TensorBoardLogger(RunCallback):
    """Scalars for TensorBoard (``torch.utils.tensorboard``): every candidate's fitness
    and the best so far against evaluations, and the final figures. Logs go to
    ``log_dir`` (default: ``<run dir>/tensorboard``)."""

    def __init__(self, log_dir: str | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self._writer_class = SummaryWriter
        self.log_dir = log_dir
        self._writer: Any = None

    def on_start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        self._writer = self._writer_class(log_dir=self.log_dir or str(run_dir / "tensorboard"))
        self._writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```")

    def on_evaluation(self, row: Row) -> None:
        self._writer.add_scalar("fitness", row["fitness"], row["eval"])

    def on_generation(self, evaluations: int, best_fitness: float, rows: Sequence[Row]) -> None:
        self._writer.add_scalar("best_fitness", best_fitness, evaluations)
        self._writer.flush()

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        for name, value in summary_metrics(summary).items():
            self._writer.add_scalar(f"final/{name}", value, summary.get("evaluations", 0))
        self._writer.close()


class MLflowLogger(RunCallback):
    """An MLflow run: the resolved config as parameters, the best fitness per generation
    as a metric, the final figures as metrics and ``summary.json`` as an artifact.
    ``tracking_uri`` defaults to MLflow's own default (``MLFLOW_TRACKING_URI``)."""

    def __init__(
        self,
        experiment: str = "searchprune",
        tracking_uri: str | None = None,
        run_name: str | None = None,
    ) -> None:
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow-skinny", "mlflow") from None
        self._mlflow = mlflow
        self.experiment, self.tracking_uri, self.run_name = experiment, tracking_uri, run_name
        self.run_id: str | None = None

    def on_start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        if self.tracking_uri:
            self._mlflow.set_tracking_uri(self.tracking_uri)
        self._mlflow.set_experiment(self.experiment)
        run = self._mlflow.start_run(run_name=self.run_name or run_dir.name)
        self.run_id = run.info.run_id
        params = {k: json.dumps(v) for k, v in _flatten(config).items()}
        self._mlflow.log_params({k: v[:500] for k, v in params.items()})

    def on_generation(self, evaluations: int, best_fitness: float, rows: Sequence[Row]) -> None:
        self._mlflow.log_metric("best_fitness", best_fitness, step=evaluations)

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        self._mlflow.log_metrics(summary_metrics(summary))
        self._mlflow.log_dict(dict(summary), "summary.json")
        self._mlflow.end_run()


LOGGERS: Registry[type[RunCallback]] = Registry("logger", "tracking")
LOGGERS.add("tensorboard", TensorBoardLogger, "TensorBoard scalars (torch.utils.tensorboard)")
LOGGERS.add("mlflow", MLflowLogger, "an MLflow run: config, best fitness, final figures")


def make_loggers(specs: Sequence[str | Mapping[str, Any]]) -> list[RunCallback]:
    """The loggers a config's ``tracking`` list names (``"tensorboard"`` or
    ``{"name": "mlflow", "experiment": "pruning"}``).

    :raises SpecError: naming ``tracking`` for an unknown logger, a wrong option, or a
        logger whose package is not installed.
    """
    loggers = []
    for spec in specs:
        options = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise SpecError(f"tracking: {spec!r} needs a name, e.g. {{name: tensorboard}}")
        cls = LOGGERS.get(name)
        try:
            loggers.append(cls(**options))
        except TypeError as error:
            raise SpecError(
                f"tracking: logger {name!r} does not take these options ({error})"
            ) from None
    return loggers


class Callbacks(RunCallback):
    """Several callbacks told in turn."""

    def __init__(self, callbacks: Sequence[RunCallback]) -> None:
        self.callbacks = list(callbacks)

    def on_start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        for callback in self.callbacks:
            callback.on_start(config, run_dir)

    def on_evaluation(self, row: Row) -> None:
        for callback in self.callbacks:
            callback.on_evaluation(row)

    def on_generation(self, evaluations: int, best_fitness: float, rows: Sequence[Row]) -> None:
        for callback in self.callbacks:
            callback.on_generation(evaluations, best_fitness, rows)

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_finish(summary)
