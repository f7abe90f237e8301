"""The comparison: every registered model trained and evaluated on the same tiny data, one table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import comparison
from core.workspace import Workspace


def compare_paths(workspace, name: str) -> Workspace:
    root = workspace.root / name
    return Workspace.at(workspace.root, data_root=workspace.root / "raw", compare_dir=root / "artifacts",
                        compare_metrics_dir=root / "rows", compare_table=root / "compare.md",
                        ray_storage=workspace.root / "ray_results")


def check_rows_against_the_branches(params, paths, table):
    assert [row["model"] for row in table["rows"]] == params.compare.models
    for row in table["rows"]:
        branch = comparison.branch_workspace(paths, row["model"])
        results = json.loads(Path(branch.details_file).read_text())
        on_detections = json.loads(Path(branch.details_file).with_name("detection_aware.json").read_text())
        metric = row["metric"]
        assert row[f"det_{metric}"] == on_detections[f"{metric}_mean"]
        assert len(on_detections[f"{metric}_per_threshold"]) == 10 and on_detections["num_persons"] == results["num_examples"]
        assert all(0.0 <= value <= 1.0 for value in on_detections[f"{metric}_per_threshold"])
        expected_source = "its own detections" if row["model"] == "benet" else "trained on the train split"
        assert expected_source in row["people_source"]
        assert row["test"] == results[row["metric"]] and row["baseline"] == results["baseline_" + row["metric"]]
        assert row["beats_baseline"] == (row["test"] > row["baseline"])
        assert row["parameters"] > 0 and row["train_samples_per_s"] > 0 and row["inference_ms_per_person"] > 0
        assert (Path(branch.model_dir) / "model.pt").is_file()
        assert json.loads((Path(paths.compare_metrics_dir) / f"{row['model']}.json").read_text()) == row
        assert len(table["per_class"][row["model"]]) == len(results["per_class"])
    text = Path(paths.compare_table).read_text()
    assert all(f"| {name} |" in text for name in params.compare.models)


def check_every_model_serves_what_it_was_evaluated_with(params, paths, workspace_root):
    """`ctxemo predict` on a branch's folder gives a test person the evaluation path's scores, whatever
    views the model reads (SIB-Net's masked images, DAG-Net's patches, ...)."""
    import numpy as np

    from core.data.manifest import read_manifest
    from core.evaluation import evaluate
    from core.inference import load_model_package
    from pipelines import predict

    for name in params.compare.models:
        branch = comparison.branch_workspace(paths, name)
        package = load_model_package(Path(branch.model_dir), Path(branch.thresholds_file))
        reference = evaluate.score_split(package, branch, "test", batch_size=1).scores
        row = read_manifest("test", branch.manifest_dir).iloc[0]
        folder = str(Path(branch.model_dir).parent)
        predictor = predict.Predictor(predict.load_model(folder, workspace_root), workspace_root)
        (person,) = predictor.predict(branch.data_root / row["image_path"], [row["person_box"]]).people
        np.testing.assert_allclose(person.scores, reference[0], rtol=1e-5, atol=1e-6, err_msg=name)


def test_every_model_trains_and_evaluates_on_emotic_data_into_one_tracked_table(tiny_workspace, ray_local,
                                                                                mlflow_store):
    from mlflow.tracking import MlflowClient

    params = tiny_workspace.params
    assert set(params.compare.models) == {"rrla", "kosti", "caernet", "sibnet", "dagnet", "benet"}
    paths = compare_paths(tiny_workspace, "emotic")
    for name in params.compare.models:
        comparison.run_branch(params, name, paths)
    table = comparison.build_table(params, paths)
    check_rows_against_the_branches(params, paths, table)
    kosti = next(row for row in table["rows"] if row["model"] == "kosti")
    assert {"mae_valence", "mae_arousal", "mae_dominance", "mae_vad"} <= set(kosti)
    caernet = next(row for row in table["rows"] if row["model"] == "caernet")
    assert 0 <= caernet["face_fallbacks_test"] <= caernet["num_examples"]
    assert "VAD MAE" in Path(paths.compare_table).read_text()
    check_every_model_serves_what_it_was_evaluated_with(params, paths, tiny_workspace.root)

    # one MLflow run per model, all children of the comparison's parent run, which gets the table
    parent = comparison.log_table(params, paths)
    client = MlflowClient(mlflow_store)
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(run.data.tags["ctxemo.model"] for run in children) == sorted(params.compare.models)
    assert {a.path for a in client.list_artifacts(parent, "compare")} == {"compare/compare.md", "compare/compare.json"}
    # a second comparison under the same protocol finds the same parent
    assert comparison.parent_run(params) == parent


def test_every_model_trains_on_caers_data_with_accuracy_against_the_majority_class(tmp_path, ray_local):
    import tiny_pipeline

    workspace = tiny_pipeline.build(tmp_path, fmt="caers")
    params = workspace.params
    paths = compare_paths(workspace, "caers")
    for name in params.compare.models:
        row = comparison.run_branch(params, name, paths, track=False)
        assert row["metric"] == "accuracy" and row["task"] == "multiclass" and "mae_vad" not in row
    table = comparison.build_table(params, paths)
    check_rows_against_the_branches(params, paths, table)
    assert "majority class" in Path(paths.compare_table).read_text()


def test_a_model_outside_compare_models_is_refused(tiny_workspace):
    from core.errors import UserError

    with pytest.raises(UserError, match="not in compare.models"):
        comparison.run_branch(tiny_workspace.params, "nope", compare_paths(tiny_workspace, "x"), track=False)


def test_the_markdown_table_shows_every_row_and_flags_a_model_below_the_baseline():
    rows = [{"model": "a", "metric": "mAP", "test": 0.3, "baseline": 0.14, "beats_baseline": True,
             "parameters": 2_500_000, "train_samples_per_s": 20.0, "inference_ms_per_person": 12.5, "best_epoch": 3,
             "epochs": 5},
            {"model": "b", "metric": "mAP", "test": 0.1, "baseline": 0.14, "beats_baseline": False,
             "parameters": 1_000_000, "train_samples_per_s": 40.0, "inference_ms_per_person": 5.0, "best_epoch": 0,
             "mae_valence": 1.0, "mae_arousal": 2.0, "mae_dominance": 3.0, "mae_vad": 2.0}]
    rows[0].update({"det_mAP_50": 0.25, "det_mAP_75": 0.2, "det_mAP": 0.18, "people_source": "frcnn",
                    "people_AP": 0.54})
    text = comparison.markdown({"dataset": "emotic", "data_root": "d", "seed": 0, "rows": rows,
                                "per_class": {"a": {"Joy": 0.5}, "b": {"Joy": None}}})
    assert "| a | 0.3000 | 0.1400 | yes | 0.2500 / 0.2000 / 0.1800 | frcnn (0.540) | 2.50 M | 20.0 | 12.5 | 4/5 | – |" in text
    # a row written before the detection-aware protocol existed shows dashes, not an error
    assert "| b | 0.1000 | 0.1400 | NO | – | – | 1.00 M | 40.0 | 5.0 | 1 | 1.00/2.00/3.00 |" in text
    assert "| Joy | 0.500 | – |" in text
