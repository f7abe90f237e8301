"""Evaluation metrics (numpy + scikit-learn): EMOTIC multi-label and CAER-S single-label.

Multi-label (y_true: 0/1 array [N,C], scores: raw model scores [N,C]):
- `average_precision`: per-class AP = sklearn.metrics.average_precision_score on each
  column; mAP = mean over the classes that have at least one positive.
- `equal_error_thresholds`: per class, on validation data, the score threshold where
  precision equals recall. Rule: among the thresholds of
  sklearn.metrics.precision_recall_curve (a sample is positive when score >= threshold),
  take the one minimising |precision - recall|, the lowest such threshold on a tie. When P
  and R cross exactly this is the first (lowest) exact crossing, as in the EMOTIC reference
  code; when they never cross exactly it is the closest approach.
- `class_f1` (C-F1: mean over classes of the per-class F1), `example_f1` (O-F1: mean over
  examples of the per-example F1), `jaccard_per_sample` (|pred ∩ true| / |pred ∪ true|),
  all on binary predictions `scores >= thresholds`.

Classes with no positive example have no AP, no recall and no meaningful F1 (only false
alarms). They are never a silent NaN: every result lists them in
`classes_without_positives`, gives None as their value, leaves them out of the class mean,
and says so in `note`. On validation such a class gets threshold +inf (never predicted),
listed the same way (JSON: None). An example with no true label and no predicted label
counts as a perfect 1.0 in O-F1 and Jaccard (sklearn zero_division=1.0); EMOTIC has none.

Single-label (`multiclass_report`): accuracy, per-class accuracy (recall of each class;
None for a class with no example, listed) and the confusion matrix (rows = true class).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
)

NO_POSITIVES_NOTE = (
    "classes without any positive example are listed in classes_without_positives, "
    "reported as null and left out of the mean"
)


@dataclass(frozen=True)
class ClassMetric:
    """A per-class metric and its mean over the classes where it is defined."""

    per_class: list[float | None]
    mean: float | None
    classes_without_positives: list[int] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    values: np.ndarray  # [C]; +inf for a class without validation positives
    classes_without_positives: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": [None if not np.isfinite(v) else float(v) for v in self.values],
            "classes_without_positives": list(self.classes_without_positives),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        values = np.array([np.inf if v is None else float(v) for v in data["values"]])
        return cls(values, list(data.get("classes_without_positives", [])))


def _check_multilabel(
    y_true: np.ndarray, other: np.ndarray, what: str, other_is_binary: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    other = np.asarray(other)
    if y_true.ndim != 2 or y_true.shape != other.shape:
        raise ValueError(
            f"y_true and {what} must both be [N,C] arrays of the same shape, got "
            f"{y_true.shape} and {other.shape}"
        )
    if y_true.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must be a 0/1 multi-hot array")
    if not np.isfinite(other.astype(np.float64)).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if other_is_binary:
        if not np.isin(other, (0, 1)).all():
            raise ValueError(f"{what} must be a 0/1 array of predicted labels")
        other = other.astype(np.int64)
    return y_true.astype(np.int64), other


def _positive_classes(y_true: np.ndarray) -> tuple[np.ndarray, list[int]]:
    has_positive = y_true.sum(axis=0) > 0
    return has_positive, [int(c) for c in np.flatnonzero(~has_positive)]


def _class_metric(values: np.ndarray, has_positive: np.ndarray, missing: list[int]) -> ClassMetric:
    per_class = [float(v) if ok else None for v, ok in zip(values, has_positive)]
    mean = float(np.mean(values[has_positive])) if has_positive.any() else None
    return ClassMetric(per_class, mean, missing, NO_POSITIVES_NOTE if missing else None)


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> ClassMetric:
    """Per-class AP (sklearn) and mAP over the classes with positives."""
    y_true, scores = _check_multilabel(y_true, scores, "scores")
    has_positive, missing = _positive_classes(y_true)
    values = np.zeros(y_true.shape[1])
    for c in np.flatnonzero(has_positive):
        values[c] = average_precision_score(y_true[:, c], scores[:, c])
    return _class_metric(values, has_positive, missing)


def equal_error_thresholds(y_true: np.ndarray, scores: np.ndarray) -> Thresholds:
    """Per-class thresholds where precision = recall (see the module docstring for the rule)."""
    y_true, scores = _check_multilabel(y_true, scores, "scores")
    has_positive, missing = _positive_classes(y_true)
    values = np.full(y_true.shape[1], np.inf)
    for c in np.flatnonzero(has_positive):
        precision, recall, thresholds = precision_recall_curve(y_true[:, c], scores[:, c])
        # The last (precision 1, recall 0) point has no threshold; thresholds are increasing,
        # and argmin returns the first minimum, i.e. the lowest threshold on a tie.
        gap = np.abs(precision[:-1] - recall[:-1])
        values[c] = thresholds[int(np.argmin(gap))]
    return Thresholds(values, missing)


def binarize(scores: np.ndarray, thresholds: Thresholds | np.ndarray) -> np.ndarray:
    values = thresholds.values if isinstance(thresholds, Thresholds) else np.asarray(thresholds, float)
    scores = np.asarray(scores)
    if scores.ndim != 2 or values.shape != (scores.shape[1],):
        raise ValueError(f"need scores [N,C] and C thresholds, got {scores.shape} and {values.shape}")
    return (scores >= values[None, :]).astype(np.int64)


def class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> ClassMetric:
    """C-F1: per-class F1 = 2TP / (2TP + FP + FN), averaged over classes with positives."""
    y_true, y_pred = _check_multilabel(y_true, y_pred, "y_pred", other_is_binary=True)
    has_positive, missing = _positive_classes(y_true)
    values = f1_score(y_true, y_pred, average=None, zero_division=0.0)
    return _class_metric(np.asarray(values, dtype=float), has_positive, missing)


def example_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """O-F1: mean over examples of 2|pred ∩ true| / (|pred| + |true|)."""
    y_true, y_pred = _check_multilabel(y_true, y_pred, "y_pred", other_is_binary=True)
    return float(f1_score(y_true, y_pred, average="samples", zero_division=1.0))


def jaccard_per_sample(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """|pred ∩ true| / |pred ∪ true| for each example, [N]."""
    y_true, y_pred = _check_multilabel(y_true, y_pred, "y_pred", other_is_binary=True)
    intersection = (y_true & y_pred).sum(axis=1)
    union = (y_true | y_pred).sum(axis=1)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def multilabel_report(
    y_true: np.ndarray,
    scores: np.ndarray,
    thresholds: Thresholds | np.ndarray,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """EMOTIC metrics as a JSON-able dict; `thresholds` come from the validation split."""
    y_true, scores = _check_multilabel(y_true, scores, "scores")
    if class_names is not None and len(class_names) != y_true.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {y_true.shape[1]} classes")
    y_pred = binarize(scores, thresholds)
    ap = average_precision(y_true, scores)
    f1 = class_f1(y_true, y_pred)
    threshold_values = thresholds if isinstance(thresholds, Thresholds) else Thresholds(
        np.asarray(thresholds, float), []
    )
    return {
        "num_examples": int(y_true.shape[0]),
        "class_names": list(class_names) if class_names is not None else None,
        "mAP": ap.mean,
        "per_class_ap": ap.per_class,
        "c_f1": f1.mean,
        "per_class_f1": f1.per_class,
        "o_f1": example_f1(y_true, y_pred),
        "jaccard": float(jaccard_per_sample(y_true, y_pred).mean()),
        "thresholds": threshold_values.to_dict(),
        "classes_without_positives": ap.classes_without_positives,
        "note": ap.note,
    }


def multiclass_report(
    y_true: np.ndarray,
    scores_or_pred: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """CAER-S metrics as a JSON-able dict. `scores_or_pred`: logits [N,C] or class ids [N]."""
    y_true = np.asarray(y_true)
    pred = np.asarray(scores_or_pred)
    if pred.ndim == 2:
        if pred.shape[1] != num_classes:
            raise ValueError(f"scores have {pred.shape[1]} columns for {num_classes} classes")
        pred = pred.argmax(axis=1)
    if y_true.ndim != 1 or pred.shape != y_true.shape or y_true.size == 0:
        raise ValueError(f"need y_true [N] and predictions [N] (or scores [N,C]), got {y_true.shape} and {pred.shape}")
    if y_true.min() < 0 or y_true.max() >= num_classes or pred.min() < 0 or pred.max() >= num_classes:
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    matrix = confusion_matrix(y_true, pred, labels=np.arange(num_classes))
    support = matrix.sum(axis=1)
    has_examples = support > 0
    per_class = np.diag(matrix) / np.maximum(support, 1)
    missing = [int(c) for c in np.flatnonzero(~has_examples)]
    return {
        "num_examples": int(y_true.size),
        "class_names": list(class_names) if class_names is not None else None,
        "accuracy": float((pred == y_true).mean()),
        "per_class_accuracy": [float(v) if ok else None for v, ok in zip(per_class, has_examples)],
        "mean_class_accuracy": float(per_class[has_examples].mean()),
        "confusion_matrix": matrix.tolist(),
        "classes_without_positives": missing,
        "note": NO_POSITIVES_NOTE if missing else None,
    }


VAD_DIMENSIONS = ("valence", "arousal", "dominance")


def vad_mae(predicted: np.ndarray, truth: np.ndarray, known: np.ndarray) -> dict[str, float | None]:
    """Mean absolute error of each continuous dimension (and their mean) over the persons that
    have continuous labels: `mae_valence`, `mae_arousal`, `mae_dominance`, `mae_vad`."""
    predicted, truth, known = np.asarray(predicted, float), np.asarray(truth, float), np.asarray(known, bool)
    if predicted.shape != truth.shape or predicted.ndim != 2 or predicted.shape[1] != 3:
        raise ValueError(f"VAD predictions and labels must both be [S,3], got {predicted.shape} and {truth.shape}")
    if not known.any():
        return {**{f"mae_{n}": None for n in VAD_DIMENSIONS}, "mae_vad": None, "vad_persons": 0}
    errors = np.abs(predicted[known] - truth[known])
    out: dict[str, float | None] = {f"mae_{n}": float(errors[:, i].mean()) for i, n in enumerate(VAD_DIMENSIONS)}
    out["mae_vad"] = float(errors.mean())
    out["vad_persons"] = int(known.sum())
    return out
