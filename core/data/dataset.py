"""The torch Dataset every model trains, evaluates and predicts through.

One item per target person, holding exactly the input views the model declares (its `views`
and `view_specs`, models/registry.py) and nothing model-specific besides:
- a pixel view (`body`, `face`, `image`, `image_body_masked`, `image_face_masked`,
  `image_people_masked`, `patches`; core/data/views.py builds the pixels) becomes a float32
  tensor [3,S,S] resized and normalised as the model's params say (`patches`: [N*N,3,S,S]);
  images are decoded in the DataLoader workers;
- the `objects` view becomes obj_feats / obj_boxes / obj_mask (the objects stage's top-N,
  memory-mapped, never loaded whole) and person_box;
- a model that reads the person's box in the pixels of one of its views (`box_view`, BENet's
  `image`) gets `person_box` [4] scaled from the photo to that view's S x S pixels (`boxes_in_view`);
- always `target` (multi-hot [C] or a class id) and `index`; with `with_vad`, `vad` [3] (zeros
  when unknown) and `has_vad`.

Face boxes come from the detect stage (`face_boxes`, one entry per manifest row, None where no
face was found); a person without one gets views.face_fallback, counted in `face_fallbacks`
(the trainer and the evaluation report the count: it is never silent).

`cached` maps an item key to a .npy with one row per manifest row (core/training/body_cache.py,
the frozen-backbone fast path, models/frozen.py): the item under that key is the row, memory-
mapped. A key that names a pixel view replaces that view's pixels (the image is not opened for
it); any other key is an input of its own beside the pixel views.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.data import views as V
from core.data.object_store import ObjectStore
from core.errors import UserError
from models.config import NORMALISATIONS, ViewSpec
from models.frozen import frozen_keys

# Item keys the loader fills itself: a cache may not claim them.
RESERVED_KEYS = ("obj_feats", "obj_boxes", "obj_mask", "person_box", "target", "index", "vad", "has_vad")
IMAGENET_MEAN = np.array(NORMALISATIONS["imagenet"][0], dtype=np.float32)
IMAGENET_STD = np.array(NORMALISATIONS["imagenet"][1], dtype=np.float32)
OBJECT_KEYS = ("obj_feats", "obj_boxes", "obj_mask", "person_box")
FACE_VIEWS = frozenset({"face", "image_face_masked"})
LOCATING_KEYS = ("person_box", "head")  # what model_inputs adds for box_view / image-trained models


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (img.width, img.height))
        return img.convert("RGB")


def body_tensor(image: Image.Image | np.ndarray, box: Any, size: int) -> torch.Tensor:
    """The ImageNet-normalised size x size crop of `box`: the `body` view with the flagship's defaults."""
    rgb = np.asarray(image)
    spec = ViewSpec(size=size, mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD))
    return torch.from_numpy(V.normalise(V.crop(rgb, box), spec))


def view_tensor(name: str, rgb: np.ndarray, spec: ViewSpec, *, body_box: Sequence[float],
                face_box: Sequence[float] | None, people_boxes: Sequence[Sequence[float]] = ()) -> torch.Tensor:
    """One pixel view of one person as the model reads it ([3,S,S]; patches [N*N,3,S,S])."""
    pixels = V.pixel_view(name, rgb, body_box=body_box, face_box=face_box, people_boxes=people_boxes,
                          grid=spec.grid)
    if name == "patches":
        return torch.from_numpy(np.stack([V.normalise(patch, spec) for patch in pixels]))
    return torch.from_numpy(V.normalise(pixels, spec))


def boxes_in_view(boxes: Any, image_size: Sequence[int], spec: ViewSpec) -> torch.Tensor:
    """A photo's boxes [N,4] (or one box [4]: the result is [4]) in the pixels of a whole-image view resized
    to spec.size x spec.size as `V.normalise` resizes it (each axis on its own); `image_size`: (height, width)."""
    from core.data.subject_transforms import resize_boxes

    boxes = np.asarray(boxes, np.float32)
    scaled = resize_boxes(boxes, image_size, (spec.size, spec.size))
    return torch.from_numpy(scaled.reshape(boxes.shape))


