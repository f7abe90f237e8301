"""People and COCO objects in new photos, for inference where no box was annotated.

`find_people` finds the target persons of a photo: the Faster R-CNN `person` class when weights
are on this machine (a local file, or the torchvision COCO enum already in the torch hub cache),
otherwise OpenCV's HOG people detector. `detect_coco_objects` gives the same detector's boxes of
every COCO class, which object features fall back to for photos outside the data set. Nothing here
ever downloads: inference must run offline, and a silent download would change which model runs.
The face stage (core/detection/faces.py) does not use this module.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core.data.images import as_rgb_array
from core.detection import coco_weights
from core.errors import UserError

DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn"


class PeopleFound(NamedTuple):
    people: list[tuple[list[float], float]]   # ([x1, y1, x2, y2], score), best first
    detector: str                             # e.g. "fasterrcnn_resnet50_fpn (COCO_V1, cached)" or "hog"


@functools.lru_cache(maxsize=2)
def load_person_detector(detector: str, weights_file: str | None):
    """(model in eval mode, person class id, description) or None when no weights are available.

    Cached: building a Faster R-CNN takes seconds, and predict asks once per image.
    """
    import torch
    from torchvision.models import get_model

    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise UserError(f"person detector weights file not found: {path.resolve()}")
        try:
            model = get_model(detector, weights=None, weights_backbone=None, num_classes=91)
        except ValueError:
            raise UserError(f"unknown torchvision detector {detector!r}") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # torchvision reference-script checkpoints wrap the weights
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise UserError(f"{path} does not hold {detector} COCO weights: {first}") from None
        # COCO category ids as torchvision numbers them: 1 is person.
        return model.eval(), 1, f"{detector} ({path.name})"
    weights = coco_weights.cached_enum_weights(detector)
    if weights is None:
        return None
    model = get_model(detector, weights=weights)
    return model.eval(), weights.meta["categories"].index("person"), f"{detector} ({weights.name}, cached)"


def _detect(model, rgb: np.ndarray) -> dict[str, Any]:
    """One torchvision detector output for an RGB uint8 array (the model's transform resizes it)."""
    import torch

    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0)
    with torch.inference_mode():
        return model([tensor])[0]


def _hog_people(rgb: np.ndarray) -> list[tuple[list[float], float]]:
    import cv2

    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    window_w, window_h = hog.winSize
    if rgb.shape[0] < window_h or rgb.shape[1] < window_w:
        return []  # smaller than one detection window: nobody can be found
    rects, weights = hog.detectMultiScale(np.ascontiguousarray(rgb[:, :, ::-1]), winStride=(8, 8),
                                          padding=(8, 8), scale=1.05)
    height, width = rgb.shape[:2]
    people = []
    for (x, y, w, h), score in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
        box = [float(max(x, 0)), float(max(y, 0)), float(min(x + w, width)), float(min(y + h, height))]
        people.append((box, float(score)))
    return sorted(people, key=lambda p: -p[1])


@functools.lru_cache(maxsize=2)
def load_trained_person_detector(path: str):
    """(model in eval mode, person class id, description) of the people stage's detector.pt (cached)."""
    from core.detection.person_detector import load_trained_detector

    model, meta = load_trained_detector(path)
    return model, 1, f"{meta.get('detector', 'detector')} trained by the people stage ({path})"


def find_people(image: Any, *, detector: str = DEFAULT_DETECTOR, weights: str | None = None,
                score_threshold: float = 0.5, trained: str | Path | None = None) -> PeopleFound:
    """People in a photo without annotated persons (inference on new photos).

    First choice, `trained`: the people stage's detector.pt (core/detection/person_detector.py), trained
    on the data set's own person boxes (label 1 = person). Else the Faster R-CNN `person` class when
    weights are available: `weights` a local file, or (weights None) the torchvision COCO enum already
    in the torch hub cache; never downloads. Otherwise OpenCV's HOG people detector (its SVM margins
    are not probabilities, so `score_threshold` does not apply to it). `detector` in the result says
    which was used.
    """
    rgb = as_rgb_array(image)
    if trained is not None:
        loaded = load_trained_person_detector(str(trained))
    else:
        loaded = load_person_detector(detector, None if weights is None else str(weights))
    if loaded is None:
        return PeopleFound(_hog_people(rgb), "hog")
    model, person_class, description = loaded
    output = _detect(model, rgb)
    keep = (output["labels"] == person_class) & (output["scores"] >= score_threshold)
    boxes, scores = output["boxes"][keep].tolist(), output["scores"][keep].tolist()
    people = sorted(zip(boxes, scores), key=lambda p: -p[1])
    return PeopleFound([([float(v) for v in b], float(s)) for b, s in people], description)


def detect_coco_objects(image: Any, detector: str = DEFAULT_DETECTOR) -> tuple[list[list[float]], str] | None:
    """([x1,y1,x2,y2,class_id,score] rows of every COCO class, description), or None without cached weights."""
    loaded = load_person_detector(detector, None)
    if loaded is None:
        return None
    model, _person_class, description = loaded
    output = _detect(model, as_rgb_array(image))
    rows = [[*box, float(label), float(score)] for box, label, score in
            zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist())]
    return rows, description
