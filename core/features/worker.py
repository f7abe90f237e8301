"""The objects stage's workers: images -> one row of arrays per person; whole shards -> shard files.

`ObjectFeatureWorker` computes every image alone, through `extractor.people_objects`, so the
numbers depend neither on how images were grouped nor on which process got them. `ShardWorker`
is the unit of work of both engines: one instance per Ray Data actor (the model built once) or one
in-process for `--engine local`; it computes a whole shard and writes it where it runs (data, then
marker: core/features/shards.py), so the driver receives a few numbers per shard, not the arrays.
On a cluster the shard folder is on the shared workspace volume (infra/README.md).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

import numpy as np
import torch

from core.data.images import ImageReadError, load_rgb
from core.features.extractor import (
    STATUS_UNREADABLE,
    PersonObjects,
    empty_person,
    people_objects,
)
from core.features.inputs import ShardPlan
from core.features.roi_model import FEATURE_DIM, build_model
from core.features.shards import write_shard
from core.features.weights import WeightsChoice
from core.params import ObjectsConfig


class ObjectFeatureWorker:
    """The RoI feature model of one process, and the objects of the people of one image."""

    def __init__(self, cfg: ObjectsConfig, choice: WeightsChoice, state_dict: Any, data_root: str,
                 seed: int, torch_threads: int | None = None, device: str | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        if state_dict is not None and not isinstance(state_dict, dict):
            import ray  # an ObjectRef put by the driver: one copy in the object store, not one per actor

            state_dict = ray.get(state_dict)
        self.cfg = cfg
        self.data_root = Path(data_root)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build_model(cfg, choice, state_dict, seed).to(self.device)

    def process_image(self, image_path: str, persons: list[list], objects: list[list]) -> list[PersonObjects]:
        """The objects of each person of one image under data_root; an unreadable image gives empty rows."""
        try:
            rgb = load_rgb(self.data_root / image_path)
        except ImageReadError as exc:
            # The message minus its absolute path: index.parquet already names the image, and the
            # outputs should not depend on where the workspace lives.
            cause = str(exc).split(": ", 1)[-1]
            return [empty_person(p[0], self.cfg.top_n, STATUS_UNREADABLE, cause) for p in persons]
        return people_objects(self.model, self.cfg, rgb, persons, objects, self.device)


def stack_people(people: Sequence[PersonObjects], top_n: int) -> dict[str, np.ndarray]:
    """Per-person results as the arrays of one shard file."""
    def stacked(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if not people:
            return np.zeros((0, *shape), dtype)
        return np.stack([getattr(p, name) for p in people]).astype(dtype, copy=False)

    return {
        "sample_id": np.array([p.sample_id for p in people], dtype=object),
        "features": stacked("features", (top_n, FEATURE_DIM), np.float16),
        "boxes": stacked("boxes", (top_n, 4), np.float32),
        "scores": stacked("scores", (top_n,), np.float32),
        "classes": stacked("classes", (top_n,), np.int16),
        "counts": np.array([p.count for p in people], dtype=np.int32),
        "status": np.array([p.status for p in people], dtype=object),
        "reason": np.array([p.reason for p in people], dtype=object),
    }


PLAN_COLUMNS = ("shard_key", "image_path", "persons", "objects")


def plan_row(plan: ShardPlan) -> dict[str, Any]:
    """A shard plan as one Ray Data row (plain types only)."""
    return {"split": plan.split, "index": plan.index, "n_persons": plan.n_persons, "fingerprint": plan.fingerprint,
            "frame": plan.frame.to_json(orient="records")}


def plan_from_row(split: Any, index: Any, n_persons: Any, fingerprint: Any, frame: Any) -> ShardPlan:
    return ShardPlan(str(split), int(index), pd.DataFrame(json.loads(str(frame)), columns=list(PLAN_COLUMNS)),
                     int(n_persons), str(fingerprint))




class ShardWorker:
    """Computes whole shards and writes each one under `shard_root/<split>/`; returns one summary per shard."""

    def __init__(self, shard_root: str, **worker_kwargs: Any):
        self.shard_root = Path(shard_root)
        self.worker = ObjectFeatureWorker(**worker_kwargs)

    def compute(self, plan: ShardPlan, on_persons: Callable[[int], None] | None = None,
                node_id: str | None = None) -> dict[str, Any]:
        """Compute and write one shard; its summary names the writer (`node_id`: the Ray node, None in-process)."""
        started = time.perf_counter()
        people: list[PersonObjects] = []
        for image_path, persons, objects in zip(plan.frame["image_path"], plan.frame["persons"],
                                                plan.frame["objects"]):
            found = self.worker.process_image(str(image_path), json.loads(str(persons)), json.loads(str(objects)))
            people.extend(found)
            if on_persons is not None:
                on_persons(len(found))
        if len(people) != plan.n_persons:
            raise RuntimeError(f"objects: shard {plan.key} got {len(people)} person rows, planned {plan.n_persons}")
        rows = stack_people(people, self.worker.cfg.top_n)
        seconds = time.perf_counter() - started
        write_shard(self.shard_root / plan.split, plan, rows, seconds)
        return {"shard_key": plan.key, "split": plan.split, "index": plan.index, "images": len(plan.frame),
                "persons": plan.n_persons, "unreadable": int(sum(p.status == STATUS_UNREADABLE for p in people)),
                "seconds": round(seconds, 3), "node_id": node_id, "pid": os.getpid()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data: rows of `plan_row`s in, their shard summaries out."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        done = [self.compute(plan_from_row(*values), node_id=node_id) for values in zip(
            batch["split"], batch["index"], batch["n_persons"], batch["fingerprint"], batch["frame"])]
        return {name: np.array([d[name] for d in done], dtype=object) for name in done[0]} if done else {}
