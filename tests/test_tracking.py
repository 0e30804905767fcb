"""Tracking: TensorBoard and MLflow loggers with the real packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchprune.tracking import LOGGERS, MLflowLogger, TensorBoardLogger, summary_metrics

SUMMARY = {
    "evaluations": 4,
    "dense": {"val_accuracy": 0.97, "test_accuracy": 0.96},
    "best": {"val_fitness": 0.8, "test_accuracy": 0.79, "finetuned": {"test_accuracy": 0.9}},
    "baselines": {"magnitude-global": {"test_accuracy": 0.7, "sparsity": 0.9}},
}
ROWS = [{"eval": i, "fitness": f, "best": max([0.5, 0.7, 0.6, 0.8][: i + 1])}
        for i, f in enumerate([0.5, 0.7, 0.6, 0.8])]


def _drive(logger: TensorBoardLogger | MLflowLogger, run_dir: Path) -> None:
    logger.on_start({"task": "digits-mlp", "searcher": {"name": "ga", "population": 2}}, run_dir)
    for start in (0, 2):
        batch = ROWS[start : start + 2]
        for row in batch:
            logger.on_evaluation(row)
        logger.on_generation(start + 2, batch[-1]["best"], batch)
    logger.on_finish(SUMMARY)


def test_summary_metrics_flatten_every_number() -> None:
    metrics = summary_metrics(SUMMARY)
    assert metrics["best.finetuned.test_accuracy"] == 0.9
    assert metrics["baselines.magnitude-global.sparsity"] == 0.9
    assert "evaluations" not in metrics and len(metrics) == 7


def test_tensorboard_logger_writes_what_tensorboard_reads(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _drive(TensorBoardLogger(), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("fitness")] == pytest.approx([0.5, 0.7, 0.6, 0.8])
    best = events.Scalars("best_fitness")
    assert [e.step for e in best] == [2, 4]
    assert [e.value for e in best] == pytest.approx([0.7, 0.8])
    assert events.Scalars("final/best.test_accuracy")[0].value == pytest.approx(0.79)


def test_mlflow_logger_records_params_metrics_and_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    # a local file store: mlflow-skinny has no database backend, and a server is not needed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLflowLogger(experiment="tests", tracking_uri=uri)
    _drive(logger, tmp_path / "run-a")
    client = MlflowClient(uri)
    assert logger.run_id is not None
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "run-a"
    assert run.data.params["searcher.population"] == "2"
    assert run.data.metrics["best.test_accuracy"] == pytest.approx(0.79)
    history = client.get_metric_history(logger.run_id, "best_fitness")
    assert [m.step for m in history] == [2, 4]
    assert [m.value for m in history] == pytest.approx([0.7, 0.8])
    assert "summary.json" in [f.path for f in client.list_artifacts(logger.run_id)]


def test_loggers_are_registered_by_name() -> None:
    assert LOGGERS.names() == ["mlflow", "tensorboard"]
