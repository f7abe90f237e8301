"""DVC stage `compare_report`: the table of every compare.models branch (core/comparison.py).

    python -m stages.compare_report    # reads reports/compare/*.json; writes reports/compare.{md,json}
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.comparison import build_table, log_table
from core.env import apply_embedded_defaults
from core.errors import UserError
from core.params import load_params
from core.workspace import Workspace
from models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    apply_embedded_defaults()
    try:
        params = load_params()
        paths = Workspace.at(data_root=params.data.root)
        build_table(params, paths)
        log_table(params, paths)
    except (UserError, ConfigError) as exc:
        print(f"compare_report: error: {exc}", file=sys.stderr)
        return 2
    print(Path(paths.compare_table).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
