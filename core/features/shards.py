"""Finished work on disk: one .npz per shard plus a .done.json marker holding its fingerprint.

A marker is written only after its data file is complete (both by atomic rename), so a marker with
the expected fingerprint always means a shard that can be reused; anything else is recomputed.
Results arrive from the actors in any order and in pieces: `ShardCollector` writes each shard the
moment its last person row has come in, so an interrupted run keeps every finished shard.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.features.extractor import STATUS_UNREADABLE
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


class ShardCollector:
    """Gathers per-person rows (arriving in any order) and writes each shard once it is complete."""

    def __init__(self, plans: Sequence[ShardPlan], shard_dirs: dict[str, Path], totals: dict[str, int],
                 log: Callable[[str], None]):
        self.plans = {p.key: p for p in plans}
        self.shard_dirs = shard_dirs
        self.totals = totals
        self.log = log
        self.parts: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
        self.received: dict[str, int] = defaultdict(int)
        self.written: list[str] = []
        self.started = time.perf_counter()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        keys = np.asarray(batch["shard_key"]).astype(str)
        for key in np.unique(keys):
            take = keys == key
            self.parts[key].append({name: np.asarray(values)[take] for name, values in batch.items()})
            self.received[key] += int(take.sum())
            plan = self.plans[key]
            if self.received[key] > plan.n_persons:
                raise RuntimeError(f"shard {key}: got {self.received[key]} person rows, expected {plan.n_persons}")
            if self.received[key] == plan.n_persons:
                self._write(plan)

    def _write(self, plan: ShardPlan) -> None:
        parts = self.parts.pop(plan.key)
        rows = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        elapsed = time.perf_counter() - self.started
        write_shard(self.shard_dirs[plan.split], plan, rows, elapsed)
        self.written.append(plan.key)
        unreadable = int((rows["status"].astype(str) == STATUS_UNREADABLE).sum())
        self.log(f"objects: {plan.split} shard {plan.index + 1}/{self.totals[plan.split]} done: "
                 f"{len(plan.frame)} images, {plan.n_persons} persons"
                 f"{f', {unreadable} persons on unreadable images' if unreadable else ''} "
                 f"({elapsed:.1f}s since start)")

    def missing(self) -> list[str]:
        return [key for key in self.plans if key not in self.written]
