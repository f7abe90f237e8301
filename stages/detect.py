"""DVC stage `detect`: the face of every target person in the manifest (core/detection/faces.py).

    python -m stages.detect                  # reads data/manifest/{train,val,test}.parquet, params.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from core.detection.faces import STATUS_NO_FACE, STATUS_OK, STATUS_UNREADABLE, run
from core.errors import UserError
from core.params import DEFAULT_PARAMS, load_params
from core.workspace import DEFAULT_WORKSPACE
from models.config import ConfigError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.detect", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest-dir", type=Path, default=DEFAULT_WORKSPACE.manifest_dir)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_WORKSPACE.detections_dir)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        summary = run(params.detect, Path(params.data.root), args.manifest_dir, args.out_dir)
    except (UserError, ConfigError) as exc:
        print(f"detect: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for split, counts in summary["splits"].items():
        print(f"detect [{summary['detector']}] {split}: {counts['persons']} persons in "
              f"{counts['images']} images: faces found {counts[STATUS_OK]}, none {counts[STATUS_NO_FACE]}, "
              f"unreadable {counts[STATUS_UNREADABLE]} ({counts['seconds']} s, "
              f"{'Ray Data' if counts['ray'] else 'in-process'}: {counts['engine_reason']})")
        for line in counts["unreadable_images"][:10]:
            print(f"detect {split}: unreadable image {line}")
        if len(counts["unreadable_images"]) > 10:
            print(f"detect {split}: ... {len(counts['unreadable_images']) - 10} more unreadable images")


if __name__ == "__main__":
    main()
