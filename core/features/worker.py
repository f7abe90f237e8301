"""The objects stage's batch worker: images named in a batch -> one row of arrays per person.

One class serves as the Ray Data `map_batches` callable (one instance per actor, the model built
once) and as the in-process loop of `--engine local`. Both compute every image alone, through
`extractor.people_objects`, so the numbers depend neither on how images were batched nor on which
actor got them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from core.data.images import ImageReadError, load_rgb
from core.features.extractor import (
    STATUS_UNREADABLE,
    PersonObjects,
    empty_person,
    people_objects,
)
from core.features.roi_model import FEATURE_DIM, build_model
from core.features.weights import WeightsChoice
from core.params import ObjectsConfig


class ObjectFeatureWorker:
    """Callable on a batch of images (numpy dict); returns one row per person."""

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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results: list[PersonObjects] = []
        shard_keys: list[str] = []
        for key, image_path, persons, objects in zip(batch["shard_key"], batch["image_path"],
                                                     batch["persons"], batch["objects"]):
            people = self.process_image(str(image_path), json.loads(str(persons)), json.loads(str(objects)))
            results.extend(people)
            shard_keys.extend([str(key)] * len(people))
        return stack_people(results, shard_keys, self.cfg.top_n)

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


def stack_people(people: Sequence[PersonObjects], shard_keys: Sequence[str], top_n: int) -> dict[str, np.ndarray]:
    """Per-person results as one numpy batch (the shape Ray Data passes between stages)."""
    def stacked(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if not people:
            return np.zeros((0, *shape), dtype)
        return np.stack([getattr(p, name) for p in people]).astype(dtype, copy=False)

    return {
        "shard_key": np.array(list(shard_keys), dtype=object),
        "sample_id": np.array([p.sample_id for p in people], dtype=object),
        "features": stacked("features", (top_n, FEATURE_DIM), np.float16),
        "boxes": stacked("boxes", (top_n, 4), np.float32),
        "scores": stacked("scores", (top_n,), np.float32),
        "classes": stacked("classes", (top_n,), np.int16),
        "counts": np.array([p.count for p in people], dtype=np.int32),
        "status": np.array([p.status for p in people], dtype=object),
        "reason": np.array([p.reason for p in people], dtype=object),
    }
