"""The one module that reads environment variables.

Endpoints, credentials and process-wide switches come from the environment (never from
params.yaml, never from code); everything else in ctxemo asks this module. The variables:

| variable | read by | meaning |
|---|---|---|
| RAY_ADDRESS | `ray_address()` | join this Ray cluster instead of starting an embedded one |
| MLFLOW_TRACKING_URI | `mlflow_tracking_uri()` | MLflow server; unset: SQLite `mlflow.db` in the workspace |
| CTXEMO_MLFLOW_ARTIFACT_ROOT | `mlflow_artifact_root()` | where new experiments keep artifacts |
| CTXEMO_MLFLOW_EXPERIMENT | `mlflow_experiment()` | experiment name (default `ctxemo`) |
| CTXEMO_RUN_NAME | `run_name_to_resume()` | a Ray Train run name to resume (resubmitted cluster jobs) |
| CTXEMO_S3_BUCKET, CTXEMO_S3_PREFIX, AWS_ENDPOINT_URL(_S3), AWS_REGION, ... | `storage_environment()` | S3 storage, parsed and checked by core/storage.py |
| CTXEMO_FAULTS | core/faults.py through `faults_plan_file()` | tests only: a fault-injection plan |
| CTXEMO_PROGRESS | `progress_mode()` | `bar` or `plain`: how core/progress.py shows progress (default: a bar on a terminal) |

`apply_embedded_defaults()` sets process-wide defaults for the embedded stack (telemetry off,
Ray's token authentication said explicitly);
it only fills what the user has not exported, and is called by entry points (the CLI, the
stages), never at import time.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping

EMBEDDED_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
DEFAULT_EXPERIMENT = "ctxemo"


def apply_embedded_defaults() -> None:
    for key, value in EMBEDDED_DEFAULTS.items():
        os.environ.setdefault(key, value)
    embedded_ray_auth()


def embedded_ray_auth() -> None:
    """RAY_AUTH_MODE=token for the embedded cluster (none when RAY_ADDRESS joins a cluster).

    Token authentication is what Ray turns on anyway for a new local cluster; said explicitly,
    Ray skips its start-up warning about having turned it on. Ray reads the variable when it is
    imported, so entry points set it first thing (core/ray_utils.py too, if ray is not imported).
    """
    if not ray_address():
        set_default("RAY_AUTH_MODE", "token")


def set_default(name: str, value: str) -> None:
    """Set `name` for this process and its children unless the user exported it."""
    os.environ.setdefault(name, value)


def _get(name: str) -> str | None:
    return os.environ.get(name) or None


def ray_address() -> str | None:
    return _get("RAY_ADDRESS")


def mlflow_tracking_uri() -> str | None:
    return _get("MLFLOW_TRACKING_URI")


def mlflow_artifact_root() -> str | None:
    return _get("CTXEMO_MLFLOW_ARTIFACT_ROOT")


def mlflow_experiment() -> str:
    return _get("CTXEMO_MLFLOW_EXPERIMENT") or DEFAULT_EXPERIMENT


def run_name_to_resume() -> str | None:
    return _get("CTXEMO_RUN_NAME")


def faults_plan_file() -> str | None:
    return _get("CTXEMO_FAULTS")


PROGRESS_MODES = ("bar", "plain")


def progress_mode() -> str | None:
    """`bar` or `plain` when CTXEMO_PROGRESS says so; None (decide by the stream) for anything else."""
    value = (_get("CTXEMO_PROGRESS") or "").strip().lower()
    return value if value in PROGRESS_MODES else None


def storage_environment() -> Mapping[str, str]:
    """The live environment, for core/storage.py to parse its S3 variables from."""
    return os.environ


def current() -> dict[str, str]:
    """A copy of the whole environment (for subprocesses that get it plus a few changes)."""
    return dict(os.environ)


def with_path_first(directory: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with `directory` first on PATH (so `python` there is the one that runs)."""
    env = dict(os.environ if environ is None else environ)
    env["PATH"] = os.pathsep.join([str(directory), env.get("PATH", "")])
    return env


@contextlib.contextmanager
def temporarily(env: Mapping[str, str]) -> Iterator[None]:
    """Run a block with `env` added to this process's environment; restore it afterwards."""
    previous = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(previous)
