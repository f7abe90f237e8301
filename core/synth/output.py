"""The output directory of the generated demo data set and the public entry `generate`:
argument checks, a staging directory and the swap that publishes it, so that a killed run
never leaves half a data set and an existing folder is replaced only when it is an earlier
generated set.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.data.labels import CAERS_CLASSES
from core.errors import UserError
from core.synth.caers import generate_caers
from core.synth.emotic import generate_emotic

FORMATS = ("emotic", "caers")
KNOWN_OUTPUTS = {"images", "train", "test", "Annotations.mat", "annotations_train.csv", "annotations_val.csv",
                 "annotations_test.csv", "object_boxes.csv", "face_boxes.txt", "synth_meta.json",
                 "synth_truth.jsonl"}


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.resolve() == Path(out_dir.resolve().anchor):
        raise UserError(f"synth: --out {out_dir} is a filesystem root; give a directory for the data set")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"synth: --out {out_dir} exists and is not a directory")
    if out_dir.is_dir():
        entries = {p.name for p in out_dir.iterdir()}
        if entries and ("synth_meta.json" not in entries or not entries <= KNOWN_OUTPUTS):
            raise UserError(f"synth: --out {out_dir} is not empty and is not a generated data set "
                            f"(found {sorted(entries)[:5]}); choose an empty or new directory")


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging directory in, so a killed run never leaves half a data set."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _validate(images: int, seed: int, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"synth: unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)):
        raise UserError(f"synth: --images must be an integer, got {images!r}")
    minimum = 3 if fmt == "emotic" else 2 * len(CAERS_CLASSES)
    if images < minimum:
        raise UserError(f"synth: --images {images} is too small for format {fmt}: at least {minimum} "
                        f"(one image per split{' and class' if fmt == 'caers' else ''})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"synth: --seed must be a non-negative integer, got {seed!r}")


def generate(out_dir: Path, images: int, seed: int, fmt: str = "emotic") -> dict[str, Any]:
    """Write a generated data set of `images` images under `out_dir`; return a summary.

    The same (images, seed, fmt) gives byte-identical files. An existing `out_dir` must be
    empty or an earlier generated data set (it is replaced).
    """
    _validate(images, seed, fmt)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.synth-partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if fmt == "emotic":
            summary = generate_emotic(staging, int(images), int(seed))
        else:
            summary = generate_caers(staging, int(images), int(seed))
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["out_dir"] = str(out_dir)
    return summary
