"""`ctxemo report`: one static HTML report of an evaluated model, readable offline.

    ctxemo report                                        # artifacts/model -> reports/report/index.html
    ctxemo report --persons 8 --out /tmp/report
    ctxemo report --model-dir artifacts/compare/kosti/model   # a compare or ablation run, evaluated beside it

One folder: index.html (inline CSS, no script, no font or stylesheet fetched; every image a PNG
beside it), data.json (the numbers the page prints) and pr_curves.npz (the curves' points). It is
logged to the model's MLflow run (model_dir/mlflow_run.json) as artifacts under `report/`.

What it shows:
- the evaluation's headline figures (reports/metrics.json) and per-class figures
  (reports/metrics_per_class.json), as the evaluate stage wrote them;
- multi-label (EMOTIC): per-class AP bars and one precision-recall panel per class, from the test
  scores through sklearn.metrics.precision_recall_curve, and the label co-occurrence P(j | i) of
  data/graph/cooccurrence.npy (paper Fig. 6); single-label (CAER-S): the confusion matrix;
- a few test persons (below), each with Fig. 10, 11 and 12 of the paper;
- when present in reports/: the model comparison (compare.json), the ablation tables
  (ablations*.json) and the best trials of each sweep (sweep*.json).

Definitions:
- Test scores: the evaluation's own `score_split` on the test split at the batch size the model
  trained with (the evaluation's), so the rescored mAP is the evaluation's; the page says so, and
  warns when it differs from metrics.json (the model or the data changed since).
- Persons (`--persons N`, at least 2): the best and the worst predicted test person, then persons
  drawn by the seed (params.yaml `seed`): a numpy default_rng(seed) permutation of the split's
  rows, the best and worst skipped. "Best" and "worst" are by per-person quality: multi-label, the
  average precision of the person's own ranking of the classes against their true labels (sklearn
  average_precision_score on the row: 1 when every true label outranks every other); single-label,
  the softmax probability of the true class. Ties go to the first in manifest order.
- BOA (Fig. 10): the three valid objects with the largest attention weight averaged over the heads
  (ModelOutput.attention [h,N]), drawn on the photo with pipelines/predict.py's annotation.
- BPA (Fig. 11): the three channels with the highest gate (models/bpa.py `gates`, recorded with
  pipelines/diagnose.py's hook); each heat map is that channel of the backbone's final feature map
  (before the gates), upsampled bilinearly over the person view as core/data/views.py cuts it
  (the body crop; the face on CAER-S), coloured from its own minimum to its maximum.
- Without ELD (Fig. 12): the same trained model with ELD's propagation matrix replaced by the
  identity, Â = I (models/eld.py `graph_free_scores`): each class's classifier is computed from its
  own label embedding only, σ(Z W0) W1, and scores the same fused feature F. This removes the label
  graph's mixing between classes and nothing else, with no new fitting; Â is row-stochastic, as I
  is, so the scores keep their scale. It is not a model trained without ELD (that is the
  `no_eld` ablation). A linear probe on F was not used: it would fit a new classifier (its own
  regularisation, loss and calibration), whose choices would be mixed into the difference shown.
  A model without ELD (model.rrla.eld.enabled: false, or single-label data) gets one column.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.workspace import Workspace
from pipelines.report import collect, figures, page

OWN_FILES = ("index.html", "data.json", "pr_curves.npz", "per_class_ap.png", "pr_curves.png", "cooccurrence.png",
             "confusion.png")
OWN_PATTERNS = ("person_*.png", "channels_*.png")


def model_paths(paths: Workspace, model_dir: Path) -> Workspace:
    """The workspace with the model at `model_dir`, its evaluation beside it.

    A compare or ablation run keeps <run>/model, <run>/metrics.json, <run>/metrics_per_class.json
    and <run>/thresholds.json; the workspace's own model (artifacts/model) keeps reports/.
    """
    model_dir = Path(model_dir)
    if model_dir.resolve() == Path(paths.model_dir).resolve():
        return paths
    run = model_dir.parent
    return paths.moved(model_dir=model_dir, metrics_file=run / "metrics.json",
                       details_file=run / "metrics_per_class.json", thresholds_file=run / "thresholds.json")


def evaluation_batch_size(package) -> int:
    """The batch size the model trained (and the evaluation scored) with: its family's `train` section first."""
    params = package.params
    family = (params.get("model") or {}).get(package.model_name) or {}
    return int((family.get("train") or {}).get("batch_size") or params["train"]["batch_size"])


def load_package(paths: Workspace):
    from core.inference import load_model_package
    from models.config import ConfigError

    try:
        return load_model_package(paths.model_dir, paths.thresholds_file)
    except ConfigError as exc:
        raise UserError(f"{Path(paths.model_dir) / 'model.pt'} does not load with this version of the code "
                        f"({exc}); retrain it: `dvc repro train` (or `make demo`)") from None


