"""DVC stage `train`: train the `model.name` network with Ray Train (core/training/trainer.py).

    python -m stages.train          # params.yaml; RAY_ADDRESS / MLFLOW_TRACKING_URI optional
"""
from __future__ import annotations

import json
import sys

from core.env import apply_embedded_defaults
from core.errors import UserError
from core.params import load_params
from core.training.trainer import run
from core.workspace import Workspace
from models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    apply_embedded_defaults()
    try:
        params = load_params()
        summary = run(params, Workspace.at(data_root=params.data.root))
    except (UserError, ConfigError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
