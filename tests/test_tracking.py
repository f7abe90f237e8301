"""Where the embedded MLflow store puts artifacts: `mlartifacts/` in the workspace, as documented (#18, item 12)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import tracking


@pytest.fixture
def fresh_workspace(tmp_path, monkeypatch):
    """A workspace with no MLflow variables set, as after `make demo` on a clean machine."""
    for name in ("MLFLOW_TRACKING_URI", "CTXEMO_MLFLOW_ARTIFACT_ROOT", "CTXEMO_S3_BUCKET", "CTXEMO_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    # mlflow.set_tracking_uri exported it: later tests must not inherit this test's store
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _log_one_artifact(workspace: Path, experiment_id: str) -> Path:
    import mlflow

    (workspace / "note.txt").write_text("hello")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(workspace / "note.txt"))
    return Path(run.info.artifact_uri.removeprefix("file://")) / "note.txt"


def test_the_embedded_store_keeps_artifacts_in_mlartifacts(fresh_workspace):
    import mlflow

    experiment_id = tracking.setup(fresh_workspace)
    assert mlflow.get_experiment(experiment_id).artifact_location == (fresh_workspace / "mlartifacts").as_uri()
    logged = _log_one_artifact(fresh_workspace, experiment_id)
    assert logged.is_file() and logged.is_relative_to(fresh_workspace / "mlartifacts")
    assert not (fresh_workspace / "mlruns").exists()


def test_a_second_experiment_in_the_same_process_also_goes_to_mlartifacts(fresh_workspace):
    import mlflow

    tracking.setup(fresh_workspace)  # exports MLFLOW_TRACKING_URI (MLflow 3)
    assert os.environ.get("MLFLOW_TRACKING_URI") == tracking.embedded_tracking_uri(fresh_workspace)
    other = tracking.setup(fresh_workspace, experiment="ctxemo-other")
    assert mlflow.get_experiment(other).artifact_location == (fresh_workspace / "mlartifacts").as_uri()
    assert tracking.artifact_location(fresh_workspace) == (fresh_workspace / "mlartifacts").as_uri()


def test_a_tracking_server_still_decides_its_artifact_root(fresh_workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.artifact_location(fresh_workspace) is None
    monkeypatch.setenv("CTXEMO_MLFLOW_ARTIFACT_ROOT", "s3://bucket/mlflow")
    assert tracking.artifact_location(fresh_workspace) == "s3://bucket/mlflow"
