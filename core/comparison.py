"""Every listed model on the same data, seed and split, and one table: the `compare` stages.

    python -m stages.compare kosti     # one branch of dvc.yaml's compare matrix
    python -m stages.compare_report    # the table over compare.models
    ctxemo compare                     # dvc repro compare_report: DVC runs the stale branches only

A branch trains model `name` through the training stage's own code (core/training/trainer.py,
with `Params.for_model(name)`: the family's `train` overrides applied) into
`artifacts/compare/<name>/` and evaluates it there (core/evaluation/evaluate.py), then writes
its row, `reports/compare/<name>.json`. Each branch is its own MLflow run, a child of one parent
run per comparison protocol (data, seed, train section, objects): `parent_run` finds that parent
by its protocol tag or creates it, and the report logs the table to it.

The table (`reports/compare.md` and `compare.json`): the primary test metric (mAP on EMOTIC,
accuracy on CAER-S) next to the label-frequency baseline (the majority class on CAER-S),
per-class AP (accuracy), parameters, training samples/s (the median over epochs after the
first, whose figure includes start-up), inference ms per person (test split, one process,
decoding included), VAD mean absolute error where a model predicts it, and face fallbacks.
Beside the annotated-box metric, each row has the same metric on detected people (BENet's
detection-aware protocol, core/evaluation/detection_aware.py): at IoU 0.50, 0.75 and the mean over
0.50:0.95, with where the people came from and that detector's COCO person AP.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.evaluation import detection_aware
from core.params import Params, params_to_dict
from core.workspace import Workspace

PRIMARY = {"multilabel": ("mAP", "baseline_mAP"), "multiclass": ("accuracy", "baseline_accuracy")}
PROTOCOL_SECTIONS = ("seed", "data", "objects", "train")
PROTOCOL_TAG = "ctxemo.compare_protocol"


def branch_workspace(paths: Workspace, name: str) -> Workspace:
    """The workspace of one branch: the shared data, its own model, reports and plots."""
    folder = Path(paths.compare_dir) / name
    return paths.moved(model_dir=folder / "model", thresholds_file=folder / "thresholds.json",
                       train_report_dir=folder / "train", metrics_file=folder / "metrics.json",
                       details_file=folder / "metrics_per_class.json", plots_dir=folder / "plots")


def protocol_key(params: Params) -> str:
    """What every branch of one comparison shares: a changed model section keeps the key."""
    from core import tracking

    params_dict = params_to_dict(params)
    return tracking.params_hash({section: params_dict[section] for section in PROTOCOL_SECTIONS})


def parent_run(params: Params, workspace: Path | None = None) -> str:
    """The id of the comparison's parent MLflow run (found by its protocol tag, else created)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from core import tracking

    experiment_id = tracking.setup(workspace)
    key = protocol_key(params)
    client = MlflowClient(tracking_uri=tracking.tracking_uri(workspace))
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PROTOCOL_TAG}` = '{key}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"compare-{params.data.kind}-{key[:6]}",
                            tags={PROTOCOL_TAG: key, "ctxemo.stage": "compare"})
    params_dict = params_to_dict(params)
    for path, value in tracking.flatten({s: params_dict[s] for s in PROTOCOL_SECTIONS}):
        client.log_param(run.info.run_id, path, value)
    client.set_terminated(run.info.run_id)
    mlflow.set_tracking_uri(tracking.tracking_uri(workspace))
    return run.info.run_id


def run_branch(params: Params, name: str, paths: Workspace, *, track: bool = True) -> dict[str, Any]:
    """Train and evaluate model `name` into its own folder; returns (and writes) its table row."""
    from core.evaluation import evaluate
    from core.training import trainer

    if name not in params.compare.models:
        raise UserError(f"{name!r} is not in compare.models {params.compare.models}")
    model_params = params.for_model(name)
    branch = branch_workspace(paths, name)
    tags = {"ctxemo.compare": "branch", "ctxemo.model": name}
    if track:
        tags.update({PROTOCOL_TAG: protocol_key(params), "mlflow.parentRunId": parent_run(params, paths.root)})
    summary = trainer.run(model_params, branch, track=track, run_name=f"compare-{name}", tags=tags)
    results = evaluate.run(branch, batch_size=model_params.train.batch_size)
    on_detections = evaluate_detected(branch)
    history = json.loads((Path(branch.train_report_dir) / "history.json").read_text())
    row = {**table_row(name, results, summary, history), **detection_aware.headline(on_detections)}
    out = Path(paths.compare_metrics_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    return row


def evaluate_detected(branch: Workspace) -> dict[str, Any]:
    """The branch's model on detected people (core/evaluation/detection_aware.py), written beside its
    per-class figures as `detection_aware.json`."""
    from core.inference import load_model_package

    package = load_model_package(branch.model_dir)
    meta = Path(branch.objects_meta)
    objects_meta = json.loads(meta.read_text()) if meta.is_file() else None
    result = detection_aware.evaluate_on_detections(package, branch, split="test", objects_meta=objects_meta)
    out = Path(branch.details_file).with_name("detection_aware.json")
    out.write_text(json.dumps(result, indent=2))
    _log_detected(branch, result, out)
    return result


def _log_detected(branch: Workspace, result: dict[str, Any], file: Path) -> None:
    """The figures on detected people into the branch's MLflow run (beside evaluate's test_* metrics)."""
    run_file = Path(branch.model_dir) / "mlflow_run.json"
    if not run_file.is_file():  # trained with track=False
        return
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from core import tracking

    tracking.setup()
    client, run_id = MlflowClient(), json.loads(run_file.read_text())["run_id"]
    now = int(time.time() * 1000)
    figures = {key: value for key, value in detection_aware.headline(result).items()
               if isinstance(value, float)}
    client.log_batch(run_id, metrics=[Metric(f"test_{key}", value, now, 0) for key, value in figures.items()])
    client.log_artifact(run_id, str(file), artifact_path="evaluation")


def table_row(name: str, results: dict[str, Any], summary: dict[str, Any], history: list[dict]) -> dict[str, Any]:
    """One model's row: the headline figures (a DVC metric) without the per-class detail."""
    metric, baseline = PRIMARY[results["task"]]
    speeds = [record["train_samples_per_s"] for record in history[1:]] or [r["train_samples_per_s"] for r in history]
    row = {
        "model": name, "task": results["task"], "dataset": results.get("dataset"),
        "num_examples": results["num_examples"], "metric": metric,
        "test": results[metric], "baseline": results[baseline],
        "beats_baseline": bool(results[metric] > results[baseline]),
        "parameters": results["parameters"], "train_samples_per_s": round(statistics.median(speeds), 2),
        "inference_ms_per_person": round(results["inference_ms_per_person"], 2),
        "epochs": summary.get("epochs"), "best_epoch": summary.get("best_epoch"),
        "train_seconds": summary.get("seconds"),
    }
    if results.get("mae_vad") is not None:
        row.update({key: results[key] for key in ("mae_valence", "mae_arousal", "mae_dominance", "mae_vad")})
    if "face_fallbacks" in results:
        row["face_fallbacks_test"] = results["face_fallbacks"]["test"]
    return row


def per_class(paths: Workspace, name: str) -> dict[str, float | None]:
    """AP (accuracy on CAER-S) per class of one branch, from its evaluation details."""
    details_file = branch_workspace(paths, name).details_file
    if not Path(details_file).is_file():
        raise UserError(f"{details_file} is missing: run `dvc repro compare` (or python -m stages.compare {name})")
    details = json.loads(Path(details_file).read_text())
    key = "AP" if details["task"] == "multilabel" else "accuracy"
    return {cls: values[key] for cls, values in details["per_class"].items()}


def build_table(params: Params, paths: Workspace) -> dict[str, Any]:
    """Every listed model's row and per-class figures; the markdown and json written."""
    rows, classes = [], {}
    for name in params.compare.models:
        row_file = Path(paths.compare_metrics_dir) / f"{name}.json"
        if not row_file.is_file():
            raise UserError(f"{row_file} is missing: run `dvc repro compare` (or python -m stages.compare {name})")
        rows.append(json.loads(row_file.read_text()))
        classes[name] = per_class(paths, name)
    table = {"dataset": params.data.kind, "seed": params.seed, "data_root": params.data.root, "rows": rows,
             "per_class": classes}
    out = Path(paths.compare_table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(table, indent=2))
    out.write_text(markdown(table))
    return table


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _epoch(row: dict[str, Any]) -> str:
    """The best epoch counted from 1, of how many (the summary counts from 0)."""
    if row.get("best_epoch") is None:
        return "–"
    return f"{row['best_epoch'] + 1}/{row['epochs']}" if row.get("epochs") else str(row["best_epoch"] + 1)


def _detected(row: dict[str, Any], metric: str) -> str:
    """The metric on detected people at IoU .50 and .75 and the mean over .50:.95 (– before the protocol)."""
    keys = (f"det_{metric}_50", f"det_{metric}_75", f"det_{metric}")
    if not any(key in row for key in keys):
        return "–"
    return " / ".join(_cell(row.get(key)) for key in keys)


def _people(row: dict[str, Any]) -> str:
    if "people_source" not in row:
        return "–"
    return f"{row['people_source']} ({_cell(row.get('people_AP'), 3)})"


def markdown(table: dict[str, Any]) -> str:
    rows = table["rows"]
    if not rows:
        return "# Model comparison\n\nNo model listed in compare.models.\n"
    metric = rows[0]["metric"]
    baseline_name = "label-frequency baseline" if metric == "mAP" else "majority class"
    vad = any("mae_vad" in row for row in rows)
    header = ["model", f"test {metric}", baseline_name, "beats it",
              f"{metric} on detected people @.50 / @.75 / .50:.95", "people from (person AP)", "parameters",
              "train samples/s", "inference ms/person", "best epoch"] + (["VAD MAE (V/A/D)"] if vad else [])
    lines = [f"# Model comparison: {table['dataset']} ({table['data_root']}), seed {table['seed']}", "",
             ("Every model trained and evaluated by the same stages on the same split "
              "(`ctxemo compare`, dvc.yaml's compare matrix)."), "",
             (f"`test {metric}` scores the annotated person boxes. The detection-aware columns (BENet's protocol, "
              "core/evaluation/detection_aware.py) score the people a detector found instead: BENet its own "
              "detections, every other model the person detector stage's boxes (`dvc repro people`); a detection "
              "is matched to an annotated person by COCOeval at each IoU threshold, and a person nobody "
              "detected scores zero. `people from` gives the detector and its COCO person AP (.50:.95) on the "
              "test split."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], _cell(row["test"]), _cell(row["baseline"]), "yes" if row["beats_baseline"] else "NO",
                 _detected(row, metric), _people(row), f"{row['parameters'] / 1e6:.2f} M", _cell(row["train_samples_per_s"], 1),
                 _cell(row["inference_ms_per_person"], 1), _epoch(row)]
        if vad:
            cells.append("–" if "mae_vad" not in row else
                         "/".join(f"{row[k]:.2f}" for k in ("mae_valence", "mae_arousal", "mae_dominance")))
        lines.append("| " + " | ".join(cells) + " |")
    names = [row["model"] for row in rows]
    classes = list(next(iter(table["per_class"].values())))
    lines += ["", f"Per class ({'AP' if metric == 'mAP' else 'accuracy'} on test):", "",
              "| class | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for cls in classes:
        lines.append(f"| {cls} | " + " | ".join(_cell(table["per_class"][n].get(cls), 3) for n in names) + " |")
    fallbacks = {row["model"]: row["face_fallbacks_test"] for row in rows if "face_fallbacks_test" in row}
    if fallbacks:
        lines += ["", "Face views without a detected face use the top of the body box (core/data/views.py): "
                  + ", ".join(f"{name} {count} test persons" for name, count in fallbacks.items()) + "."]
    return "\n".join(lines) + "\n"


def log_table(params: Params, paths: Workspace) -> str | None:
    """Log the table to the comparison's parent MLflow run; returns its id."""
    import mlflow

    run_id = parent_run(params, paths.root)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(paths.compare_table), artifact_path="compare")
        mlflow.log_artifact(str(Path(paths.compare_table).with_suffix(".json")), artifact_path="compare")
    return run_id
