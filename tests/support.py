"""What many tests share: the repository they run in, its params.yaml, an MLflow store of their own.

Tests that need a config build it from params.yaml (`dataclasses.replace(repo_params().data,
root=...)`): the typed configs have no defaults in code. Fixtures built on these live in conftest.py.
"""
from __future__ import annotations

import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def repo_params():
    from core.params import load_params

    return load_params(REPO / "params.yaml")


def use_mlflow_store(patch, folder: Path) -> str:
    """Point MLflow (tracking, and new experiments' artifacts) at a SQLite store in `folder`.

    `patch` is a pytest MonkeyPatch, so the variables go back when the test or fixture ends.
    """
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("CTXEMO_MLFLOW_ARTIFACT_ROOT", (folder / "mlartifacts").as_uri())
    return uri
