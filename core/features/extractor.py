"""Object boxes and 2048-d features of the people in one image: the public entry point of core/features.

`people_objects` is the per-image computation of the objects stage (its Ray actors and its local
loop call it through `ObjectFeatureWorker`). `ObjectFeatureExtractor` wraps the same computation
for inference on new photos: it rebuilds the extractor a model's features came from (from the
objects stage's meta.json record) and picks the object boxes the way the stage would, so a person
gets bit-identical numbers whether it goes through the stage or through `ctxemo predict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from core.errors import UserError
from core.features.inputs import DatasetBoxes, load_dataset_boxes
from core.features.roi_model import (
    FEATURE_DIM,
    RoIFeatureModel,
    build_model,
    coco_categories,
    prepare_image,
)
from core.features.selection import select_for_person
from core.features.weights import weights_for_record
from core.params import ObjectsConfig

STATUS_OK = "ok"
STATUS_UNREADABLE = "unreadable_image"
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class PersonObjects:
    sample_id: str
    features: np.ndarray     # [N,2048] float16
    boxes: np.ndarray        # [N,4] float32
    scores: np.ndarray       # [N] float32
    classes: np.ndarray      # [N] int16
    count: int
    status: str = STATUS_OK
    reason: str = ""


def empty_person(sample_id: str, top_n: int, status: str = STATUS_OK, reason: str = "") -> PersonObjects:
    return PersonObjects(sample_id, np.zeros((top_n, FEATURE_DIM), np.float16), np.zeros((top_n, 4), np.float32),
                         np.zeros(top_n, np.float32), np.full(top_n, -1, np.int16), 0, status, reason)


def _image_boxes(model: RoIFeatureModel, cfg: ObjectsConfig, image: torch.Tensor, scale: torch.Tensor,
                 size: tuple[int, int], objects: list[list]):
    """(C4 map or None, boxes [K,4], scores [K], classes [K]) in original image pixels."""
    if cfg.boxes != "detector":
        table = np.asarray(objects, dtype=np.float64).reshape(-1, 6)
        # No C4 map yet: it is computed only when some box is selected.
        return None, table[:, :4].astype(np.float32), table[:, 5].astype(np.float32), table[:, 4].astype(np.int16)
    height, width = size
    c4, boxes_resized, det_scores, det_labels = model.detect(image)
    boxes_t = boxes_resized / scale
    boxes_t[:, 0::2] = boxes_t[:, 0::2].clamp(0, width)
    boxes_t[:, 1::2] = boxes_t[:, 1::2].clamp(0, height)
    return (c4, boxes_t.float().cpu().numpy(), det_scores.float().cpu().numpy(),
            det_labels.cpu().numpy().astype(np.int16))


@torch.inference_mode()
def people_objects(model: RoIFeatureModel, cfg: ObjectsConfig, rgb: np.ndarray, persons: list[list],
                   objects: list[list], device: torch.device | str = "cpu") -> list[PersonObjects]:
    """The objects of every person of one decoded image.

    `persons`: [sample_id, x1, y1, x2, y2] rows; `objects`: [x1, y1, x2, y2, class_id, score] rows
    of the data set's boxes (ignored with `objects.boxes: detector`, which detects them). The C4
    map and each selected box's feature are computed once however many people share the image.
    """
    image, (scale_x, scale_y) = prepare_image(rgb, cfg.image_size, device, cfg.channels_last)
    scale = torch.tensor([scale_x, scale_y, scale_x, scale_y], device=device)
    c4, boxes, scores, classes = _image_boxes(model, cfg, image, scale, rgb.shape[:2], objects)
    keep = np.flatnonzero(scores >= cfg.score_threshold)
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    chosen = [select_for_person(boxes, scores, p[1:5], cfg.top_n, cfg.exclude_iou) for p in persons]
    union = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    union_feats = np.zeros((len(boxes), FEATURE_DIM), np.float16)
    if len(union):
        roi_boxes = torch.from_numpy(boxes[union]).to(device) * scale
        c4 = model.c4_map(image) if c4 is None else c4
        feats = model.roi_features(c4, roi_boxes).float().cpu().numpy()
        # Random-init demo weights can reach large activations; inf would poison training.
        union_feats[union] = np.clip(feats, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    people = []
    for person, idx in zip(persons, chosen):
        row = empty_person(person[0], cfg.top_n)
        k = len(idx)
        row.features[:k], row.boxes[:k] = union_feats[idx], boxes[idx]
        row.scores[:k], row.classes[:k], row.count = scores[idx], classes[idx], k
        people.append(row)
    return people


@dataclass
class ImageObjects:
    people: list[PersonObjects]           # one per person box, in the order given
    class_names: list[str]                # names of the class ids in people[i].classes
    source: str                           # where the object boxes came from


class ObjectFeatureExtractor:
    """Object boxes + features for the people in one image, exactly as the objects stage makes them.

    Built from the objects settings a model was trained with, its seed and the objects stage's
    meta.json (None: weights resolved as the stage would). Object boxes: with `objects.boxes:
    detector` the stage's own detector; with dataset boxes the boxes file under `data_root` when
    the image lies there, else the COCO Faster R-CNN when its weights are cached, else none.
    """

    def __init__(self, cfg: ObjectsConfig, seed: int, meta: dict[str, Any] | None = None, *,
                 data_root: Path | None = None, device: str = "cpu"):
        if meta is not None and (int(meta["top_n"]) != cfg.top_n
                                 or int(meta["extractor"]["image_size"]) != cfg.image_size):
            raise UserError(f"the objects meta.json found for this model (top_n {meta['top_n']}, image_size "
                            f"{meta['extractor']['image_size']}) does not match the model's params (top_n "
                            f"{cfg.top_n}, image_size {cfg.image_size}): run predict in the model's workspace")
        self.cfg = cfg
        self.data_root = None if data_root is None else Path(data_root).resolve()
        self.device = torch.device(device)
        self.weights, state_dict = weights_for_record(cfg, seed, None if meta is None else meta["weights"])
        self.model = build_model(cfg, self.weights, state_dict, seed).to(self.device)

    @property
    def top_n(self) -> int:
        return self.cfg.top_n

    def dataset_boxes(self, images: dict[str, tuple[int, int]]) -> DatasetBoxes | None:
        """The boxes file rows of `images` ({path relative to data_root: (w, h)}), as the stage reads them."""
        if self.data_root is None or not self.cfg.boxes_file:
            return None
        boxes_file = self.data_root / self.cfg.boxes_file
        if not boxes_file.is_file():
            return None
        return load_dataset_boxes(boxes_file, images)

    def extract(self, rgb: np.ndarray, person_boxes: Sequence[Sequence[float]], image_path: Path | None = None,
                dataset_boxes: DatasetBoxes | None = None) -> ImageObjects:
        """The objects of each person box of the decoded image `rgb` (what `load_rgb` returns).

        `image_path` locates the image in the data set's boxes file; `dataset_boxes` may hold
        that file already read (`dataset_boxes()`), to read it once for many images.
        """
        persons = [[f"person{i}", *map(float, box)] for i, box in enumerate(person_boxes)]
        rows, class_names, source = self._object_boxes(rgb, image_path, dataset_boxes)
        return ImageObjects(people_objects(self.model, self.cfg, rgb, persons, rows, self.device),
                            class_names, source)

    def _object_boxes(self, rgb: np.ndarray, image_path: Path | None, dataset_boxes: DatasetBoxes | None):
        """(object rows, class names, description of their source) for one image."""
        from core.detection.people import detect_coco_objects

        if self.cfg.boxes == "detector":
            return [], coco_categories(), f"detector {self.cfg.detector}"
        relative = self._relative_to_root(image_path)
        if relative is not None:
            height, width = rgb.shape[:2]
            boxes = dataset_boxes if dataset_boxes is not None else self.dataset_boxes({relative: (width, height)})
            if boxes is not None and relative in boxes.by_image:
                return boxes.by_image[relative].tolist(), boxes.classes, f"data set boxes ({boxes.path.name})"
        detected = detect_coco_objects(rgb)
        if detected is not None:
            rows, description = detected
            return rows, coco_categories(), f"detector {description}"
        return [], [], ("none: the image is not in the data set's boxes file and no object "
                        "detector weights are available")

    def _relative_to_root(self, image: Path | None) -> str | None:
        if self.data_root is None or image is None:
            return None
        try:
            return Path(image).resolve().relative_to(self.data_root).as_posix()
        except ValueError:
            return None
