"""MLflow wiring shared by train, evaluate, the registry and the sweep.

Embedded default: a SQLite store under the workspace (`mlflow.db`, artifacts in
`mlartifacts/`). `MLFLOW_TRACKING_URI` (and, for artifacts on S3, the usual
`MLFLOW_S3_ENDPOINT_URL` / AWS variables) points at a real server instead.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

from core import env


def tracking_uri(workspace: Path | None = None) -> str:
    uri = env.mlflow_tracking_uri()
    if uri:
        return uri
    return embedded_tracking_uri(workspace)


def embedded_tracking_uri(workspace: Path | None = None) -> str:
    """The workspace's own SQLite store, used when MLFLOW_TRACKING_URI is not set."""
    return f"sqlite:///{(workspace or Path.cwd()).resolve() / 'mlflow.db'}"


def artifact_location(workspace: Path | None = None) -> str | None:
    """Where a new experiment keeps artifacts.

    CTXEMO_MLFLOW_ARTIFACT_ROOT wins; with a tracking server and nothing set, the server
    decides (None); locally, the S3 bucket when CTXEMO_S3_BUCKET is set, else `mlartifacts/`.

    "Locally" includes MLFLOW_TRACKING_URI naming the embedded store itself: MLflow 3's
    `set_tracking_uri` exports the variable, so after `setup` it is always set in this process
    and its children, and taking that for a server left artifacts in MLflow's `./mlruns`.
    """
    explicit = env.mlflow_artifact_root()
    if explicit:
        return explicit
    uri = env.mlflow_tracking_uri()
    if uri and uri != embedded_tracking_uri(workspace):
        return None
    from core.storage import StorageSettings

    on_s3 = StorageSettings.from_env().mlflow_artifact_root()
    return on_s3 or ((workspace or Path.cwd()).resolve() / "mlartifacts").as_uri()


def setup(workspace: Path | None = None, experiment: str | None = None) -> str:
    """Point mlflow at the store and make sure the experiment exists; returns its id.

    The artifact location is decided before `set_tracking_uri`, which exports MLFLOW_TRACKING_URI.
    """
    import mlflow

    experiment = experiment or env.mlflow_experiment()
    location = artifact_location(workspace)
    mlflow.set_tracking_uri(tracking_uri(workspace))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(experiment, artifact_location=location)


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten(value, path)
        else:
            yield path, value


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
