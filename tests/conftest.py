"""Shared test set-up: the embedded stack's environment and the repository's params.yaml."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


@pytest.fixture
def repo_params_dict():
    from stages.params import read_yaml

    return read_yaml(REPO / "params.yaml")


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """Generated data run through ingest, objects, cooccurrence and embeddings (tests/tiny_pipeline.py)."""
    import tiny_pipeline

    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray cluster for the session's Ray tests (2 CPUs, no dashboard)."""
    import ray

    from stages.ray_utils import init_ray

    started = init_ray(num_cpus=2, object_store_memory=300 * 1024**2)
    yield
    if started:
        ray.shutdown()
