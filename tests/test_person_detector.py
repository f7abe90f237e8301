"""people stage (core/detection/person_detector.py): the parquet contract (one row per image, boxes in
the frame, best first), the reader, the random-box baseline against a perfect detector, the COCO
starting weights cut to background + person, and a tiny real training run end to end."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support import repo_params

import core.params as params_module
from core.detection import person_detector as pd_
from core.detection.person_detector import (
    PEOPLE_SCHEMA,
    STATUS_OK,
    STATUS_UNREADABLE,
    build_detector,
    coco_stats,
    detect_images,
    images_of,
    load_trained_detector,
    random_boxes,
    read_people,
    read_people_detector,
    run,
)
from core.errors import UserError

TINY = {"epochs": 1, "batch_size": 4, "min_size": 64, "max_size": 96, "rpn_proposals": 32, "rois_per_image": 16,
        "score_threshold": 0.0, "max_detections": 5, "detect_batch_size": 4, "weights": None}


def tiny_cfg(**changes):
    return replace(repo_params().people, **{**TINY, **changes})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """12 generated EMOTIC-format images through the real ingest stage."""
    from core.data import ingest
    from core.synth import generate

    base = tmp_path_factory.mktemp("people")
    generate(base / "raw", images=12, seed=0, fmt="emotic")
    ingest.run(replace(repo_params().data, kind="emotic", root=str(base / "raw"), annotations="Annotations.mat"),
               0, out_dir=base / "data")
    return base


@pytest.fixture(scope="module")
def tiny_run(tiny_data):
    """One real (1-epoch, 64-pixel) training and detection run; keep the slow part shared."""
    from core.data.manifest import read_manifest

    train = read_manifest("train", tiny_data / "data/manifest")
    assert train["image_path"].nunique() >= 4 and len(read_manifest("val", tiny_data / "data/manifest"))
    summary = run(tiny_cfg(), 0, tiny_data / "raw", tiny_data / "data/manifest", tiny_data / "out",
                  tiny_data / "reports/people.json", log=lambda _: None)
    return tiny_data, summary


def test_a_tiny_training_run_writes_every_output(tiny_run):
    from core.data.manifest import read_manifest

    base, _ = tiny_run
    assert sorted(p.name for p in (base / "out").iterdir()) == ["detector.json", "detector.pt", "test.parquet", "val.parquet"]
    report = json.loads((base / "reports/people.json").read_text())
    assert report["starting_weights"] == {"source": "random", "name": "random", "frozen_batchnorm": False}
    assert report["train"]["epochs"] == 1 and report["train"]["seconds"] > 0
    for split in ("val", "test"):
        manifest = read_manifest(split, base / "data/manifest")
        table = pq.read_table(base / "out" / f"{split}.parquet")
        assert table.schema.equals(PEOPLE_SCHEMA)
        # one row per image, in first-appearance order, also for images the detector found nobody in
        assert table.column("image_path").to_pylist() == list(dict.fromkeys(manifest["image_path"]))
        for row in table.to_pylist():
            boxes, scores = np.array(row["boxes"]).reshape(-1, 4), np.array(row["scores"])
            assert row["status"] == STATUS_OK and len(boxes) == len(scores) <= 5
            assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= row["image_w"]).all()
            assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= row["image_h"]).all()
            assert (np.diff(scores) <= 0).all()
        stats = report[split]
        assert stats["detector"]["num_persons"] == len(manifest)
        assert stats["random"]["num_detections"] == stats["detector"]["num_detections"]
        assert 0 <= stats["detector"]["AP"] <= 1 and "log" not in stats["detector"]
    # the detector is saved so that others can run it
    model, meta = load_trained_detector(base / "out/detector.pt")
    assert meta["detector"] == TINY_DETECTOR and meta["config"]["min_size"] == 64
    assert meta == json.loads((base / "out/detector.json").read_text())
    assert read_people_detector(base / "out") == f"{TINY_DETECTOR} (trained on the train split from random weights)"
    with torch.inference_mode():
        assert set(model([torch.rand(3, 48, 64)])[0]) == {"boxes", "labels", "scores"}


TINY_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


def test_read_people_round_trip_and_missing_file(tiny_run, tmp_path):
    base, _ = tiny_run
    table = pq.read_table(base / "out/val.parquet").to_pylist()
    people = read_people(base / "out", "val")
    assert list(people) == [row["image_path"] for row in table]
    for row in table:
        boxes, scores = people[row["image_path"]]
        assert boxes.dtype == np.float64 and boxes.shape == (len(row["scores"]), 4)
        np.testing.assert_allclose(boxes, np.array(row["boxes"], dtype=np.float32).reshape(-1, 4))
        np.testing.assert_allclose(scores, np.array(row["scores"], dtype=np.float32))
    with pytest.raises(UserError, match=r"test\.parquet .*run `dvc repro people`"):
        read_people(tmp_path, "test")
    with pytest.raises(UserError, match=r"detector\.json .*run `dvc repro people`"):
        read_people_detector(tmp_path)


class StubDetector:
    """Fixed torchvision-style outputs, one per image given, to check the row cleaning."""

    def __init__(self, outputs):
        self.outputs, self.calls = list(outputs), []

    def eval(self):
        return self

    def __call__(self, images):
        self.calls.append([tuple(t.shape) for t in images])
        return [self.outputs.pop(0) for _ in images]


def _output(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_rows_are_clipped_sorted_and_one_per_image_even_without_detections(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "b.png")
    (tmp_path / "broken.jpg").write_text("not an image")
    images = [{"image_path": name, "image_w": 40, "image_h": 30, "boxes": np.zeros((1, 4))}
              for name in ("a.png", "broken.jpg", "b.png")]
    model = StubDetector([
        # overhanging (clipped), a better one, one outside the frame (empty after clipping), another class
        _output([[-5, 2, 20, 50], [1, 1, 9, 9], [45, 0, 60, 10], [0, 0, 5, 5]], [0.4, 0.9, 0.8, 0.99], [1, 1, 1, 2]),
        _output([], [], []),
    ])
    rows = detect_images(model, images, tmp_path, tiny_cfg(detect_batch_size=8))
    assert model.calls == [[(3, 30, 40), (3, 30, 40)]]  # the unreadable image is not sent to the model
    table = pa.Table.from_pylist(rows, schema=PEOPLE_SCHEMA)
    assert table.column("image_path").to_pylist() == ["a.png", "broken.jpg", "b.png"]
    a, broken, b = table.to_pylist()
    assert a["boxes"] == [[1, 1, 9, 9], [0, 2, 20, 30]] and a["scores"] == pytest.approx([0.9, 0.4])
    assert b["boxes"] == [] and b["scores"] == [] and b["status"] == STATUS_OK
    assert broken["status"] == STATUS_UNREADABLE and broken["boxes"] == []
    assert broken["detail"].startswith("broken.jpg: cannot decode image") and str(tmp_path) not in broken["detail"]


def test_random_boxes_are_seeded_inside_the_frame_and_score_below_a_perfect_detector():
    rng = np.random.default_rng(3)
    frames = [(320, 240)] * 20
    gt = []
    for _ in frames:  # two person-sized boxes per image
        corner = rng.uniform([0, 0], [260, 100], (2, 2))
        gt.append(np.concatenate([corner, corner + [55, 130]], axis=1))
    first = random_boxes(frames, [10] * 20, seed=7)
    second = random_boxes(frames, [10] * 20, seed=7)
    for (b1, s1), (b2, s2) in zip(zip(*first), zip(*second)):
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(first[0][0], random_boxes(frames, [10] * 20, seed=8)[0][0])
    boxes = np.concatenate(first[0])
    assert boxes.shape == (200, 4) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes[:, [0, 2]].min() >= 0 and boxes[:, [0, 2]].max() <= 320 and boxes[:, [1, 3]].max() <= 240
    # the annotated boxes themselves are a perfect detector: every IoU is 1 at every threshold
    perfect = coco_stats(gt, gt, [np.ones(2)] * 20)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    assert perfect["AR100"] == pytest.approx(1.0) and perfect["num_persons"] == 40
    chance = coco_stats(gt, *first)
    assert chance["AP"] < 0.1 and chance["AP50"] < 0.3 and chance["num_detections"] == 200


def test_weights_file_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"people\.weights: file not found: .*absent\.pt"):
        build_detector(tiny_cfg(weights=str(tmp_path / "absent.pt")), 0)
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="not a torchvision Faster R-CNN"):
        build_detector(tiny_cfg(weights=str(tmp_path / "wrong.pt")), 0)


def test_coco_weights_keep_background_and_person_rows(tmp_path):
    from torchvision.models import get_model

    torch.manual_seed(1)
    coco = get_model(TINY_DETECTOR, weights=None, weights_backbone=None, num_classes=91)
    torch.save({"model": coco.state_dict()}, tmp_path / "coco.pth")  # a reference-script checkpoint
    model, weights = build_detector(tiny_cfg(weights=str(tmp_path / "coco.pth")), 0)
    assert weights["source"] == "file" and weights["frozen_batchnorm"] is True and len(weights["sha256"]) == 64
    source, cut = coco.roi_heads.box_predictor, model.roi_heads.box_predictor
    torch.testing.assert_close(cut.cls_score.weight, source.cls_score.weight[[0, 1]])
    torch.testing.assert_close(cut.bbox_pred.bias, source.bbox_pred.bias[:8])  # rows of classes 0 and 1
    torch.testing.assert_close(model.backbone.body["0"][0].weight, coco.backbone.body["0"][0].weight)


def test_without_cached_coco_weights_the_start_is_random(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    described, state = pd_.starting_weights(tiny_cfg())
    assert described == {"source": "random", "name": "random"} and state is None


def test_choice_list_agrees_with_params_and_the_stage_reports_user_errors(tmp_path, capsys):
    from stages.people import main

    assert set(params_module.PERSON_DETECTORS) == set(pd_.PERSON_DETECTORS)
    with pytest.raises(SystemExit) as info:
        main(["--manifest-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("people: error: ")
    assert not (tmp_path / "out").exists()


def test_images_of_groups_persons_by_image():
    import pandas as pd

    manifest = pd.DataFrame({"image_path": ["b.jpg", "a.jpg", "b.jpg"], "image_w": [10, 20, 10],
                             "image_h": [5, 6, 5], "person_box": [[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]]})
    images = images_of(manifest)
    assert [e["image_path"] for e in images] == ["b.jpg", "a.jpg"]
    np.testing.assert_array_equal(images[0]["boxes"], [[0, 0, 1, 1], [2, 2, 3, 3]])
    assert (images[1]["image_w"], images[1]["image_h"]) == (20, 6)


def test_unreadable_training_images_are_skipped_and_reported(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    entry = {"image_w": 64, "image_h": 48, "boxes": np.array([[10.0, 5.0, 30.0, 45.0]])}
    images = [{**entry, "image_path": "good.png"}, {**entry, "image_path": "broken.jpg"}]
    cfg = tiny_cfg()
    model, _ = build_detector(cfg, 0)
    done = pd_.train_detector(model, cfg, images, tmp_path, 0, False, log=lambda _: None)
    assert done["images"] == 1 and done["persons"] == 1 and np.isfinite(done["loss_last_epoch"])
    assert [line.split(":")[0] for line in done["unreadable_images"]] == ["broken.jpg"]
    with pytest.raises(UserError, match="no readable training image"):
        pd_.train_detector(model, cfg, images[1:], tmp_path, 0, False, log=lambda _: None)


def test_a_cached_coco_enum_is_read_from_the_cache_not_downloaded(monkeypatch):
    from torchvision.models import get_model

    from core.detection import coco_weights

    torch.manual_seed(2)
    coco = get_model(TINY_DETECTOR, weights=None, weights_backbone=None, num_classes=91).state_dict()

    class CachedEnum:  # stands in for FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1 in the hub cache
        name = "COCO_V1"

        def get_state_dict(self, progress):
            assert progress is False
            return coco

    monkeypatch.setattr(coco_weights, "cached_enum_weights", lambda detector: CachedEnum())
    model, weights = build_detector(tiny_cfg(), 0)
    assert weights == {"source": "torchvision", "name": "CachedEnum.COCO_V1", "frozen_batchnorm": True}
    torch.testing.assert_close(model.roi_heads.box_predictor.cls_score.bias, coco["roi_heads.box_predictor.cls_score.bias"][[0, 1]])
