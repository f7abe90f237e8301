"""Evaluation: known predictions give known numbers; the stage writes metrics, thresholds, plots."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from core.evaluation import evaluate
from core.workspace import Workspace

CLASSES = ["A", "B", "C"]


def test_multilabel_results_on_hand_made_predictions():
    # val: class A separable at 0.5, B at 0.3, C has no positives
    val_y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    val_s = np.array([[0.9, 0.1, 0.2], [0.6, 0.4, 0.1], [0.2, 0.3, 0.3], [0.1, 0.1, 0.4]])
    test_y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    test_s = np.array([[0.8, 0.2, 0.1], [0.55, 0.35, 0.2], [0.4, 0.5, 0.1], [0.1, 0.0, 0.9]])
    freq = np.array([0.5, 0.25, 0.1])
    results, thresholds = evaluate.multilabel_results(CLASSES, (val_y, val_s), (test_y, test_s), freq)

    # thresholds where precision == recall on val: A -> 0.6 (P=R=1), B -> 0.3 (P=R=1); C never
    assert thresholds.values[0] == pytest.approx(0.6) and thresholds.values[1] == pytest.approx(0.3)
    assert np.isinf(thresholds.values[2]) and results["thresholds_without_val_positives"] == ["C"]
    # per-class AP equals sklearn; mAP is their mean
    for i, name in enumerate(CLASSES):
        assert results["per_class"][name]["AP"] == pytest.approx(average_precision_score(test_y[:, i], test_s[:, i]))
    assert results["mAP"] == pytest.approx(np.mean([results["per_class"][c]["AP"] for c in CLASSES]))
    # predictions at the thresholds: A: rows 0 (0.8) ; B: rows 1, 2 ; C: none
    # per-example F1: row0 1.0, row1 1.0, row2 2*1/(1+2)=0.667, row3 0 -> O-F1 = 0.6667
    assert results["o_f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    # Jaccard: 1, 1, 1/2, 0
    assert results["jaccard"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    # C-F1: A: tp1 fn1 -> 2/3; B: tp2 -> 1; C: fn1 -> 0
    assert results["c_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # the label-frequency baseline scores every person alike: AP = prevalence
    assert results["baseline_mAP"] == pytest.approx(np.mean(test_y.mean(axis=0)))


def test_multiclass_results_and_majority_baseline():
    val = (np.array([0, 1, 2]), np.eye(3))
    test_y = np.array([0, 0, 1, 2, 2])
    test_s = np.eye(3)[[0, 1, 1, 2, 0]]
    results, thresholds = evaluate.multiclass_results(CLASSES, val, (test_y, test_s), np.array([10, 3, 5]))
    assert thresholds is None
    assert results["accuracy"] == pytest.approx(3 / 5)
    assert results["baseline_accuracy"] == pytest.approx(2 / 5)  # always class 0
    assert results["per_class"]["A"]["accuracy"] == pytest.approx(0.5)
    assert results["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert results["val_accuracy"] == 1.0


def test_evaluate_stage_on_a_trained_tiny_model(tiny_workspace, ray_local, tmp_path):
    from core.inference import load_model_package
    from core.training import trainer

    paths = tiny_workspace.train_paths("evaluated")
    trainer.run(tiny_workspace.params, paths, track=False)
    eval_paths = paths.moved(thresholds_file=tmp_path / "thresholds.json", metrics_file=tmp_path / "metrics.json",
                             details_file=tmp_path / "metrics_per_class.json", plots_dir=tmp_path / "plots")
    results = evaluate.run(eval_paths, batch_size=4)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["mAP"] == pytest.approx(results["mAP"]) and written["task"] == "multilabel"
    # the DVC metrics file is the short table; per-class figures live beside it
    assert set(written) == {"task", "dataset", "model", "num_examples", "mAP", "baseline_mAP", "val_mAP", "c_f1",
                            "o_f1", "jaccard", "test_data_version"}
    assert written["model"] == "rrla"
    # what the promotion gate compares on: the version of the test data the score read
    from core.evaluation.test_data import test_data_version

    assert written["test_data_version"] == test_data_version(eval_paths) is not None
    details = json.loads((tmp_path / "metrics_per_class.json").read_text())
    assert set(details["per_class"]) == set(load_model_package(paths.model_dir).classes)
    assert details["mAP"] == written["mAP"]

    # the numbers are those of the scoring path recomputed independently
    package = load_model_package(paths.model_dir)
    (val_y, val_s), (test_y, test_s) = (evaluate.score_split(package, eval_paths, s, 3)[:2] for s in ("val", "test"))
    present = test_y.sum(axis=0) > 0
    expected = np.mean([average_precision_score(test_y[:, c], test_s[:, c]) for c in np.flatnonzero(present)])
    assert written["mAP"] == pytest.approx(expected)
    thresholds = json.loads((tmp_path / "thresholds.json").read_text())
    assert len(thresholds["thresholds"]) == 26 and thresholds["classes"] == package.classes
    assert (tmp_path / "plots" / "per_class_ap.json").is_file() and (tmp_path / "plots" / "pr_curves.png").is_file()


def test_missing_model_is_a_clear_error(tmp_path):
    from core.errors import UserError

    with pytest.raises(UserError, match="run the train stage"):
        evaluate.run(Workspace.at(tmp_path, data_root=tmp_path, model_dir=tmp_path / "none"), batch_size=4)
