"""DVC stage `compare@<model>`: train and evaluate one model of compare.models (core/comparison.py).

    python -m stages.compare kosti     # params.yaml; writes artifacts/compare/kosti/, reports/compare/kosti.json
"""
from __future__ import annotations

import json
import sys

from core.comparison import run_branch
from core.env import apply_embedded_defaults
from core.errors import UserError
from core.params import load_params
from core.workspace import Workspace
from models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m stages.compare MODEL   (a name in compare.models)", file=sys.stderr)
        return 2
    apply_embedded_defaults()
    try:
        params = load_params()
        row = run_branch(params, argv[0], Workspace.at(data_root=params.data.root))
    except (UserError, ConfigError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
