"""Evaluate the best checkpoint: thresholds on val, metrics and plots on test.

Run by the evaluate stage (`python -m stages.evaluate`); registration re-scores a registered
model through `evaluate_model` on the workspace's current data.

Multi-label (EMOTIC): per-class thresholds where precision = recall on val, then on test
mAP, per-class AP, C-F1, O-F1 and mean Jaccard, next to the label-frequency baseline
(every person scored with the training frequency of each class). Single-label (CAER-S):
accuracy, per-class accuracy and the confusion matrix next to the majority-class baseline.
Plots for `dvc plots show`: per-class AP bars, PR curves, confusion matrix. Everything
is logged to the training run in MLflow.

`metrics_file` (reports/metrics.json, what `dvc metrics show` prints) holds only the headline
figures, so the table stays readable; per-class AP, F1, thresholds, the confusion matrix and
the notes go to `details_file` (reports/metrics_per_class.json) and the plots.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core.evaluation import metrics
from core.evaluation.test_data import test_data_version
from core.workspace import Workspace

# The headline figures: reports/metrics.json, the DVC metrics table.
HEADLINE = {
    "multilabel": ("mAP", "baseline_mAP", "val_mAP", "c_f1", "o_f1", "jaccard"),
    "multiclass": ("accuracy", "baseline_accuracy", "val_accuracy", "mean_class_accuracy"),
}


class SplitScores(NamedTuple):
    targets: np.ndarray
    scores: np.ndarray
    continuous: np.ndarray | None   # [S,3] predicted VAD (models that predict it)
    vad: np.ndarray | None          # [S,3] annotated VAD and
    has_vad: np.ndarray | None      # [S] which persons have it
    face_fallbacks: int | None      # persons whose face view is the fallback box (models reading a face)
    seconds: float                  # wall time of scoring, image decoding included


def score_split(package, paths: Workspace, split: str, batch_size: int, loader_workers: int = 0) -> SplitScores:
    """Targets and scores of one split through the training Dataset and the trained model."""
    from torch.utils.data import DataLoader

    from core.data.dataset import FACE_VIEWS
    from core.data.person_inputs import split_dataset
    from core.inference import predict_loader

    dataset = split_dataset(package.model, split, paths, kind=package.params["data"]["kind"])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers)
    started = time.perf_counter()
    indices, scores, continuous = predict_loader(package.model, loader, with_continuous=True)
    seconds = time.perf_counter() - started
    ordered = np.empty_like(scores)
    ordered[indices] = scores
    vad = has_vad = None
    if continuous is not None:
        ordered_vad = np.empty_like(continuous)
        ordered_vad[indices] = continuous
        continuous = ordered_vad
        vad, has_vad = dataset.vad_targets()
    reads_face = bool(FACE_VIEWS & set(dataset.pixel_views))
    return SplitScores(dataset.targets(), ordered, continuous, vad, has_vad,
                       dataset.face_fallbacks if reads_face else None, seconds)


def multilabel_results(classes: list[str], val: tuple, test: tuple, train_freq: np.ndarray) -> dict[str, Any]:
    (val_y, val_s), (test_y, test_s) = val, test
    thresholds = metrics.equal_error_thresholds(val_y, val_s)
    report = metrics.multilabel_report(test_y, test_s, thresholds, classes)
    baseline = metrics.average_precision(test_y, np.tile(train_freq, (len(test_y), 1)))
    per_class = {
        name: {"AP": report["per_class_ap"][i], "F1": report["per_class_f1"][i],
               "threshold": report["thresholds"]["values"][i], "test_positives": int(test_y[:, i].sum())}
        for i, name in enumerate(classes)
    }
    return {
        "task": "multilabel", "split": "test", "num_examples": report["num_examples"],
        "mAP": report["mAP"], "baseline_mAP": baseline.mean, "val_mAP": metrics.average_precision(val_y, val_s).mean,
        "c_f1": report["c_f1"], "o_f1": report["o_f1"], "jaccard": report["jaccard"],
        "per_class": per_class,
        "classes_without_positives": [classes[i] for i in report["classes_without_positives"]],
        "thresholds_without_val_positives": [classes[i] for i in thresholds.classes_without_positives],
        "note": report["note"],
    }, thresholds


def multiclass_results(classes: list[str], val: tuple, test: tuple, train_counts: np.ndarray) -> dict[str, Any]:
    (val_y, val_s), (test_y, test_s) = val, test
    report = metrics.multiclass_report(test_y, test_s, len(classes), classes)
    majority = int(np.argmax(train_counts))
    return {
        "task": "multiclass", "split": "test", "num_examples": report["num_examples"],
        "accuracy": report["accuracy"], "baseline_accuracy": float((test_y == majority).mean()),
        "val_accuracy": metrics.multiclass_report(val_y, val_s, len(classes))["accuracy"],
        "mean_class_accuracy": report["mean_class_accuracy"],
        "per_class": {name: {"accuracy": report["per_class_accuracy"][i]} for i, name in enumerate(classes)},
        "confusion_matrix": report["confusion_matrix"],
        "classes_without_positives": [classes[i] for i in report["classes_without_positives"]],
        "note": report["note"],
    }, None


def write_plots(results: dict[str, Any], classes: list[str], test: tuple, plots_dir: Path) -> list[Path]:
    """DVC-renderable plot data (json) plus PNG figures; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    test_y, test_s = test
    if results["task"] == "multilabel":
        bars = [{"class": c, "AP": results["per_class"][c]["AP"] or 0.0} for c in classes]
        path = plots_dir / "per_class_ap.json"
        path.write_text(json.dumps(bars, indent=1))
        written.append(path)
        fig, axes = plt.subplots(1, 2, figsize=(14, 7))
        for i, name in enumerate(classes):
            if test_y[:, i].sum() == 0:
                continue
            precision, recall, _ = precision_recall_curve(test_y[:, i], test_s[:, i])
            axes[0].plot(recall, precision, lw=1, label=f"{name} ({results['per_class'][name]['AP']:.2f})")
        axes[0].set(xlabel="recall", ylabel="precision", title=f"PR curves (test mAP {results['mAP']:.3f})")
        axes[0].legend(fontsize=6, ncol=2)
        order = np.argsort([b["AP"] for b in bars])
        axes[1].barh([bars[i]["class"] for i in order], [bars[i]["AP"] for i in order])
        axes[1].set(xlabel="AP", title="per-class AP")
        fig.tight_layout()
        path = plots_dir / "pr_curves.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    else:
        pred = test_s.argmax(axis=1)
        rows = [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(test_y, pred)]
        path = plots_dir / "confusion.json"
        path.write_text(json.dumps(rows))
        written.append(path)
        matrix = np.asarray(results["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        for (r, c), v in np.ndenumerate(matrix):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8)
        ax.set(xlabel="predicted", ylabel="actual", title=f"test accuracy {results['accuracy']:.3f}")
        fig.tight_layout()
        path = plots_dir / "confusion.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def evaluate_model(package, paths: Workspace, batch_size: int) -> tuple[dict[str, Any], Any, tuple]:
    """Score `package` on val and test of the workspace's data: (results, thresholds, test scores).

    The one evaluation path: the evaluate stage and the promotion gate's re-score both use it.
    """
    from core.data.manifest import read_manifest

    classes = package.classes
    val_scores = score_split(package, paths, "val", batch_size)
    test_scores = score_split(package, paths, "test", batch_size)
    val, test = val_scores[:2], test_scores[:2]
    train_labels = read_manifest("train", paths.manifest_dir)["labels"]
    counts = np.zeros(len(classes))
    for row in train_labels:
        counts[np.asarray(list(row), dtype=np.int64)] += 1
    if package.task == "multilabel":
        results, thresholds = multilabel_results(classes, val, test, counts / max(len(train_labels), 1))
    else:
        results, thresholds = multiclass_results(classes, val, test, counts)
    results["dataset"] = package.params["data"]["kind"]
    results["model"] = package.model_name
    # one process, batch `batch_size`, decoding included: what scoring a folder of photos costs
    results["inference_ms_per_person"] = 1000.0 * test_scores.seconds / max(len(test_scores.targets), 1)
    results["parameters"] = int(sum(p.numel() for p in package.model.parameters()))
    if test_scores.continuous is not None:
        results.update(metrics.vad_mae(test_scores.continuous, test_scores.vad, test_scores.has_vad))
    if test_scores.face_fallbacks is not None:
        results["face_fallbacks"] = {"val": val_scores.face_fallbacks, "test": test_scores.face_fallbacks,
                                     "rule": "no detected face: the top square of the body box "
                                             "(core/data/views.py, face_fallback)"}
    return results, thresholds, test


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """What reports/metrics.json keeps: task, data set, size and the task's headline figures."""
    keys = ("task", "dataset", "model", "num_examples", *HEADLINE[results["task"]], "test_data_version")
    out = {key: results.get(key) for key in keys}
    if results.get("mae_vad") is not None:
        out["mae_vad"] = results["mae_vad"]
    return out


def run(paths: Workspace, batch_size: int) -> dict[str, Any]:
    from core.inference import load_model_package

    package = load_model_package(paths.model_dir)
    results, thresholds, test = evaluate_model(package, paths, batch_size)
    results["test_data_version"] = test_data_version(paths)  # what the promotion gate compares on
    for path in (paths.metrics_file, paths.details_file, paths.thresholds_file):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.metrics_file).write_text(json.dumps(headline(results), indent=2))
    Path(paths.details_file).write_text(json.dumps(results, indent=2))
    threshold_doc = {"classes": package.classes, "task": package.task,
                     "thresholds": None if thresholds is None else thresholds.to_dict()["values"],
                     "rule": "per class on val where precision = recall (core/evaluation/metrics.py)"}
    Path(paths.thresholds_file).write_text(json.dumps(threshold_doc, indent=2))
    plots = write_plots(results, package.classes, test, Path(paths.plots_dir))
    _log_to_mlflow(paths, results, plots)
    return results


def _log_to_mlflow(paths: Workspace, results: dict[str, Any], plots: list[Path]) -> None:
    """Add test metrics, thresholds and plots to the run that trained the model.

    Through the client, by run id: re-opening the run with `start_run` would set it RUNNING
    again, and an evaluation killed meanwhile would leave a finished training run RUNNING (and
    the next training run would then mark it FAILED as abandoned).
    """
    run_file = Path(paths.model_dir) / "mlflow_run.json"
    if not run_file.is_file():
        return
    import time as _time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from core import tracking

    tracking.setup()
    client, run_id = MlflowClient(), json.loads(run_file.read_text())["run_id"]
    now = int(_time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"test_{k}", float(v), now, 0) for k, v in results.items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None])
    for file in (paths.metrics_file, paths.details_file, paths.thresholds_file):
        client.log_artifact(run_id, str(file), artifact_path="evaluation")
    for plot in plots:
        client.log_artifact(run_id, str(plot), artifact_path="evaluation/plots")
