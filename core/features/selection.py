"""Which object boxes a target person gets: not the person itself, then the top_n by score.

Boxes overlapping the target's own person_box with IoU >= `objects.exclude_iou` are removed (the
detector or the boxes file usually lists the target too; other people stay as context), then the
highest scores are kept, ties in file order so results do not depend on the sort's whims.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def iou_with(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [4] box with each of [K,4] boxes (x1,y1,x2,y2)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def select_for_person(boxes: np.ndarray, scores: np.ndarray, person_box: Sequence[float], top_n: int,
                      exclude_iou: float) -> np.ndarray:
    """Indices of the top_n highest-scoring boxes that are not the person itself (ties: file order)."""
    candidates = np.flatnonzero(iou_with(np.asarray(person_box), boxes) < exclude_iou)
    order = np.argsort(-np.asarray(scores, dtype=np.float32)[candidates], kind="stable")
    return candidates[order[:top_n]]
