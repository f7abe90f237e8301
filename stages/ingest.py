"""DVC stage `ingest`: raw data set -> the manifest contract (core/data/ingest.py says what is checked).

    python -m stages.ingest [--params params.yaml] [--out data] [--metrics reports/ingest.json]

Prints the counts, and a warning line for persons in more than one split with different
labels. Input it cannot make a usable manifest of (a wrong path, no valid row, an empty
split) prints one line `ingest: error: ...` and exits 2, writing nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.data.ingest import ingest_metrics, report_lines, run, write_json
from core.errors import UserError
from core.params import DEFAULT_PARAMS, load_params
from core.workspace import DEFAULT_WORKSPACE
from models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default params.yaml)")
    parser.add_argument("--out", default=str(DEFAULT_WORKSPACE.manifest_dir.parent),
                        help="output folder (default data)")
    parser.add_argument("--metrics", default=str(DEFAULT_WORKSPACE.ingest_metrics),
                        help=f"the counts as DVC metrics (default {DEFAULT_WORKSPACE.ingest_metrics})")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        summary = run(params.data, params.seed, Path(args.out))
    except (UserError, ConfigError) as exc:
        print(f"ingest: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    write_json(ingest_metrics(summary), Path(args.metrics))
    for line in report_lines(summary):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
