"""core/evaluation/metrics.py against scikit-learn and against numbers computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, jaccard_score

from core.evaluation.metrics import (
    Thresholds,
    average_precision,
    binarize,
    class_f1,
    equal_error_thresholds,
    example_f1,
    jaccard_per_sample,
    multiclass_report,
    multilabel_report,
)

# --- AP / mAP -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_equals_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((60, 8)) < 0.3).astype(int)
    y_true[0] = 1  # every class has a positive
    scores = rng.standard_normal((60, 8))
    result = average_precision(y_true, scores)
    assert np.allclose(result.per_class, average_precision_score(y_true, scores, average=None))
    assert np.isclose(result.mean, average_precision_score(y_true, scores, average="macro"))
    assert result.classes_without_positives == [] and result.note is None


def test_ap_with_ties_and_a_class_without_positives():
    rng = np.random.default_rng(3)
    y_true = (rng.random((40, 5)) < 0.4).astype(int)
    y_true[:, 2] = 0
    y_true[0, [0, 1, 3, 4]] = 1
    scores = np.round(rng.random((40, 5)), 1)  # many ties
    result = average_precision(y_true, scores)
    keep = [0, 1, 3, 4]
    assert result.classes_without_positives == [2]
    assert result.per_class[2] is None and "left out of the mean" in result.note
    assert np.allclose([result.per_class[c] for c in keep],
                       average_precision_score(y_true[:, keep], scores[:, keep], average=None))
    assert np.isclose(result.mean, average_precision_score(y_true[:, keep], scores[:, keep]))
    json.dumps(result.to_dict())  # no NaN sneaks into the report


def test_ap_by_hand():
    # positives ranked 1st and 3rd: AP = (1/1 + 2/3) / 2
    assert np.isclose(average_precision([[1], [0], [1]], [[0.9], [0.8], [0.7]]).mean, 5 / 6)
    # all scores tied: one operating point, precision = prevalence
    assert np.isclose(average_precision([[1], [0], [0], [1]], [[0.5]] * 4).mean, 0.5)


# --- thresholds -----------------------------------------------------------------------


def test_thresholds_where_precision_equals_recall():
    # columns: exact crossing | no exact crossing (ties) | two equal gaps | no positive
    y_true = np.array([[1, 0, 1, 0, 0, 0]] * 3 + [[0] * 6]).T
    scores = np.array([
        [0.9, 0.9, 0.4, 0.1],
        [0.8, 0.5, 0.1, 0.2],
        [0.7, 0.5, 0.3, 0.3],
        [0.1, 0.1, 0.3, 0.4],
        [0.05, 0.05, 0.2, 0.5],
        [0.01, 0.01, 0.3, 0.6],
    ])
    # column 0: at 0.8 P = R = 1/2 -> 0.8 (exact crossing)
    # column 1: the tie at 0.5 means P and R never meet; gaps 2/3, .6, .5 at .01, .05, .1,
    #           1/3 at 0.5 (P 2/3, R 1), 1/2 at 0.9 (P 1, R 1/2) -> closest at 0.5
    # column 2: y [1,0,1,0,0,0], s [.4,.1,.3,.3,.2,.3]: gaps .5 at 0.3 and at 0.4 -> the lower, 0.3
    result = equal_error_thresholds(y_true, scores)
    assert np.allclose(result.values[:3], [0.8, 0.5, 0.3])
    assert result.values[3] == np.inf and result.classes_without_positives == [3]
    assert result.to_dict() == {"values": [0.8, 0.5, 0.3, None], "classes_without_positives": [3]}
    assert np.array_equal(Thresholds.from_dict(result.to_dict()).values, result.values)
    assert binarize(scores, result)[:, 3].sum() == 0


# --- C-F1, O-F1, Jaccard --------------------------------------------------------------

Y_TRUE = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
Y_PRED = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])


def test_c_f1_by_hand():
    # class 0: TP 2 -> 1; class 1: TP 1 FP 1 FN 1 -> 0.5; class 2: TP 0 -> 0; class 3: no positive
    result = class_f1(Y_TRUE, Y_PRED)
    assert result.per_class == [1.0, 0.5, 0.0, None]
    assert np.isclose(result.mean, 0.5)
    assert result.classes_without_positives == [3]


def test_o_f1_by_hand_and_equal_to_sklearn():
    # per example: 2*1/(2+2), 2*1/(1+1), 2*1/(2+1), 0  -> mean 0.541666...
    assert np.isclose(example_f1(Y_TRUE, Y_PRED), (0.5 + 1 + 2 / 3 + 0) / 4)
    assert np.isclose(example_f1(Y_TRUE, Y_PRED), f1_score(Y_TRUE, Y_PRED, average="samples"))


def test_jaccard_by_hand_and_equal_to_sklearn():
    per_sample = jaccard_per_sample(Y_TRUE, Y_PRED)
    assert np.allclose(per_sample, [1 / 3, 1.0, 0.5, 0.0])
    assert np.isclose(per_sample.mean(), jaccard_score(Y_TRUE, Y_PRED, average="samples"))
    empty = np.zeros((1, 4), dtype=int)
    assert jaccard_per_sample(empty, empty).tolist() == [1.0]
    assert example_f1(empty, empty) == 1.0


def test_random_f1_and_jaccard_equal_sklearn():
    rng = np.random.default_rng(5)
    y_true = (rng.random((50, 6)) < 0.3).astype(int)
    y_true[np.arange(50), rng.integers(0, 6, 50)] = 1
    y_true[:, 5] = 0
    y_pred = (rng.random((50, 6)) < 0.3).astype(int)
    result = class_f1(y_true, y_pred)
    assert np.allclose(result.per_class[:5], f1_score(y_true[:, :5], y_pred[:, :5], average=None))
    assert np.isclose(example_f1(y_true, y_pred), f1_score(y_true, y_pred, average="samples"))
    assert np.isclose(jaccard_per_sample(y_true, y_pred).mean(),
                      jaccard_score(y_true, y_pred, average="samples"))


def test_multilabel_report_end_to_end():
    scores = np.where(Y_PRED == 1, 0.9, 0.1)
    report = multilabel_report(Y_TRUE, scores, np.full(4, 0.5), class_names=["a", "b", "c", "d"])
    assert np.isclose(report["c_f1"], 0.5)
    assert np.isclose(report["o_f1"], (0.5 + 1 + 2 / 3) / 4)
    assert np.isclose(report["jaccard"], (1 / 3 + 1 + 0.5) / 4)
    assert report["classes_without_positives"] == [3] and report["per_class_ap"][3] is None
    assert np.isclose(report["mAP"], average_precision_score(Y_TRUE[:, :3], scores[:, :3]))
    json.dumps(report)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0/1 multi-hot"):
        average_precision(np.full((3, 2), 2), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.ones((3, 2)), np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="0/1 array of predicted labels"):
        class_f1(Y_TRUE, Y_PRED * 0.5)


# --- single label ---------------------------------------------------------------------


def test_multiclass_report_by_hand():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 0])
    report = multiclass_report(y_true, pred, num_classes=4)
    assert np.isclose(report["accuracy"], 4 / 6)
    assert report["per_class_accuracy"][:3] == pytest.approx([0.5, 1.0, 2 / 3])
    assert report["per_class_accuracy"][3] is None and report["classes_without_positives"] == [3]
    assert np.isclose(report["mean_class_accuracy"], (0.5 + 1 + 2 / 3) / 3)
    assert report["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    logits = np.eye(4)[pred] * 3.0
    assert multiclass_report(y_true, logits, num_classes=4) == report
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\)"):
        multiclass_report(np.array([0, 5]), np.array([0, 1]), num_classes=4)