def multi_hot(labels: Any, num_classes: int) -> np.ndarray:
    target = np.zeros(num_classes, dtype=np.float32)
    target[np.asarray(list(labels), dtype=np.int64)] = 1.0
    return target


def face_boxes_with_fallback(face_boxes: Sequence[Any] | None, body_boxes: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """([S,4] face boxes, [S] bool used-the-fallback) for every person."""
    boxes, fallback = [], []
    for row, body in enumerate(body_boxes):
        detected = None if face_boxes is None else face_boxes[row]
        box, used = V.face_box_or_fallback(detected, body)
        boxes.append(box)
        fallback.append(used)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(fallback, dtype=bool)


class PersonDataset(Dataset):
    """Items: the model's views (see the module docstring), `target`, `index` (and VAD)."""

    def __init__(self, manifest: pd.DataFrame, data_root: str | Path, *, num_classes: int, task: str,
                 views: Sequence[str], view_specs: Mapping[str, ViewSpec], objects_dir: str | Path | None = None,
                 max_objects: int | None = None, face_boxes: Sequence[Any] | None = None,
                 cached: Mapping[str, str | Path] | None = None, with_vad: bool = False,
                 box_view: str | None = None):
        unknown = [name for name in views if name not in V.VIEWS]
        if unknown:
            raise UserError(f"unknown input view(s) {unknown}; views: {list(V.VIEWS)}")
        self.views = tuple(views)
        self.pixel_views = tuple(name for name in self.views if name != "objects")
        missing = [name for name in self.pixel_views if name not in view_specs]
        if missing:
            raise UserError(f"no size/normalisation for view(s) {missing}")
        self.view_specs = {name: view_specs[name] for name in self.pixel_views}
        if box_view is not None and (box_view not in self.pixel_views or "objects" in self.views
                                     or box_view in (cached or {})):
            raise UserError(f"box_view {box_view!r}: the person box is scaled into a decoded pixel view of a "
                            f"model without the objects view (views {list(self.views)})")
        self.box_view = box_view
        self.data_root = Path(data_root)
        self.sample_ids = manifest["sample_id"].tolist()
        self.image_paths = manifest["image_path"].tolist()
        self.person_boxes = np.stack(manifest["person_box"].map(np.asarray).tolist()).astype(np.float32)
        self.labels = manifest["labels"].map(list).tolist()
        self.num_classes, self.task, self.max_objects = num_classes, task, max_objects

        self.store, self.object_rows = None, None
        if "objects" in self.views:
            if objects_dir is None:
                raise UserError("the model reads the objects view: give the objects stage's folder")
            self.store = ObjectStore(objects_dir)
            self.object_rows = np.array([self.store.row_of(s) for s in self.sample_ids], dtype=np.int64)

        needs_face = bool(FACE_VIEWS & set(self.pixel_views))
        self.face_boxes, self.face_fallback = face_boxes_with_fallback(face_boxes if needs_face else None,
                                                                       self.person_boxes)
        if not needs_face:
            self.face_fallback[:] = False
        self.people_boxes: list[np.ndarray] | None = None
        if "image_people_masked" in self.pixel_views:
            by_image: dict[str, list[int]] = defaultdict(list)
            for row, path in enumerate(self.image_paths):
                by_image[path].append(row)
            self.people_boxes = [self.person_boxes[by_image[path]] for path in self.image_paths]

        self.with_vad = with_vad
        if with_vad:
            vads = manifest["vad"].tolist() if "vad" in manifest else [None] * len(manifest)
            self.has_vad = np.array([v is not None and len(v) == 3 for v in vads], dtype=bool)
            self.vad = np.array([np.asarray(v, np.float32) if ok else np.zeros(3, np.float32)
                                 for v, ok in zip(vads, self.has_vad)], dtype=np.float32).reshape(-1, 3)

        self.cached = {name: Path(path) for name, path in (cached or {}).items()}
        self._cache_arrays: dict[str, np.ndarray] = {}
        for name in self.cached:
            if name in RESERVED_KEYS or name == "objects":
                raise UserError(f"a cache under {name!r}, a key the loader fills itself")
            rows = len(self._cache(name))
            if rows != len(self.sample_ids):
                raise UserError(f"{self.cached[name]}: {rows} cached maps for {len(self.sample_ids)} manifest "
                                "rows; the manifest changed since the cache was built: delete it")

    @property
    def face_fallbacks(self) -> int:
        """How many persons' face views use the fallback box (no face detected)."""
        return int(self.face_fallback.sum())

    def _cache(self, name: str) -> np.ndarray:
        if name not in self._cache_arrays:
            self._cache_arrays[name] = np.load(self.cached[name], mmap_mode="r")
        return self._cache_arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers map the caches themselves instead of receiving pickled copies
        state = self.__dict__.copy()
        state["_cache_arrays"] = {}
        return state

    def __len__(self) -> int:
        return len(self.sample_ids)

    def targets(self) -> np.ndarray:
        """All targets at once (multi-hot [S,C] or class ids [S]) for metrics and losses."""
        if self.task == "multiclass":
            return np.array([labels[0] for labels in self.labels], dtype=np.int64)
        return np.stack([multi_hot(labels, self.num_classes) for labels in self.labels])

    def vad_targets(self) -> tuple[np.ndarray, np.ndarray]:
        """([S,3] valence/arousal/dominance, [S] known) of every person (with_vad only)."""
        return self.vad, self.has_vad

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item: dict[str, torch.Tensor] = {}
        to_decode = [name for name in self.pixel_views if name not in self.cached]
        for name in self.cached:
            item[name] = torch.from_numpy(np.array(self._cache(name)[index], dtype=np.float32))
        if to_decode:
            rgb = np.asarray(open_rgb(self.data_root / self.image_paths[index]))
            people = () if self.people_boxes is None else self.people_boxes[index]
            for name in to_decode:
                item[name] = view_tensor(name, rgb, self.view_specs[name], body_box=self.person_boxes[index],
                                         face_box=self.face_boxes[index], people_boxes=people)
        if self.store is not None:
            feats, boxes, mask = self.store.get(int(self.object_rows[index]))
            if self.max_objects is not None:
                feats, boxes, mask = feats[: self.max_objects], boxes[: self.max_objects], mask[: self.max_objects]
            item["obj_feats"] = torch.from_numpy(np.array(feats, dtype=np.float16))
            item["obj_boxes"] = torch.from_numpy(np.array(boxes, dtype=np.float32))
            item["obj_mask"] = torch.from_numpy(np.array(mask, dtype=bool))
            item["person_box"] = torch.from_numpy(self.person_boxes[index].copy())
        if self.box_view is not None:
            item["person_box"] = boxes_in_view(self.person_boxes[index], rgb.shape[:2], self.view_specs[self.box_view])
        labels = self.labels[index]
        if self.task == "multiclass":
            item["target"] = torch.tensor(labels[0], dtype=torch.long)
        else:
            item["target"] = torch.from_numpy(multi_hot(labels, self.num_classes))
        if self.with_vad:
            item["vad"] = torch.from_numpy(self.vad[index].copy())
            item["has_vad"] = torch.tensor(bool(self.has_vad[index]))
        item["index"] = torch.tensor(index, dtype=torch.long)
        return item


def input_keys(views: Sequence[str]) -> tuple[str, ...]:
    """The batch keys a model with these views reads."""
    keys: list[str] = []
    for name in views:
        keys.extend(OBJECT_KEYS if name == "objects" else (name,))
    return tuple(keys)


def model_inputs(model, batch: Mapping[str, torch.Tensor], device: torch.device | str = "cpu") -> dict:
    """The mapping a registered model's forward takes: its views' tensors (and, with its trunks
    frozen, the cached tensors it reads instead of running them), moved to `device`."""
    inner = model.module if hasattr(model, "module") else model
    keys = input_keys(inner.views) + frozen_keys(inner)
    if getattr(inner, "box_view", None) or getattr(inner, "trains_on", "persons") == "images":
        # person-level items carry person_box (in the box_view's pixels); image-level training items
        # (core/data/image_dataset.py) carry the head each image is routed to
        keys += tuple(key for key in LOCATING_KEYS if key in batch and key not in keys)
    return {key: batch[key].to(device, non_blocking=True) for key in keys}
