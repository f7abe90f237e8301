"""core/evaluation/detection_protocol.py: COCO matching of annotated persons to detected
boxes, the detection-aware mAP (BENet section 4.2) on a case computed by hand, and the
person detector's COCO AP."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import Params

from core.evaluation.detection_protocol import (
    DEFAULT_IOU_THRESHOLDS,
    detection_aware_map,
    match_detections,
    person_detector_ap,
)
from core.evaluation.metrics import average_precision, multiclass_report

THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]

# One image, two annotated people: A is detected at IoU exactly 0.6, B is missed.
PERSON_A = [0, 0, 10, 10]  # area 100
PERSON_B = [50, 50, 70, 90]
DETECTION_A = [0, 0, 10, 6]  # inside A, area 60: IoU = 60 / (100 + 60 - 60) = 0.6
GT = [np.array([PERSON_A, PERSON_B], float)]
DETS = [np.array([DETECTION_A], float)]
DET_SCORES = [np.array([0.8])]
# labels over 3 classes, and the emotion scores the model gives from the detected box
TARGETS = np.array([[1, 0, 1],   # A
                    [0, 1, 1]])  # B
SCORES_FROM_DETECTION_A = np.array([0.9, 0.2, 0.4])


def xywh(box):
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def test_the_hand_made_boxes_have_iou_exactly_0_6():
    iou = mask_utils.iou([xywh(DETECTION_A)], [xywh(PERSON_A), xywh(PERSON_B)], [0, 0])
    assert iou[0, 0] == 0.6 and iou[0, 1] == 0.0


def test_default_thresholds_are_cocos_own():
    # COCO's linspace: its 0.6 is the double nearest 0.6 (its 0.9 is 0.8999999999999999), while
    # np.arange(0.5, 0.96, 0.05)[2] is 0.6000000000000001, which a box at IoU 0.6 does not reach
    assert np.array_equal(DEFAULT_IOU_THRESHOLDS, Params(iouType="bbox").iouThrs)
    assert np.allclose(DEFAULT_IOU_THRESHOLDS, THRESHOLDS, rtol=0, atol=1e-15)
    assert DEFAULT_IOU_THRESHOLDS[2] == 0.6 and np.arange(0.5, 0.96, 0.05)[2] > 0.6


def test_matching_uses_iou_greater_or_equal_threshold():
    # COCOeval.evaluateImg skips a pair only when iou < t: IoU 0.6 matches at t = 0.5, 0.55 and
    # 0.6 (three thresholds, not six), and not at 0.65 and above. B is never matched.
    matches = match_detections(GT, DETS, DET_SCORES)
    expected = np.array([[0, -1]] * 3 + [[-1, -1]] * 7)
    assert np.array_equal(matches.matched_detection, expected)
    assert np.array_equal(matches.person_image, [0, 0])
    assert np.allclose(matches.match_rate(), [0.5] * 3 + [0.0] * 7)
    # the same box against a threshold a hair above 0.6 (np.arange's "0.6") is a miss
    above = match_detections(GT, DETS, DET_SCORES, iou_thresholds=[np.arange(0.5, 0.96, 0.05)[2]])
    assert np.array_equal(above.matched_detection, [[-1, -1]])


def test_detection_aware_map_equals_the_hand_computation():
    # Rows are persons A, B; AP per class = sum over ranks of (R_n - R_{n-1}) * P_n (sklearn).
    # IoU 0.5 (A matched, B missed -> zeros): scores A = [0.9, 0.2, 0.4], B = [0, 0, 0]
    #   class 0: y = [1, 0]: A ranked first and positive -> AP 1
    #   class 1: y = [0, 1]: A (negative, 0.2) above B (positive, 0) -> P = 1/2 at R = 1 -> AP 1/2
    #   class 2: y = [1, 1]: every example positive -> AP 1
    #   mAP = (1 + 1/2 + 1) / 3 = 5/6
    # IoU 0.75 (nobody matched): all scores tie at 0, one threshold with R = 1, P = prevalence
    #   class 0: 1/2, class 1: 1/2, class 2: 1 -> mAP = (1/2 + 1/2 + 1) / 3 = 2/3
    # Mean over the 10 thresholds: matched at 0.5, 0.55, 0.6 (IoU 0.6 >= t), missed at the 7 others:
    #   (3 * 5/6 + 7 * 2/3) / 10 = (15/6 + 28/6) / 10 = 43/60
    matches = match_detections(GT, DETS, DET_SCORES)
    result = detection_aware_map(TARGETS, [SCORES_FROM_DETECTION_A[None, :]], matches)
    at = dict(zip(result["iou_thresholds"], result["mAP_per_threshold"]))
    assert at[0.5] == pytest.approx(5 / 6, abs=1e-12)
    assert at[0.75] == pytest.approx(2 / 3, abs=1e-12)
    assert result["mAP_per_threshold"] == pytest.approx([5 / 6] * 3 + [2 / 3] * 7, abs=1e-12)
    assert result["mAP_mean"] == pytest.approx(43 / 60, abs=1e-12)
    assert result["per_class_ap"][0] == pytest.approx([1.0, 0.5, 1.0], abs=1e-12)
    assert result["per_class_ap"][5] == pytest.approx([0.5, 0.5, 1.0], abs=1e-12)
    assert result["match_rate"] == pytest.approx([0.5] * 3 + [0.0] * 7)
    assert result["task"] == "multilabel" and result["num_persons"] == 2


def test_a_callable_predictor_gives_the_same_numbers_and_sees_the_detected_box():
    calls = []

    def predict(image, box):
        calls.append((image, box.tolist()))
        return SCORES_FROM_DETECTION_A

    matches = match_detections(GT, DETS, DET_SCORES)
    by_call = detection_aware_map(TARGETS, predict, matches)
    precomputed = detection_aware_map(TARGETS, [SCORES_FROM_DETECTION_A[None, :]], matches)
    assert by_call["mAP_per_threshold"] == precomputed["mAP_per_threshold"]
    assert calls == [(0, [float(v) for v in DETECTION_A])]  # once, cached across thresholds


def test_perfect_detections_give_the_annotated_box_map_at_every_threshold():
    rng = np.random.default_rng(0)
    counts = [3, 0, 4, 5]
    gt = [np.array([[20 * k, 10, 20 * k + 15, 40] for k in range(n)], float).reshape(-1, 4) for n in counts]
    targets = (rng.random((sum(counts), 4)) < 0.4).astype(int)
    targets[0] = 1
    scores = rng.random((sum(counts), 4))
    # detections are the annotated boxes, listed in reverse order within each image
    starts = np.cumsum([0] + counts)
    dets = [g[::-1] for g in gt]
    det_scores = [rng.random(len(g)) for g in gt]
    per_det = [scores[starts[i]:starts[i + 1]][::-1] for i in range(len(gt))]
    matches = match_detections(gt, dets, det_scores)
    assert np.array_equal(matches.matched_detection[0], np.concatenate([np.arange(n)[::-1] for n in counts]))
    result = detection_aware_map(targets, per_det, matches)
    expected = average_precision(targets, scores).mean
    assert result["mAP_per_threshold"] == pytest.approx([expected] * 10, abs=1e-12)
    assert result["match_rate"] == [1.0] * 10


def test_a_detection_overlapping_two_people_is_matched_to_one_only():
    # A = [0,0,10,10], B = [5,0,15,10]; the box [2,0,12,10] has IoU 80/120 with A, 70/130 with B
    gt = [np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float)]
    matches = match_detections(gt, [np.array([[2, 0, 12, 10]], float)], [np.array([0.9])], iou_thresholds=[0.5])
    assert np.array_equal(matches.matched_detection, [[0, -1]])


def test_matching_is_greedy_by_detection_score():
    # Two boxes on one person: the better box (IoU 1) has the lower score. At t = 0.5 the
    # higher-scored box (IoU 0.6) is taken first and wins; at t = 0.65 only the better box qualifies.
    gt = [np.array([PERSON_A], float)]
    dets = [np.array([PERSON_A, DETECTION_A], float)]
    matches = match_detections(gt, dets, [np.array([0.3, 0.9])], iou_thresholds=[0.5, 0.65])
    assert np.array_equal(matches.matched_detection, [[1], [0]])


def test_persons_and_detections_are_mapped_back_across_images():
    gt = [np.array([[0, 0, 10, 10]], float), np.zeros((0, 4)), [], np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)]
    dets = [np.array([[30, 30, 40, 40], [0, 0, 10, 10]], float), np.array([[0, 0, 5, 5]], float), [],
            np.array([[20, 0, 30, 10], [0, 0, 10, 10]], float)]
    scores = [np.array([0.9, 0.1]), np.array([0.5]), [], np.array([0.2, 0.3])]
    matches = match_detections(gt, dets, scores, iou_thresholds=[0.5])
    assert np.array_equal(matches.person_image, [0, 3, 3])
    assert np.array_equal(matches.matched_detection, [[1, 1, 0]])
    assert matches.max_dets == 2 and np.array_equal(matches.num_detections, [2, 1, 0, 2])


def test_no_detections_at_all_matches_nobody():
    matches = match_detections(GT, [[]], [[]])
    assert (matches.matched_detection == -1).all() and matches.match_rate().tolist() == [0.0] * 10


def test_single_label_counts_a_missed_person_as_wrong():
    # B's true class is 0, which is also the argmax of an all-zero row: it must still be wrong.
    labels = np.array([0, 0])
    matches = match_detections(GT, DETS, DET_SCORES)
    result = detection_aware_map(labels, [SCORES_FROM_DETECTION_A[None, :]], matches)
    assert result["task"] == "multiclass"
    assert result["accuracy_per_threshold"] == [0.5] * 3 + [0.0] * 7
    assert result["accuracy_mean"] == pytest.approx(0.15)  # 3 * 0.5 / 10
    assert result["mean_class_accuracy_per_threshold"] == [0.5] * 3 + [0.0] * 7
    assert result["classes_without_positives"] == [1, 2]


def test_single_label_with_perfect_detections_equals_multiclass_report():
    rng = np.random.default_rng(1)
    gt = [np.array([[10 * k, 0, 10 * k + 8, 20] for k in range(6)], float)]
    labels = rng.integers(0, 3, 6)
    scores = rng.random((6, 3))
    matches = match_detections(gt, gt, [np.ones(6)], iou_thresholds=[0.5, 0.9])
    result = detection_aware_map(labels, [scores], matches)
    report = multiclass_report(labels, scores, 3)
    assert result["accuracy_per_threshold"] == pytest.approx([report["accuracy"]] * 2)
    assert result["mean_class_accuracy_per_threshold"] == pytest.approx([report["mean_class_accuracy"]] * 2)


# --- the detector's COCO AP ---------------------------------------------------------------


def _people(n_images=4):
    return [np.array([[10, 10, 60, 110], [100, 20, 140, 100]], float) + 7 * i for i in range(n_images)]


def test_person_detector_ap_of_perfect_detections_is_one():
    gt = _people()
    result = person_detector_ap(gt, gt, [np.array([0.9, 0.8])] * len(gt))
    assert result["AP"] == result["AP50"] == result["AP75"] == 1.0
    assert result["num_persons"] == 8 and "Average Precision" in result["log"]


def test_person_detector_ap_at_iou_0_6():
    gt = _people()
    # keep the top 60% of each box (heights 100 and 80 -> 60 and 48 pixels): IoU exactly 0.6
    dets = [np.column_stack([g[:, 0], g[:, 1], g[:, 2], g[:, 1] + np.round(0.6 * (g[:, 3] - g[:, 1]))]) for g in gt]
    for g, d in zip(gt, dets):
        iou = mask_utils.iou([xywh(b) for b in d], [xywh(b) for b in g], [0, 0])
        assert np.diag(iou).tolist() == [0.6, 0.6]
    result = person_detector_ap(gt, dets, [np.array([0.9, 0.8])] * len(gt))
    assert result["AP50"] == 1.0 and result["AP75"] == 0.0
    # AP@[.5:.95]: precision 1 at the 3 thresholds <= 0.6 (IoU >= t), 0 at the 7 others
    assert result["AP"] == pytest.approx(0.3, abs=1e-12)


def test_person_detector_ap_of_random_boxes_is_near_zero():
    rng = np.random.default_rng(2)
    gt = _people()
    dets = []
    for _ in gt:
        corner = rng.uniform(300, 900, (5, 2))
        dets.append(np.column_stack([corner, corner + rng.uniform(5, 30, (5, 2))]))
    result = person_detector_ap(gt, dets, [rng.random(5) for _ in gt])
    assert result["AP"] < 0.01 and result["AP50"] < 0.01


# --- errors -------------------------------------------------------------------------------


def test_mismatched_image_counts_are_refused():
    with pytest.raises(ValueError, match="same images"):
        match_detections(GT, DETS + DETS, DET_SCORES)


def test_boxes_and_scores_of_different_lengths_name_the_image():
    with pytest.raises(ValueError, match="image 1: 1 detected boxes but 2 detection scores"):
        match_detections(GT * 2, DETS * 2, [np.array([0.8]), np.array([0.8, 0.7])])


@pytest.mark.parametrize("bad_box", [[5, 0, 5, 10], [6, 0, 5, 10], [0, 10, 10, 3]])
def test_degenerate_boxes_name_the_image(bad_box):
    with pytest.raises(ValueError, match=r"image 1: detected boxes \[0\] have x2 <= x1 or y2 <= y1"):
        match_detections(GT * 2, [DETS[0], np.array([bad_box], float)], DET_SCORES * 2)
    with pytest.raises(ValueError, match="image 0: annotated boxes"):
        person_detector_ap([np.array([bad_box], float)], DETS, DET_SCORES)


def test_nan_names_the_image():
    with pytest.raises(ValueError, match="image 1: annotated boxes contain NaN"):
        match_detections([GT[0], np.array([[0, 0, np.nan, 5]])], DETS * 2, DET_SCORES * 2)
    with pytest.raises(ValueError, match="image 0: detection scores contain NaN"):
        match_detections(GT, DETS, [np.array([np.nan])])
    matches = match_detections(GT, DETS, DET_SCORES)
    with pytest.raises(ValueError, match="image 0: precomputed scores contain NaN"):
        detection_aware_map(TARGETS, [np.array([[np.nan, 0, 0]])], matches)


def test_targets_and_precomputed_scores_must_fit_the_matches():
    matches = match_detections(GT, DETS, DET_SCORES)
    with pytest.raises(ValueError, match="one row per annotated person"):
        detection_aware_map(TARGETS[:1], [SCORES_FROM_DETECTION_A[None, :]], matches)
    with pytest.raises(ValueError, match="image 0: 1 detected boxes but precomputed scores of shape"):
        detection_aware_map(TARGETS, [np.zeros((2, 3))], matches)
    with pytest.raises(ValueError, match="precomputed scores list 2 images"):
        detection_aware_map(TARGETS, [np.zeros((1, 3))] * 2, matches)