def draw(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Every figure of the page, written into `out`: {name: file name relative to out}."""
    drawn: dict[str, Path] = {}
    details = report["evaluation"]["details"]
    per_class = details.get("per_class", {})
    if report["task"] == "multilabel":
        ap = {name: per_class.get(name, {}).get("AP") for name in report["classes"]}
        drawn["ap_bars"] = figures.ap_bars(ap, out / "per_class_ap.png",
                                           f"per-class AP (test mAP {report['evaluation']['headline'].get('mAP', 0):.3f})")
        drawn["pr_curves"] = figures.pr_grid(report["curves"], ap, out / "pr_curves.png")
        if report["cooccurrence"] is not None:
            drawn["cooccurrence"] = figures.cooccurrence(*report["cooccurrence"], out / "cooccurrence.png")
    else:
        drawn["confusion"] = figures.confusion(details["confusion_matrix"], report["classes"], out / "confusion.png",
                                               f"test accuracy {details.get('accuracy', 0):.3f}")
    for number, person in enumerate(report["persons"], start=1):
        drawn[f"person_{number}"] = figures.person_image(
            person["_image"], person["box"], person["_scores"], person["predicted"], person["top_objects"],
            report["classes"], out / f"person_{number}.png")
        if "_maps" in person:
            drawn[f"channels_{number}"] = figures.channel_heatmaps(person["_crop"], person["_maps"],
                                                                   person["top_channels"], out / f"channels_{number}.png")
    return {name: path.name for name, path in drawn.items()}


def data_record(report: dict[str, Any], drawn: dict[str, str], run_id: str | None) -> dict[str, Any]:
    """data.json: the numbers the page prints (the persons without their arrays), the figures, the run."""
    persons = [{key: value for key, value in person.items() if not key.startswith("_")} for person in report["persons"]]
    for person, full in zip(persons, report["persons"]):
        person["scores"] = [float(v) for v in full["_scores"]]
        person["scores_without_eld"] = None if "_without" not in full else [float(v) for v in full["_without"]]
    keep = ("model", "task", "classes", "dataset", "model_dir", "rescored", "test_persons", "selection", "batch_size")
    return {**{key: report[key] for key in keep}, "metrics": report["evaluation"]["headline"], "persons": persons,
            "figures": drawn, "tables": {name: [file for file, _ in files] for name, files in report["tables"].items()},
            "mlflow_run_id": run_id}


def save_curves(report: dict[str, Any], path: Path) -> Path | None:
    """pr_curves.npz: classes, and precision_<i>, recall_<i>, thresholds_<i> for class index i (test positives only)."""
    if not report["curves"]:
        return None
    index = {name: i for i, name in enumerate(report["classes"])}
    arrays = {f"{key}_{index[name]}": curve[key] for name, curve in report["curves"].items() for key in curve}
    np.savez_compressed(path, classes=np.array(report["classes"]), **arrays)
    return path


def mlflow_run_id(model_dir: Path) -> str | None:
    run_file = Path(model_dir) / "mlflow_run.json"
    return json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None


def log_to_mlflow(out: Path, run_id: str) -> None:
    """The folder, as artifacts of the model's run under report/."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from core import tracking

    try:
        tracking.setup()
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifacts(str(out), artifact_path="report")
    except MlflowException as exc:
        raise UserError(f"the report is written to {out}, but logging it to MLflow run {run_id} failed: "
                        f"{exc.message} (`--no-mlflow` skips it)") from None


def _prepare(out: Path) -> None:
    """The folder, without the files a previous report left (its own names only: nothing else is removed)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in [*(out / name for name in OWN_FILES), *(p for pattern in OWN_PATTERNS for p in out.glob(pattern))]:
        if path.is_file():
            path.unlink()


def run(paths: Workspace, out_dir: Path | None = None, *, persons: int = 6, seed: int = 0,
        batch_size: int | None = None, log: bool = True, package=None) -> Path:
    """Write the report of the evaluated model at `paths.model_dir` into `out_dir`; returns its index.html."""
    if persons < 2:
        raise UserError(f"--persons must be at least 2 (the best and the worst), not {persons}")
    package = package or load_package(paths)
    report = collect.collect(package, paths, persons=persons, seed=seed,
                             batch_size=batch_size or evaluation_batch_size(package))
    out = Path(out_dir) if out_dir is not None else Path(paths.reports_dir) / "report"
    _prepare(out)
    drawn = draw(report, out)
    run_id = mlflow_run_id(paths.model_dir)
    if run_id is None:
        note = "The model has no MLflow run (no mlflow_run.json beside it): this folder is not logged."
    else:
        note = (f"`ctxemo report` logs this folder to MLflow run {run_id} as artifacts under report/." if log
                else f"Not logged to MLflow (--no-mlflow); the model's run is {run_id}.")
    (out / "index.html").write_text(page.render(report, drawn, note), encoding="utf-8")
    (out / "data.json").write_text(json.dumps(data_record(report, drawn, run_id), indent=1))
    save_curves(report, out / "pr_curves.npz")
    if log and run_id is not None:
        log_to_mlflow(out, run_id)
    return out / "index.html"
