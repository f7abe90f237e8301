"""The torch Dataset every model trains and predicts through.

One item per target person: the body crop (decoded and resized in DataLoader workers),
the stored top-N object features (memory-mapped, never loaded whole), their boxes and
mask, the person box and the target. `body_tensor` is the single implementation of the
crop preprocessing: training, evaluation and `ctxemo predict` all call it.

With `body_features` (a [S,C,h,w] .npy written by core/training/body_cache.py, row i = manifest
row i) the item's "body" is that precomputed backbone map instead of the crop, and the
image is never opened: the sweep's frozen-backbone fast path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.data.object_store import ObjectStore
from core.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def body_tensor(image: Image.Image, box: Any, size: int) -> torch.Tensor:
    """Crop `box` [x1,y1,x2,y2] (pixels) from `image`, resize to size×size, normalise."""
    x1, y1, x2, y2 = (float(v) for v in box)
    crop = image.crop((x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)))
    crop = crop.resize((size, size), Image.BILINEAR)
    array = (np.asarray(crop, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (img.width, img.height))
        return img.convert("RGB")


def multi_hot(labels: Any, num_classes: int) -> np.ndarray:
    target = np.zeros(num_classes, dtype=np.float32)
    target[np.asarray(list(labels), dtype=np.int64)] = 1.0
    return target


class PersonDataset(Dataset):
    """Items: dict(body, obj_feats, obj_boxes, obj_mask, person_box, target, index)."""

    def __init__(self, manifest: pd.DataFrame, data_root: str | Path, objects_dir: str | Path,
                 *, num_classes: int, task: str, input_size: int, max_objects: int | None = None,
                 body_features: str | Path | None = None):
        self.data_root = Path(data_root)
        self.store = ObjectStore(objects_dir)
        self.sample_ids = manifest["sample_id"].tolist()
        self.image_paths = manifest["image_path"].tolist()
        self.person_boxes = np.stack(manifest["person_box"].map(np.asarray).tolist()).astype(np.float32)
        self.labels = manifest["labels"].map(list).tolist()
        self.object_rows = np.array([self.store.row_of(s) for s in self.sample_ids], dtype=np.int64)
        self.num_classes = num_classes
        self.task = task
        self.input_size = input_size
        self.max_objects = max_objects
        self.body_features = None if body_features is None else Path(body_features)
        self._body_maps: np.ndarray | None = None
        if self.body_features is not None:
            rows = len(self._maps())
            if rows != len(self.sample_ids):
                raise UserError(f"{self.body_features}: {rows} cached body maps for {len(self.sample_ids)} "
                                "manifest rows; the manifest changed since the cache was built: delete it")

    def _maps(self) -> np.ndarray:
        if self._body_maps is None:
            self._body_maps = np.load(self.body_features, mmap_mode="r")
        return self._body_maps

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers map the cache themselves instead of receiving a pickled copy
        state = self.__dict__.copy()
        state["_body_maps"] = None
        return state

    def __len__(self) -> int:
        return len(self.sample_ids)

    def targets(self) -> np.ndarray:
        """All targets at once (multi-hot [S,C] or class ids [S]) for metrics and losses."""
        if self.task == "multiclass":
            return np.array([labels[0] for labels in self.labels], dtype=np.int64)
        return np.stack([multi_hot(labels, self.num_classes) for labels in self.labels])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.body_features is not None:
            body = torch.from_numpy(np.array(self._maps()[index], dtype=np.float32))
        else:
            body = body_tensor(open_rgb(self.data_root / self.image_paths[index]), self.person_boxes[index],
                               self.input_size)
        feats, boxes, mask = self.store.get(int(self.object_rows[index]))
        if self.max_objects is not None:
            feats, boxes, mask = feats[: self.max_objects], boxes[: self.max_objects], mask[: self.max_objects]
        labels = self.labels[index]
        if self.task == "multiclass":
            target = torch.tensor(labels[0], dtype=torch.long)
        else:
            target = torch.from_numpy(multi_hot(labels, self.num_classes))
        return {
            "body": body,
            "obj_feats": torch.from_numpy(np.array(feats, dtype=np.float16)),
            "obj_boxes": torch.from_numpy(np.array(boxes, dtype=np.float32)),
            "obj_mask": torch.from_numpy(np.array(mask, dtype=bool)),
            "person_box": torch.from_numpy(self.person_boxes[index].copy()),
            "target": target,
            "index": torch.tensor(index, dtype=torch.long),
        }


MODEL_INPUTS = ("body", "obj_feats", "obj_boxes", "obj_mask", "person_box")


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> tuple:
    """The positional arguments of every registered model's forward, moved to `device`."""
    return tuple(batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS)
