"""Detection-aware evaluation (BENet, Cladière et al., section 4.2): emotions scored on the
people a person detector actually found, not on the annotated boxes.

For each IoU threshold t, every annotated person is matched to at most one detected box with
the COCO API (pycocotools' COCOeval per-image evaluation, category "person"). A matched
person is scored with the prediction made from its matched detected box; an unmatched
person gets an all-zero score row (a false negative for every class). The mAP over classes
then comes from `core.evaluation.metrics.average_precision`, the same code as the
annotated-box mAP, so with perfect detections both numbers are equal. Single-label data
sets (CAER-S style, class ids [P]) get an accuracy instead: an unmatched person is wrong.

COCO conventions relied on (pycocotools 2.0.11, `COCOeval.evaluateImg`):
- A detection matches a person when IoU >= t (it skips a pair only when `iou < t`), so a
  box at IoU exactly 0.6 matches at t = 0.6. The default thresholds are COCO's own
  (`np.linspace(.5, .95, 10)`: its 0.6 is the double nearest 0.6, its 0.9 is
  0.8999999999999999); `np.arange(0.5, 0.96, 0.05)` would give 0.6000000000000001 and miss
  such a box at "0.6". Thresholds are capped at 1 - 1e-10 by COCOeval.
- Matching is greedy by detection score: detections are taken highest score first (stable
  sort on ties), each takes the unmatched person with the highest IoU >= t. A detection
  overlapping two people is matched to one of them only, and a person to one detection only.
- Matching uses a single area range "all" = [0, inf] (so no person is ever flagged as
  "ignore" by size) and maxDets = the largest number of detections in any image (so no
  detection is dropped; COCO's default keeps the 100 best per image).
- `person_detector_ap` instead keeps COCO's default parameters (maxDets 1/10/100, areas
  all/small/medium/large, all = [0, 1e10] px²) so its AP is the standard COCO AP.

Boxes are [x1, y1, x2, y2] in pixels, converted to COCO's [x, y, w, h].
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from core.evaluation.metrics import average_precision

PERSON_CATEGORY = 1
DEFAULT_IOU_THRESHOLDS = Params(iouType="bbox").iouThrs.copy()
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)

BoxesPerImage = Sequence[Any]
Predictor = Callable[[int, np.ndarray], Any]


# --- input checks -------------------------------------------------------------------------


def _check_boxes(boxes: Any, image: int, what: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"image {image}: {what} must be an [N,4] array of [x1,y1,x2,y2], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"image {image}: {what} contain NaN or infinite values")
    bad = np.flatnonzero((array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1]))
    if bad.size:
        raise ValueError(
            f"image {image}: {what} {bad.tolist()} have x2 <= x1 or y2 <= y1 (boxes must be [x1,y1,x2,y2])"
        )
    return array


def _check_scores(scores: Any, count: int, image: int) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if array.shape[0] != count:
        raise ValueError(f"image {image}: {count} detected boxes but {array.shape[0]} detection scores")
    if not np.isfinite(array).all():
        raise ValueError(f"image {image}: detection scores contain NaN or infinite values")
    return array


def _check_inputs(
    gt_boxes_per_image: BoxesPerImage,
    det_boxes_per_image: BoxesPerImage,
    det_scores_per_image: BoxesPerImage,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    lengths = (len(gt_boxes_per_image), len(det_boxes_per_image), len(det_scores_per_image))
    if len(set(lengths)) != 1:
        raise ValueError(
            "gt boxes, detected boxes and detection scores must list the same images, got "
            f"{lengths[0]}, {lengths[1]} and {lengths[2]} images"
        )
    gts = [_check_boxes(b, i, "annotated boxes") for i, b in enumerate(gt_boxes_per_image)]
    dets = [_check_boxes(b, i, "detected boxes") for i, b in enumerate(det_boxes_per_image)]
    scores = [_check_scores(s, len(d), i) for i, (s, d) in enumerate(zip(det_scores_per_image, dets))]
    return gts, dets, scores


def _check_thresholds(iou_thresholds: Any) -> np.ndarray:
    values = np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"iou_thresholds must be a non-empty list of numbers, got {iou_thresholds!r}")
    if (values <= 0).any() or (values > 1).any():
        raise ValueError(f"iou_thresholds must lie in (0, 1], got {values.tolist()}")
    return values


# --- COCO objects -------------------------------------------------------------------------


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _coco(images: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": images,
        "categories": [{"id": PERSON_CATEGORY, "name": "person"}],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _build_coco(
    gts: list[np.ndarray], dets: list[np.ndarray], scores: list[np.ndarray]
) -> tuple[COCO, COCO, dict[int, tuple[int, int]]]:
    """Ground truth and detections as in-memory COCO objects. Image i has id i+1; annotation
    ids start at 1 (COCOeval uses 0 for "no match"). Also returns det id -> (image, index)."""
    images = [{"id": i + 1} for i in range(len(gts))]
    gt_anns, det_anns, det_index = [], [], {}
    for image, boxes in enumerate(gts):
        for box in boxes:
            xywh = _xywh(box)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image + 1, "category_id": PERSON_CATEGORY,
                            "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    for image, (boxes, image_scores) in enumerate(zip(dets, scores)):
        for index, (box, score) in enumerate(zip(boxes, image_scores)):
            xywh = _xywh(box)
            det_id = len(det_anns) + 1
            det_anns.append({"id": det_id, "image_id": image + 1, "category_id": PERSON_CATEGORY,
                             "bbox": xywh, "area": xywh[2] * xywh[3], "score": float(score), "iscrowd": 0})
            det_index[det_id] = (image, index)
    return _coco(images, gt_anns), _coco(images, det_anns), det_index


def _evaluate(coco_gt: COCO, coco_dt: COCO, params: dict[str, Any] | None = None) -> tuple[COCOeval, str]:
    """COCOeval.evaluate() with optional parameter overrides; returns it and its captured prints."""
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.imgIds = sorted(coco_gt.getImgIds())
    evaluator.params.catIds = [PERSON_CATEGORY]
    for name, value in (params or {}).items():
        setattr(evaluator.params, name, value)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        evaluator.evaluate()
    return evaluator, log.getvalue()


# --- matching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionMatches:
    """Which detected box each annotated person got at each IoU threshold.

    Persons are the annotated boxes of all images concatenated in order (image 0's first).
    `matched_detection[t, p]` is the index, within image `person_image[p]`'s detections, of
    the box matched to person p at `iou_thresholds[t]`, or -1 when p was missed."""

    iou_thresholds: np.ndarray  # [T]
    matched_detection: np.ndarray  # [T, P] int
    person_image: np.ndarray  # [P] int
    det_boxes: tuple[np.ndarray, ...]  # per image, [D_i, 4] x1y1x2y2
    max_dets: int  # COCOeval maxDets used (largest D_i, at least 1)

    @property
    def num_persons(self) -> int:
        return int(self.person_image.shape[0])

    @property
    def num_detections(self) -> np.ndarray:
        return np.array([len(b) for b in self.det_boxes], dtype=np.int64)

    def match_rate(self) -> np.ndarray:
        """[T]: fraction of annotated persons matched to a detection (0 when there are none)."""
        if self.num_persons == 0:
            return np.zeros(len(self.iou_thresholds))
        return (self.matched_detection >= 0).mean(axis=1)


def match_detections(
    gt_boxes_per_image: BoxesPerImage,
    det_boxes_per_image: BoxesPerImage,
    det_scores_per_image: BoxesPerImage,
    iou_thresholds: Any = DEFAULT_IOU_THRESHOLDS,
) -> DetectionMatches:
    """Match annotated persons to detected boxes with COCOeval, at every IoU threshold.

    `gt_boxes_per_image[i]`: [G_i,4], `det_boxes_per_image[i]`: [D_i,4] (x1,y1,x2,y2 pixels),
    `det_scores_per_image[i]`: [D_i]. The matching is COCOeval.evaluateImg's (see the module
    docstring): greedy by score, IoU >= t, one area range [0, inf], maxDets = max D_i."""
    gts, dets, scores = _check_inputs(gt_boxes_per_image, det_boxes_per_image, det_scores_per_image)
    thresholds = _check_thresholds(iou_thresholds)
    person_image = np.repeat(np.arange(len(gts)), [len(g) for g in gts]).astype(np.int64)
    matched = np.full((len(thresholds), len(person_image)), -1, dtype=np.int64)
    max_dets = max([1] + [len(d) for d in dets])
    if len(person_image) and any(len(d) for d in dets):
        coco_gt, coco_dt, det_index = _build_coco(gts, dets, scores)
        evaluator, _ = _evaluate(coco_gt, coco_dt, {
            "iouThrs": thresholds, "maxDets": [max_dets],
            "areaRng": [[0.0, float("inf")]], "areaRngLbl": ["all"],
        })
        for result in evaluator.evalImgs:
            if result is None:  # an image with neither persons nor detections
                continue
            # COCOeval lists persons in its own order (non-ignored first); map back by id
            for column, gt_id in enumerate(result["gtIds"]):
                person = int(gt_id) - 1  # gt ids are 1 + the person's position
                for t in range(len(thresholds)):
                    det_id = int(result["gtMatches"][t, column])
                    if det_id > 0:
                        image, index = det_index[det_id]
                        if image != person_image[person]:
                            raise AssertionError("COCOeval matched across images")
                        matched[t, person] = index
    return DetectionMatches(thresholds, matched, person_image, tuple(dets), max_dets)


# --- emotion scores on the detected boxes -------------------------------------------------


def _prediction_table(
    predictions: Predictor | Sequence[Any], matches: DetectionMatches
) -> Callable[[int, int], np.ndarray]:
    """(image, detection index) -> score row, from precomputed per-detection scores (a list
    per image of [D_i, K]) or a callable `predict_from_box(image_index, box_xyxy) -> [K]`
    (called once per detection that some person is matched to)."""
    if callable(predictions):
        cache: dict[tuple[int, int], np.ndarray] = {}

        def from_callable(image: int, index: int) -> np.ndarray:
            if (image, index) not in cache:
                row = np.asarray(predictions(image, matches.det_boxes[image][index].copy()), dtype=np.float64)
                if row.ndim != 1 or not np.isfinite(row).all():
                    raise ValueError(f"image {image}: predict_from_box gave {row!r} for detection {index}; "
                                     "expected a finite 1-D score vector")
                cache[image, index] = row
            return cache[image, index]

        return from_callable
    if len(predictions) != len(matches.det_boxes):
        raise ValueError(f"precomputed scores list {len(predictions)} images, the matches {len(matches.det_boxes)}")
    tables = []
    for image, (rows, boxes) in enumerate(zip(predictions, matches.det_boxes)):
        rows = np.asarray(rows, dtype=np.float64)
        if len(boxes) == 0 and rows.size == 0:
            tables.append(rows)
            continue
        if rows.ndim != 2 or rows.shape[0] != len(boxes):
            raise ValueError(f"image {image}: {len(boxes)} detected boxes but precomputed scores of shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError(f"image {image}: precomputed scores contain NaN or infinite values")
        tables.append(rows)
    return lambda image, index: tables[image][index]


def _scores_at(
    t: int, lookup: Callable[[int, int], np.ndarray], matches: DetectionMatches, num_classes: int
) -> np.ndarray:
    """[P, K] scores at threshold index t: the matched detection's row, zeros when missed."""
    scores = np.zeros((matches.num_persons, num_classes))
    for person in np.flatnonzero(matches.matched_detection[t] >= 0):
        row = lookup(int(matches.person_image[person]), int(matches.matched_detection[t, person]))
        if row.shape != (num_classes,):
            raise ValueError(f"image {int(matches.person_image[person])}: a detection's scores have shape "
                             f"{row.shape}, expected ({num_classes},)")
        scores[person] = row
    return scores


