"""The detection-aware evaluation of a trained model (core/evaluation/detection_aware.py).

The anchor: with the annotated boxes given as the detections, every threshold's mAP equals the
annotated-box evaluation's test mAP, for a model reading pixels (Kosti) and one reading objects
re-selected around each box (rrla). A person nobody detected scores a zero row, and a box shifted to
IoU 0.6 is matched up to 0.6 and missed above, as COCO's rule says.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.evaluation import detection_aware
from core.evaluation.metrics import average_precision


@pytest.fixture(scope="module")
def trained(tiny_workspace, tmp_path_factory):
    """{model name: (package, paths, test scores in manifest order)} for kosti and rrla, trained 2 epochs."""
    from core.evaluation import evaluate
    from core.inference import load_model_package
    from core.training import trainer

    out = {}
    for name in ("kosti", "rrla"):
        paths = tiny_workspace.train_paths(f"detection-aware-{name}")
        params = tiny_workspace.params.for_model(name)
        trainer.run(params, paths, track=False)
        results = evaluate.run(paths, batch_size=8)
        package = load_model_package(paths.model_dir)
        scores = evaluate.score_split(package, paths, "test", batch_size=8).scores
        out[name] = (package, paths, scores, results)
    return out


def write_people(folder: Path, manifest: pd.DataFrame, boxes_of) -> Path:
    """data/people/test.parquet as the person detector stage writes it, with `boxes_of(image rows)` detections."""
    rows = []
    for path, group in manifest.groupby("image_path", sort=False):
        boxes, scores = boxes_of(group)
        rows.append({"image_path": path, "image_w": int(group["image_w"].iloc[0]),
                     "image_h": int(group["image_h"].iloc[0]),
                     "boxes": [list(map(float, b)) for b in boxes], "scores": [float(s) for s in scores]})
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "test.parquet")
    (folder / "detector.json").write_text(json.dumps({"detector": "by hand", "starting_weights": {"name": "no"}}))
    return folder


def manifest_of(paths) -> pd.DataFrame:
    from core.data.manifest import read_manifest

    return read_manifest("test", paths.manifest_dir)


def annotated(group: pd.DataFrame):
    return [list(b) for b in group["person_box"]], [1.0] * len(group)


@pytest.mark.parametrize("name", ["kosti", "rrla"])
def test_annotated_boxes_as_detections_give_the_annotated_box_map_at_every_threshold(trained, name, tmp_path):
    package, paths, _, results = trained[name]
    people = write_people(tmp_path / "people", manifest_of(paths), annotated)
    result = detection_aware.evaluate_on_detections(package, paths.moved(people_dir=people), objects_meta=None
                                                    if name == "kosti" else _meta(paths))
    assert result["iou_thresholds"][0] == 0.5 and result["iou_thresholds"][-1] == 0.95
    assert result["match_rate"] == [1.0] * 10
    np.testing.assert_allclose(result["mAP_per_threshold"], [results["mAP"]] * 10, rtol=0, atol=1e-6)
    assert result["detector_AP"] == pytest.approx(1.0)
    row = detection_aware.headline(result)
    assert row["det_mAP_50"] == row["det_mAP_75"] == pytest.approx(results["mAP"], abs=1e-6)


def _meta(paths):
    return json.loads(Path(paths.objects_meta).read_text())


def test_a_missed_person_scores_zero_and_a_shifted_box_matches_up_to_its_iou(trained, tmp_path):
    package, paths, scores, _ = trained["kosti"]
    manifest = manifest_of(paths)
    first_image = manifest["image_path"].iloc[0]
    first_rows = np.flatnonzero(manifest["image_path"].to_numpy() == first_image)
    assert len(first_rows) >= 1

    def shifted_and_missed(group: pd.DataFrame):
        if group["image_path"].iloc[0] != first_image:
            return annotated(group)
        # the image's first person: a box shifted right so that IoU = 0.6 exactly (w' = w, overlap w - d,
        # IoU = (w - d) / (w + d) = 0.6 -> d = w / 4); its other people: not detected at all
        x1, y1, x2, y2 = (float(v) for v in group["person_box"].iloc[0])
        d = (x2 - x1) / 4
        return [[x1 + d, y1, x2 + d, y2]], [0.9]

    people = write_people(tmp_path / "people", manifest, shifted_and_missed)
    result = detection_aware.evaluate_on_detections(package, paths.moved(people_dir=people))
    persons = len(manifest)
    matched_at = {t: round(r * persons) for t, r in zip(result["iou_thresholds"], result["match_rate"])}
    others = len(first_rows) - 1
    assert matched_at[0.5] == matched_at[0.6] == persons - others        # IoU 0.6 >= 0.6: matched
    assert matched_at[0.65] == matched_at[0.95] == persons - others - 1  # above its IoU: missed

    # by hand at 0.75: the first image's people score zero rows, everyone else their annotated-box scores
    from core.data.dataset import multi_hot

    targets = np.stack([multi_hot(labels, len(package.classes)) for labels in manifest["labels"]])
    expected = 1.0 / (1.0 + np.exp(-scores))  # raw scores through the protocol's sigmoid
    expected[first_rows] = 0.0
    by_threshold = dict(zip(result["iou_thresholds"], result["mAP_per_threshold"]))
    assert by_threshold[0.75] == pytest.approx(average_precision(targets, expected).mean, abs=1e-9)


def test_an_image_the_detector_file_lacks_is_named(trained, tmp_path):
    from core.errors import UserError

    package, paths, _, _ = trained["kosti"]
    manifest = manifest_of(paths)
    first_image = manifest["image_path"].iloc[0]
    people = write_people(tmp_path / "people", manifest[manifest["image_path"] != first_image], annotated)
    with pytest.raises(UserError, match=f"no row for 1 image.*first: {first_image}.*dvc repro people"):
        detection_aware.evaluate_on_detections(package, paths.moved(people_dir=people))
