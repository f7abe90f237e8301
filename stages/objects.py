"""DVC stage `objects`: top-N object boxes and 2048-d RoI features per target person (core/features/).

    python -m stages.objects                       # all splits; objects.engine (auto: Ray Data where it pays)
    python -m stages.objects --splits val --engine local   # one split, plain in-process loop
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from core.data.manifest import SPLITS
from core.errors import UserError
from core.features.objects import run
from core.params import DEFAULT_PARAMS, load_params
from core.workspace import DEFAULT_WORKSPACE
from models.config import ConfigError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.objects", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--manifest-dir", type=Path, default=DEFAULT_WORKSPACE.manifest_dir)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_WORKSPACE.objects_dir)
    parser.add_argument("--engine", choices=("auto", "ray", "local"), default="auto",
                        help="auto: objects.engine in params.yaml")
    parser.add_argument("--limit-shards", type=int, default=None,
                        help="compute at most this many shards, then stop (a later run resumes)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        summary = run(params, args.splits, args.out_dir, args.limit_shards, manifest_dir=args.manifest_dir,
                      engine=args.engine)
    except (UserError, ConfigError) as exc:
        print(f"objects: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for split, entry in summary["splits"].items():
        if entry["complete"]:
            print(f"objects: {split}: {entry['persons']} persons, {entry['objects']} objects "
                  f"(mean {entry['mean_count']:.2f}/person), {entry['unreadable_images']} unreadable images, "
                  f"shards computed {len(entry['computed'])} reused {len(entry['reused'])} -> {args.out_dir / split}")
        else:
            print(f"objects: {split}: incomplete ({len(entry['computed']) + len(entry['reused'])}/{entry['shards']} "
                  f"shards); run again to resume")
    writers = summary["execution"].get("shards_written_by", {})
    if writers:
        print("objects: shards written by " + ", ".join(f"{who} ({count})" for who, count in writers.items()))
    print(f"objects: done in {summary['seconds']:.1f}s")


if __name__ == "__main__":
    main()