def _multilabel(targets: np.ndarray, lookup: Callable, matches: DetectionMatches) -> dict[str, Any]:
    per_threshold, per_class = [], []
    last = None
    for t in range(len(matches.iou_thresholds)):
        last = average_precision(targets, _scores_at(t, lookup, matches, targets.shape[1]))
        per_threshold.append(last.mean)
        per_class.append(last.per_class)
    defined = [v for v in per_threshold if v is not None]
    return {
        "task": "multilabel",
        "mAP_per_threshold": per_threshold,
        "mAP_mean": float(np.mean(defined)) if defined else None,
        "per_class_ap": per_class,
        "classes_without_positives": last.classes_without_positives,
        "note": last.note,
    }


def _multiclass(targets: np.ndarray, lookup: Callable, matches: DetectionMatches, num_classes: int) -> dict[str, Any]:
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    support = np.bincount(targets, minlength=num_classes)
    has_examples = support > 0
    accuracy, class_accuracy = [], []
    for t in range(len(matches.iou_thresholds)):
        matched = matches.matched_detection[t] >= 0
        predicted = _scores_at(t, lookup, matches, num_classes).argmax(axis=1)
        correct = matched & (predicted == targets)  # a missed person is wrong, whatever the zeros' argmax
        per_class = np.bincount(targets[correct], minlength=num_classes) / np.maximum(support, 1)
        accuracy.append(float(correct.mean()))
        class_accuracy.append(float(per_class[has_examples].mean()))
    return {
        "task": "multiclass",
        "accuracy_per_threshold": accuracy,
        "accuracy_mean": float(np.mean(accuracy)),
        "mean_class_accuracy_per_threshold": class_accuracy,
        "classes_without_positives": [int(c) for c in np.flatnonzero(~has_examples)],
    }


