"""Shared test set-up: the embedded stack's environment, the repository's params.yaml and
the fixture files (small excerpts in tests/fixtures; whole files in ../shared, optional)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from s3_fixture import s3_server, s3_settings  # noqa: F401  (one S3 server for the session, shared by every module)
from support import REPO

from core.env import apply_embedded_defaults

FIXTURES = REPO / "tests" / "fixtures"
# Whole data files too large for the repository (the real EMOTIC val annotations, the CAER-S
# test face boxes) sit beside the checkout in ../shared/fixtures, or wherever
# CTXEMO_SHARED_FIXTURES points. They are optional: a clone placed anywhere runs the tests on
# the excerpts in FIXTURES, and the tests that need a whole file skip (see shared_fixture).
SHARED_FIXTURES = Path(os.environ.get("CTXEMO_SHARED_FIXTURES") or REPO.parent / "shared" / "fixtures")

apply_embedded_defaults()
# The suite runs on the embedded stack only: a user's real endpoints must never receive test runs.
for _variable in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "CTXEMO_MLFLOW_ARTIFACT_ROOT", "CTXEMO_S3_BUCKET",
                  "PREFECT_API_URL", "CTXEMO_RUN_NAME"):
    os.environ.pop(_variable, None)
# Fault plans (core/faults.py) reach Ray workers, Prefect tasks and stage subprocesses through the
# environment, which Ray workers inherit when Ray starts: name the plan file before any test starts
# Ray; a test writes the plan itself with `faults.inject(...)`. No plan file, no fault.
os.environ["CTXEMO_FAULTS"] = str(Path(tempfile.mkdtemp(prefix="ctxemo-faults-")) / "plan.json")


def shared_fixture(name: str) -> Path:
    """The whole fixture file `name` in SHARED_FIXTURES; skips the calling test when it is absent."""
    path = SHARED_FIXTURES / name
    if not path.is_file():
        pytest.skip(f"needs the whole fixture file {path}, which is absent (set CTXEMO_SHARED_FIXTURES "
                    f"to the folder that holds {name}); the excerpts in tests/fixtures cover the rest")
    return path


@pytest.fixture
def repo_params_dict():
    from core.params import read_yaml

    return read_yaml(REPO / "params.yaml")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A test's own MLflow store; returns its tracking URI."""
    from support import use_mlflow_store

    return use_mlflow_store(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """Generated data run through ingest, objects, cooccurrence and embeddings (tests/tiny_pipeline.py)."""
    import tiny_pipeline

    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray cluster for the session's Ray tests (2 CPUs, no dashboard)."""
    import ray

    from core.ray_utils import init_ray

    started = init_ray(num_cpus=2, object_store_memory=300 * 1024**2)
    yield
    if started:
        ray.shutdown()
