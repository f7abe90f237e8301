"""DVC stage `embeddings`: label word vectors Z (C x d), the ELD graph's nodes (core/graph/embeddings.py).

    python -m stages.embeddings              # reads data/labels.json and params.yaml `embeddings`
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from core.errors import UserError
from core.graph.embeddings import run
from core.params import DEFAULT_PARAMS, load_params
from core.workspace import DEFAULT_WORKSPACE
from models.config import ConfigError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.embeddings", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--labels", type=Path, default=DEFAULT_WORKSPACE.labels_json)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_WORKSPACE.graph_dir)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        summary = run(params.embeddings, args.labels, args.out_dir, seed=params.seed)
    except (UserError, ConfigError) as exc:
        print(f"embeddings: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"embeddings: {summary['shape'][0]} labels x {summary['shape'][1]}-d from "
          f"{summary['source']} in {summary['seconds']} s -> {args.out_dir}")
    for word, (handling, replaced_by) in summary["oov"].items():
        print(f"embeddings: out-of-vocabulary {word!r}: {handling}"
              + (f" -> {', '.join(replaced_by)}" if replaced_by else ""))


if __name__ == "__main__":
    main()