def detection_aware_map(
    annotated_targets: Any,
    predict_from_box: Predictor | Sequence[Any],
    matches: DetectionMatches,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Emotion metrics when predictions come from detected boxes (BENet's protocol).

    `annotated_targets`: [P,K] 0/1 multi-hot (multi-label: per-threshold mAP with
    metrics.average_precision) or [P] class ids (single-label: accuracy, a missed person
    counts as wrong; `num_classes` defaults to the width of the score rows), persons in the
    order of `matches`. `predict_from_box`: a callable (image_index, box_xyxy [4]) -> [K]
    scores, or precomputed scores, a list per image of [D_i, K]. Returns a JSON-able dict
    with `iou_thresholds` [T] (rounded to 6 decimals), `match_rate` [T], `num_persons`, and
    `mAP_per_threshold` [T], `mAP_mean`, `per_class_ap` [T][K] (multi-label) or
    `accuracy_per_threshold` [T], `accuracy_mean`, `mean_class_accuracy_per_threshold` [T]
    (single-label)."""
    targets = np.asarray(annotated_targets)
    if targets.ndim not in (1, 2) or targets.shape[0] != matches.num_persons:
        raise ValueError(f"annotated_targets must have one row per annotated person ({matches.num_persons}), "
                         f"got shape {targets.shape}")
    if matches.num_persons == 0:
        raise ValueError("no annotated persons to evaluate")
    lookup = _prediction_table(predict_from_box, matches)
    if targets.ndim == 2:
        result = _multilabel(targets, lookup, matches)
    else:
        if not np.issubdtype(targets.dtype, np.integer):
            raise ValueError("single-label annotated_targets must be integer class ids")
        if num_classes is None:
            num_classes = _row_width(lookup, matches)
        result = _multiclass(targets.astype(np.int64), lookup, matches, num_classes)
    return {
        **result,
        # rounded for the report (COCO's 0.9 is 0.8999999999999999); exact in matches.iou_thresholds
        "iou_thresholds": [round(float(t), 6) for t in matches.iou_thresholds],
        "match_rate": [float(r) for r in matches.match_rate()],
        "num_persons": matches.num_persons,
    }


def _row_width(lookup: Callable[[int, int], np.ndarray], matches: DetectionMatches) -> int:
    for t in range(len(matches.iou_thresholds)):
        for person in np.flatnonzero(matches.matched_detection[t] >= 0):
            row = lookup(int(matches.person_image[person]), int(matches.matched_detection[t, person]))
            return int(np.asarray(row).shape[0])
    raise ValueError("no person is matched at any threshold: pass num_classes for single-label targets")


# --- the detector itself ------------------------------------------------------------------


def person_detector_ap(
    gt_boxes_per_image: BoxesPerImage,
    det_boxes_per_image: BoxesPerImage,
    det_scores_per_image: BoxesPerImage,
) -> dict[str, Any]:
    """COCO AP of person detections against the annotated person boxes, with COCOeval's
    default parameters (IoU .50:.05:.95, maxDets 1/10/100, COCO area ranges).

    Returns `summarize()`'s 12 stats by name (AP = AP@[.5:.95], AP50, AP75, AP_small, ...,
    AR100, ...; None where COCO reports -1, i.e. no annotated person in that area range),
    the counts, and the captured text of COCOeval's prints under `log`."""
    gts, dets, scores = _check_inputs(gt_boxes_per_image, det_boxes_per_image, det_scores_per_image)
    if not any(len(g) for g in gts):
        raise ValueError("no annotated person boxes: the detector AP is undefined")
    coco_gt, coco_dt, _ = _build_coco(gts, dets, scores)
    evaluator, log = _evaluate(coco_gt, coco_dt)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: (None if value < 0 else float(value)) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    return {
        **stats,
        "num_images": len(gts),
        "num_persons": int(sum(len(g) for g in gts)),
        "num_detections": int(sum(len(d) for d in dets)),
        "log": log + captured.getvalue(),
    }
