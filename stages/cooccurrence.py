"""DVC stage `cooccurrence`: P(label j | label i) on the training split (core/graph/cooccurrence.py).

    python -m stages.cooccurrence            # reads data/manifest/train.parquet, data/labels.json
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from core.errors import UserError
from core.graph.cooccurrence import run
from core.workspace import DEFAULT_WORKSPACE


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.cooccurrence", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest-dir", type=Path, default=DEFAULT_WORKSPACE.manifest_dir)
    parser.add_argument("--labels", type=Path, default=DEFAULT_WORKSPACE.labels_json)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_WORKSPACE.graph_dir)
    args = parser.parse_args(argv)
    try:
        summary = run(args.manifest_dir, args.labels, args.out_dir)
    except UserError as exc:
        raise SystemExit(f"cooccurrence: {exc}") from None
    print(f"cooccurrence: {summary['n_persons']} training persons, {summary['n_classes']} classes, "
          f"{summary['nonzero_pairs']} non-zero pairs -> {args.out_dir}")
    if summary["zero_count_classes"]:
        print("cooccurrence: classes no training person carries (rows of zeros): "
              + ", ".join(summary["zero_count_classes"]))


if __name__ == "__main__":
    main()
