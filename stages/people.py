"""DVC stage `people`: a person detector trained on the train split's boxes, run on val and test
(core/detection/person_detector.py), scored with COCO AP against random boxes.

    python -m stages.people                  # reads data/manifest/{train,val,test}.parquet, params.yaml
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.detection.person_detector import run
from core.errors import UserError
from core.params import DEFAULT_PARAMS, load_params
from core.workspace import DEFAULT_WORKSPACE
from models.config import ConfigError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.people", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest-dir", type=Path, default=DEFAULT_WORKSPACE.manifest_dir)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_WORKSPACE.people_dir)
    parser.add_argument("--report", type=Path, default=DEFAULT_WORKSPACE.people_report)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        summary = run(params.people, params.seed, Path(params.data.root), args.manifest_dir, args.out_dir,
                      args.report, log=lambda line: print(line, flush=True))  # progress shows under dvc repro
    except (UserError, ConfigError) as exc:
        print(f"people: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    training = summary["train"]
    print(f"people [{summary['detector']} from {summary['starting_weights']['name']}] train: "
          f"{training['images']} images, {training['persons']} persons, {training['epochs']} epochs, "
          f"loss {training['loss_first_epoch']:.3f} -> {training['loss_last_epoch']:.3f} "
          f"({training['seconds']} s, {training['images_per_second']} images/s)")
    for split, figures in summary.items():
        if not isinstance(figures, dict) or "random" not in figures:
            continue
        det, chance = figures["detector"], figures["random"]
        print(f"people {split}: AP {det['AP']:.3f} AP50 {det['AP50']:.3f} AR100 {det['AR100']:.3f} "
              f"({det['num_detections']} boxes for {det['num_persons']} persons in {det['num_images']} images); "
              f"random boxes AP {chance['AP']:.3f} AP50 {chance['AP50']:.3f} "
              f"({figures['seconds']} s, {figures['images_per_second']} images/s)")
    for split, lines in summary["unreadable"].items():
        for line in lines[:10]:
            print(f"people {split}: unreadable image {line}")
        if len(lines) > 10:
            print(f"people {split}: ... {len(lines) - 10} more unreadable images")


if __name__ == "__main__":
    main()
