"""The detection-aware evaluation of one trained model (BENet's protocol, issue #15): its emotion
metric on the people a detector found, next to the metric on the annotated boxes.

Every model but a bottom-up one needs a person box. In real use nobody annotates it, so here the
boxes of a split come from a detector:
- a model that finds people itself (`model.finds_people`, BENet) uses its own detections and the
  emotions it reads at their centres (`core.inference.bottom_up_people`);
- every other model scores the person detector stage's boxes (`data/people/<split>.parquet`,
  core/detection/person_detector.py) through `core.box_scoring.BoxScorer`, the code `ctxemo predict`
  scores any box with: each detected box gets its own crops, faces and top-N objects.
Detections are matched to the annotated people by COCOeval at IoU 0.50:0.05:0.95, a matched person is
scored from its detected box, a missed one gets an all-zero row (core/evaluation/detection_protocol.py).
Multi-label scores go through a sigmoid first: the models' scores are raw (logits, or regressions
near [0, 1]), so a zero row would rank a missed person above every negative logit; after the sigmoid,
a strictly increasing map that leaves each class's AP unchanged, zero is below every score, so a missed
person is the false negative the protocol means. With the annotated boxes as detections the numbers
therefore equal the annotated-box evaluation's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.workspace import Workspace

HEADLINE_THRESHOLDS = (0.5, 0.75)


def people_of(manifest: pd.DataFrame) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """(image paths in first-seen order, annotated boxes per image [G_i,4], the manifest rows in the
    order the protocol lists persons: image by image, each image's people in manifest order)."""
    images = list(dict.fromkeys(manifest["image_path"]))
    rows_of = {path: [] for path in images}
    for row, path in enumerate(manifest["image_path"]):
        rows_of[path].append(row)
    boxes = [np.stack([np.asarray(manifest["person_box"].iloc[r], dtype=np.float64) for r in rows_of[p]])
             for p in images]
    order = np.array([r for p in images for r in rows_of[p]], dtype=np.int64)
    return images, boxes, order


def targets_of(manifest: pd.DataFrame, order: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """Multi-hot [P,K] (multilabel) or class ids [P] (multiclass) in the protocol's person order."""
    from core.data.dataset import multi_hot

    labels = [list(manifest["labels"].iloc[r]) for r in order]
    if task == "multiclass":
        return np.array([label[0] for label in labels], dtype=np.int64)
    return np.stack([multi_hot(label, num_classes) for label in labels])


def detected_people(package: Any, paths: Workspace, split: str, images: list[str],
                    objects_meta: dict[str, Any] | None) -> tuple[str, list[np.ndarray], list[np.ndarray],
                                                                  list[np.ndarray]]:
    """(where the people came from, boxes [D_i,4], detection scores [D_i], emotion scores [D_i,K]) per image."""
    from core.data.images import load_rgb

    data_root = Path(paths.data_root)
    num_classes = len(package.classes)
    boxes, det_scores, rows = [], [], []
    if getattr(package.model, "finds_people", False):
        from core.inference import bottom_up_people

        source = f"{package.model_name} (its own detections)"
        for path in images:
            found, scores, emotions = bottom_up_people(package, load_rgb(data_root / path))
            boxes.append(np.asarray(found, np.float64).reshape(-1, 4))
            det_scores.append(np.asarray(scores, np.float64).reshape(-1))
            rows.append(np.asarray(emotions, np.float64).reshape(-1, num_classes))
        return source, boxes, det_scores, rows
    from core.box_scoring import BoxScorer
    from core.detection.person_detector import read_people, read_people_detector

    found_by_image = read_people(paths.people_dir, split)
    missing = [path for path in images if path not in found_by_image]
    if missing:
        raise UserError(f"{paths.people_dir}/{split}.parquet has no row for {len(missing)} image(s) of the "
                        f"{split} manifest (first: {missing[0]}): rerun the person detector (dvc repro people)")
    scorer = BoxScorer(package, objects_meta, data_root)
    for path in images:
        found, scores = found_by_image[path]
        boxes.append(np.asarray(found, np.float64).reshape(-1, 4))
        det_scores.append(np.asarray(scores, np.float64).reshape(-1))
        if len(found) == 0:
            rows.append(np.zeros((0, num_classes)))
            continue
        scored = scorer.score(data_root / path, load_rgb(data_root / path), found)
        rows.append(np.asarray(scored.scores, np.float64).reshape(-1, num_classes))
    return read_people_detector(paths.people_dir), boxes, det_scores, rows


def evaluate_on_detections(package: Any, paths: Workspace, *, split: str = "test",
                           objects_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's metric on detected people at every COCO IoU threshold, and the detector's AP."""
    from core.data.manifest import read_manifest
    from core.evaluation.detection_protocol import detection_aware_map, match_detections, person_detector_ap

    started = time.perf_counter()
    manifest = read_manifest(split, paths.manifest_dir)
    if len(manifest) == 0:
        raise UserError(f"the {split} split has no annotated person to evaluate on detections")
    images, gt_boxes, order = people_of(manifest)
    source, boxes, det_scores, rows = detected_people(package, paths, split, images, objects_meta)
    matches = match_detections(gt_boxes, boxes, det_scores)
    targets = targets_of(manifest, order, package.task, len(package.classes))
    if package.task == "multilabel":
        rows = [1.0 / (1.0 + np.exp(-r)) for r in rows]
    metrics = detection_aware_map(targets, rows, matches, num_classes=len(package.classes))
    detector = person_detector_ap(gt_boxes, boxes, det_scores)
    metrics.pop("per_class_ap", None)  # per class and threshold: too much for a table row
    return {
        **metrics,
        "split": split, "people_source": source,
        "detector_AP": detector["AP"], "detector_AP50": detector["AP50"], "detector_AP75": detector["AP75"],
        "num_images": len(images), "num_detections": detector["num_detections"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a comparison row shows: the metric at IoU 0.5 and 0.75 and the mean over .50:.95."""
    metric = "mAP" if result["task"] == "multilabel" else "accuracy"
    by_threshold = dict(zip(result["iou_thresholds"], result[f"{metric}_per_threshold"]))
    row = {f"det_{metric}": result[f"{metric}_mean"], "people_source": result["people_source"],
           "people_AP": result["detector_AP"], "people_AP50": result["detector_AP50"]}
    for threshold in HEADLINE_THRESHOLDS:
        row[f"det_{metric}_{round(threshold * 100)}"] = by_threshold.get(threshold)
    row["det_match_rate_50"] = dict(zip(result["iou_thresholds"], result["match_rate"])).get(0.5)
    return row
