"""Process-wide defaults for the embedded stack, applied before Ray/Prefect/DVC/MLflow load.

Only defaults: anything the user exported wins (os.environ.setdefault). Endpoints and
credentials are never set here; they come from the user's environment.
"""
from __future__ import annotations

import os

EMBEDDED_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_embedded_defaults() -> None:
    for key, value in EMBEDDED_DEFAULTS.items():
        os.environ.setdefault(key, value)
