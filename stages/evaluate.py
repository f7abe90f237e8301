"""DVC stage `evaluate`: thresholds on val, metrics and plots on test (core/evaluation/evaluate.py).

    python -m stages.evaluate       # params.yaml; reads artifacts/model, writes reports/
"""
from __future__ import annotations

import sys

from core.env import apply_embedded_defaults
from core.errors import UserError
from core.evaluation.evaluate import run
from core.evaluation.report import print_metrics_table
from core.params import load_params
from core.workspace import Workspace
from models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    apply_embedded_defaults()
    try:
        params = load_params()
        results = run(Workspace.at(data_root=params.data.root), batch_size=params.for_model().train.batch_size)
    except (UserError, ConfigError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    print_metrics_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
