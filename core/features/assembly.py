"""Finished shards -> one split's memory-mappable arrays, index.parquet and meta.json.

Rows follow the manifest order whatever order the shards were computed in, so a resumed run and
an uninterrupted one write identical files. meta.json is written last, by atomic rename: readers
(core/data/object_store.py) take its presence to mean the split is complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.features.extractor import STATUS_OK, STATUS_UNREADABLE
from core.features.inputs import ShardPlan
from core.features.roi_model import FEATURE_DIM
from core.features.shards import ARRAY_NAMES, shard_paths


def _array_shapes(n: int, top_n: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {"features": ((n, top_n, FEATURE_DIM), np.float16), "boxes": ((n, top_n, 4), np.float32),
            "scores": ((n, top_n), np.float32), "classes": ((n, top_n), np.int16), "counts": ((n,), np.int32)}


def _fill_arrays(split: str, manifest: pd.DataFrame, plans: Sequence[ShardPlan], shard_dir: Path,
                 split_out: Path, top_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the .npy arrays from the shards; returns (counts, status, reason) per manifest row."""
    n = len(manifest)
    row_of = {sid: i for i, sid in enumerate(manifest["sample_id"])}
    arrays = {name: np.lib.format.open_memmap(split_out / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
              for name, (shape, dtype) in _array_shapes(n, top_n).items()}
    status = np.full(n, "", dtype=object)
    reason = np.full(n, "", dtype=object)
    for plan in plans:
        with np.load(shard_paths(shard_dir, plan.index)[0], allow_pickle=False) as part:
            rows = np.array([row_of[s] for s in part["sample_id"]], dtype=np.int64)
            for name in ARRAY_NAMES:
                arrays[name][rows] = part[name]
            status[rows], reason[rows] = part["status"], part["reason"]
    missing = np.flatnonzero(status == "")
    if len(missing):
        raise RuntimeError(f"objects {split}: no result for {len(missing)} persons, e.g. "
                           f"{manifest['sample_id'].iloc[missing[0]]!r}")
    counts = np.array(arrays["counts"])
    for array in arrays.values():
        array.flush()
    return counts, status, reason


def _write_index(manifest: pd.DataFrame, counts: np.ndarray, status: np.ndarray, reason: np.ndarray,
                 path: Path) -> None:
    pq.write_table(pa.table({
        "sample_id": pa.array(manifest["sample_id"].astype(str).tolist(), pa.string()),
        "row": pa.array(np.arange(len(manifest)), pa.int64()),
        "image_path": pa.array(manifest["image_path"].astype(str).tolist(), pa.string()),
        "count": pa.array(counts, pa.int32()),
        "status": pa.array(status.astype(str).tolist(), pa.string()),
        "reason": pa.array(reason.astype(str).tolist(), pa.string()),
    }), path)


def _unreadable_images(manifest: pd.DataFrame, status: np.ndarray, reason: np.ndarray) -> list[dict[str, Any]]:
    """One entry per unreadable image with the persons it leaves without objects."""
    unreadable: dict[str, dict[str, Any]] = {}
    for i in np.flatnonzero(status == STATUS_UNREADABLE):
        image_path = str(manifest["image_path"].iloc[i])
        entry = unreadable.setdefault(image_path, {"image_path": image_path, "reason": str(reason[i]),
                                                   "sample_ids": []})
        entry["sample_ids"].append(str(manifest["sample_id"].iloc[i]))
    return list(unreadable.values())


def assemble_split(split: str, manifest: pd.DataFrame, plans: Sequence[ShardPlan], shard_dir: Path,
                   split_out: Path, top_n: int, meta_common: dict[str, Any]) -> dict[str, Any]:
    """Shards -> memory-mappable arrays in manifest order; meta.json last (it marks completeness)."""
    split_out.mkdir(parents=True, exist_ok=True)
    (split_out / "meta.json").unlink(missing_ok=True)
    n = len(manifest)
    counts, status, reason = _fill_arrays(split, manifest, plans, shard_dir, split_out, top_n)
    _write_index(manifest, counts, status, reason, split_out / "index.parquet")
    meta = {
        **meta_common,
        "split": split,
        "samples": n,
        "images": int(manifest["image_path"].nunique()),
        "arrays": {name: {"shape": list(shape), "dtype": np.dtype(dtype).name}
                   for name, (shape, dtype) in _array_shapes(n, top_n).items()},
        "counts": {
            "objects": int(counts.sum()),
            "mean": float(counts.mean()) if n else 0.0,
            "persons_without_objects": int((counts == 0).sum()),
            "histogram": np.bincount(counts, minlength=top_n + 1).tolist(),
        },
        "status": {s: int((status == s).sum()) for s in (STATUS_OK, STATUS_UNREADABLE)},
        "unreadable": _unreadable_images(manifest, status, reason),
    }
    tmp = split_out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(split_out / "meta.json")
    return meta
