"""Finished work on disk: one .npz per shard plus a .done.json marker holding its fingerprint.

A marker is written only after its data file is complete (both by atomic rename), so a marker with
the expected fingerprint always means a shard that can be reused; anything else is recomputed.
The process that computed a shard writes it (core/features/worker.py ShardWorker), the moment it
is done, so an interrupted run keeps every finished shard.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.features.inputs import ShardPlan

ARRAY_NAMES = ("features", "boxes", "scores", "classes", "counts")


def shard_paths(shard_dir: Path, index: int) -> tuple[Path, Path]:
    return shard_dir / f"part-{index:05d}.npz", shard_dir / f"part-{index:05d}.done.json"


def shard_is_done(shard_dir: Path, plan: ShardPlan) -> bool:
    data_path, marker = shard_paths(shard_dir, plan.index)
    if not (data_path.is_file() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == plan.fingerprint
    except (json.JSONDecodeError, OSError):
        return False


def write_shard(shard_dir: Path, plan: ShardPlan, rows: dict[str, np.ndarray], seconds: float) -> None:
    """Data first (atomic rename), then the marker: a marker always means a complete shard."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    data_path, marker = shard_paths(shard_dir, plan.index)
    tmp = data_path.with_name(data_path.name + ".tmp")
    arrays = {name: rows[name] for name in ARRAY_NAMES}
    with tmp.open("wb") as fh:
        np.savez(fh, sample_id=rows["sample_id"].astype(str), status=rows["status"].astype(str),
                 reason=rows["reason"].astype(str), **arrays)
    tmp.replace(data_path)
    marker_tmp = marker.with_name(marker.name + ".tmp")
    marker_tmp.write_text(json.dumps({"fingerprint": plan.fingerprint, "images": len(plan.frame),
                                      "persons": plan.n_persons, "seconds": round(seconds, 3)}))
    marker_tmp.replace(marker)


def fp16_steps_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float16 steps at the scale of each vector (the step float16 has at the largest
    magnitude along the last axis): what one rounding of the vector to float16 may move an element.

    Two runs that computed with different thread counts sum in another order: their float32 results
    differ by a rounding error relative to the vector's scale, which the float16 they are stored in
    then shows as at most one step here. Counted per element instead, a value near zero in a vector
    of magnitude 40 is several float16 steps away for the same error (measured: 3)."""
    a32, b32 = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    scale = np.maximum(np.abs(a32), np.abs(b32)).max(axis=-1, keepdims=True)
    step = np.spacing(scale.astype(np.float16)).astype(np.float32)  # zero vectors: the smallest subnormal
    return np.abs(a32 - b32) / step
