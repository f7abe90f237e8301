"""detect stage: faces in a real photograph, no_face / unreadable rows, box mapping, Ray path, CLI,
and find_people's detector choice."""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from matplotlib import cbook
from PIL import Image
from support import (
    REPO,  # noqa: E402
    repo_params,
)

from core.data.manifest import manifest_table, write_table
from core.detection.faces import (
    DETECTIONS_SCHEMA,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUS_UNREADABLE,
    faces_for_people,
    run,
)
from core.detection.people import find_people
from core.errors import UserError

# A real photograph shipped with matplotlib (a dependency): Grace Hopper, 512 x 600, one face.
GRACE_HOPPER = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
# Her face as MTCNN finds it in the whole frame (x1, y1, x2, y2), checked by eye.
HOPPER_FACE = np.array([177.3, 118.1, 354.7, 339.4])
BODY_BOX = [100.0, 60.0, 450.0, 512.0]


def gradient_rgb(height: int = 200, width: int = 300) -> np.ndarray:
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], axis=-1)


def person(sample_id: str, image_path: str, box: list[float], dataset: str = "emotic",
           size: tuple[int, int] = (512, 600)) -> dict:
    return {"sample_id": sample_id, "image_path": image_path, "image_w": size[0], "image_h": size[1],
            "person_box": box, "labels": [0], "vad": [5.0, 5.0, 5.0], "dataset": dataset,
            "split": "val", "source_ref": f"test:{sample_id}"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Data root + manifest dir with a face, a gradient, a truncated and a missing image."""
    base = tmp_path_factory.mktemp("detect")
    root, manifest_dir = base / "root", base / "manifest"
    root.mkdir()
    shutil.copy(GRACE_HOPPER, root / "hopper.jpg")
    Image.fromarray(gradient_rgb()).save(root / "gradient.png")
    (root / "truncated.jpg").write_bytes(GRACE_HOPPER.read_bytes()[:3000])
    (root / "not_an_image.jpg").write_text("this is not a JPEG")
    rows = [
        person("body", "hopper.jpg", BODY_BOX),
        person("gradient", "gradient.png", [0, 0, 300, 200], size=(300, 200)),
        person("truncated", "truncated.jpg", [0, 0, 100, 100]),
        person("text", "not_an_image.jpg", [0, 0, 100, 100]),
        person("missing", "missing.jpg", [0, 0, 100, 100]),
        person("caers_frame", "hopper.jpg", [0, 0, 512, 600], dataset="caers"),
        person("too_small", "hopper.jpg", [0, 0, 6, 6]),
    ]
    write_table(manifest_table(rows), manifest_dir / "val.parquet")
    return root, manifest_dir, base


def by_id(path: Path) -> dict[str, dict]:
    return {row["sample_id"]: row for row in pq.read_table(path).to_pylist()}


@pytest.mark.parametrize("detector", ["mtcnn", "haar"])
def test_stage_records_every_person(dataset, detector):
    root, manifest_dir, base = dataset
    out_dir = base / f"out_{detector}"
    summary = run(replace(repo_params().detect, face_detector=detector, batch_size=3), root, manifest_dir, out_dir,
                  splits=["val"])
    table = pq.read_table(out_dir / "val.parquet")
    assert table.schema.equals(DETECTIONS_SCHEMA)
    # Manifest order, nothing dropped.
    assert table.column("sample_id").to_pylist() == [
        "body", "gradient", "truncated", "text", "missing", "caers_frame", "too_small"]
    rows = by_id(out_dir / "val.parquet")
    assert {k: r["status"] for k, r in rows.items()} == {
        "body": STATUS_OK, "caers_frame": STATUS_OK, "gradient": STATUS_NO_FACE,
        "too_small": STATUS_NO_FACE, "truncated": STATUS_UNREADABLE, "text": STATUS_UNREADABLE,
        "missing": STATUS_UNREADABLE}
    assert set(table.column("detector").to_pylist()) == {detector}
    counts = summary["splits"]["val"]
    assert (counts["ok"], counts["no_face"], counts["unreadable_image"]) == (2, 2, 3)
    assert counts["persons"] == 7 and counts["images"] == 5 and counts["ray"] is False
    assert len(counts["unreadable_images"]) == 3

    for sample_id in ("body", "caers_frame"):
        face = np.array(rows[sample_id]["face_box"])
        assert face.shape == (4,) and rows[sample_id]["face_score"] is not None
        # The same face, found in a crop or in the frame, in image coordinates.
        assert np.abs(face[:2] - HOPPER_FACE[:2]).max() < 35
        centre = (face[:2] + face[2:]) / 2
        assert np.abs(centre - (HOPPER_FACE[:2] + HOPPER_FACE[2:]) / 2).max() < 25
    body_face = rows["body"]["face_box"]
    assert BODY_BOX[0] <= body_face[0] < body_face[2] <= BODY_BOX[2]
    assert BODY_BOX[1] <= body_face[1] < body_face[3] <= BODY_BOX[3]
    if detector == "mtcnn":
        assert rows["body"]["face_score"] >= 0.9  # face_threshold
    for sample_id in ("gradient", "too_small", "truncated", "text", "missing"):
        assert rows[sample_id]["face_box"] is None and rows[sample_id]["face_score"] is None
    assert "truncated" in rows["truncated"]["detail"]
    assert "missing.jpg" in rows["missing"]["detail"] and str(root) not in rows["missing"]["detail"]


class FixedFaces:
    """A stand-in detector returning fixed boxes in the coordinates of whatever it is given."""

    name = "fixed"

    def __init__(self, boxes, scores):
        self.boxes, self.scores = np.float32(boxes), np.float32(scores)
        self.seen_shapes: list[tuple[int, ...]] = []

    def detect(self, rgb):
        self.seen_shapes.append(rgb.shape)
        return self.boxes.copy(), self.scores.copy()


def test_crop_boxes_are_mapped_back_and_clipped_to_the_person_box():
    image = np.zeros((100, 200, 3), np.uint8)
    # In crop coordinates: one box overhanging the crop's top-left corner (best score), one inside.
    detector = FixedFaces([[-5, -4, 20, 30], [10, 20, 30, 40]], [0.97, 0.91])
    [result] = faces_for_people(image, [[50.4, 10.6, 120.0, 90.0]], detector)
    # Crop window: x 50..120, y 10..90 (floor/ceil of the box) -> offset (50, 10).
    assert detector.seen_shapes == [(80, 70, 3)]
    assert result.status == STATUS_OK
    np.testing.assert_allclose(result.face_box, [50.4, 10.6, 70.0, 40.0], rtol=0, atol=1e-4)
    assert result.face_score == pytest.approx(0.97)


def test_whole_frame_mode_prefers_the_face_inside_the_person_box():
    image = np.zeros((100, 200, 3), np.uint8)
    detector = FixedFaces([[150, 10, 190, 50], [20, 20, 60, 60], [0, 0, 10, 10]], [0.99, 0.80, 0.95])
    results = faces_for_people(image, [[10, 10, 70, 70], [0, 0, 200, 100]], detector, whole_frame=True)
    # The frame is searched once for both persons.
    assert detector.seen_shapes == [(100, 200, 3)]
    assert results[0].face_box == (20.0, 20.0, 60.0, 60.0) and results[0].face_score == pytest.approx(0.8)
    # A whole-frame person box contains every face: the best score wins.
    assert results[1].face_box == (150.0, 10.0, 190.0, 50.0)


def test_unreadable_image_gives_unreadable_rows():
    results = faces_for_people(None, [[0, 0, 5, 5], [1, 1, 4, 4]], FixedFaces(np.zeros((0, 4)), []))
    assert [r.status for r in results] == [STATUS_UNREADABLE, STATUS_UNREADABLE]


def test_ray_data_path_matches_in_process(dataset):
    import ray

    from core.ray_utils import init_ray

    root, manifest_dir, base = dataset
    init_ray(num_cpus=2, object_store_memory=300 * 1024**2, temp_dir="/tmp/ray_detect_test")
    try:
        # Haar keeps the actors light (no torch); 2 batches -> 2 actors, blocks out of order.
        summary = run(replace(repo_params().detect, face_detector="haar", engine="ray", batch_size=4), root,
                      manifest_dir, base / "out_ray", splits=["val"])
    finally:
        ray.shutdown()
    assert summary["splits"]["val"]["ray"] is True
    local = base / "out_local"
    run(replace(repo_params().detect, face_detector="haar", batch_size=4), root, manifest_dir, local, splits=["val"])
    assert pq.read_table(base / "out_ray" / "val.parquet").equals(pq.read_table(local / "val.parquet"))


def test_cli_runs_on_a_manifest(dataset, tmp_path):
    root, manifest_dir, _ = dataset
    for split in ("train", "test"):
        write_table(manifest_table([person(f"{split}_0", "gradient.png", [0, 0, 300, 200], size=(300, 200))]),
                    tmp_path / "manifest" / f"{split}.parquet")
    shutil.copy(manifest_dir / "val.parquet", tmp_path / "manifest" / "val.parquet")
    params = tmp_path / "params.yaml"
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["data"]["root"], data["detect"]["face_detector"] = str(root), "haar"
    params.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "stages.detect", "--params", str(params),
         "--manifest-dir", str(tmp_path / "manifest"), "--out-dir", str(tmp_path / "detections")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "val: 7 persons in 5 images: faces found 2, none 2, unreadable 3" in done.stdout
    assert "train: 1 persons in 1 images: faces found 0, none 1, unreadable 0" in done.stdout
    assert sorted(p.name for p in (tmp_path / "detections").iterdir()) == [
        "test.parquet", "train.parquet", "val.parquet"]


def test_user_mistakes_are_clear_errors(dataset, tmp_path):
    root, manifest_dir, _ = dataset
    with pytest.raises(UserError, match="face_detector 'yolo'"):
        run(replace(repo_params().detect, face_detector="yolo"), root, manifest_dir, tmp_path, splits=["val"])
    with pytest.raises(UserError, match="manifest not found: .*train.parquet"):
        run(repo_params().detect, root, manifest_dir, tmp_path, splits=["train"])
    with pytest.raises(UserError, match="dataset root not found"):
        run(repo_params().detect, tmp_path / "nowhere", manifest_dir, tmp_path, splits=["val"])


def test_find_people_falls_back_to_hog_without_weights(tmp_path, monkeypatch):
    import torch

    from core.detection import people

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    people.load_person_detector.cache_clear()
    try:
        found = find_people(Image.open(GRACE_HOPPER))
        assert found.detector == "hog"
        height, width = 600, 512
        for box, score in found.people:
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
            assert isinstance(score, float)
        assert find_people(gradient_rgb()).people == []
        # Smaller than HOG's 64 x 128 window: nobody, no error.
        assert find_people(np.zeros((40, 30, 3), np.uint8)) == ([], "hog")
    finally:
        people.load_person_detector.cache_clear()


def test_find_people_uses_a_local_weights_file(tmp_path):
    import torch
    from torchvision.models import get_model

    from core.detection import people

    name = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision detector
    torch.manual_seed(0)
    model = get_model(name, weights=None, weights_backbone=None, num_classes=91)
    weights = tmp_path / "detector.pth"
    torch.save(model.state_dict(), weights)
    people.load_person_detector.cache_clear()
    try:
        found = find_people(gradient_rgb(), detector=name, weights=str(weights), score_threshold=0.5)
        assert found.detector == f"{name} (detector.pth)"
        # Random heads score every class near 1/91: nothing passes the threshold.
        assert found.people == []

        torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
        with pytest.raises(UserError, match="does not hold"):
            find_people(gradient_rgb(), detector=name, weights=str(tmp_path / "wrong.pth"))
        with pytest.raises(UserError, match="weights file not found"):
            find_people(gradient_rgb(), detector=name, weights=str(tmp_path / "absent.pth"))
    finally:
        people.load_person_detector.cache_clear()


@pytest.mark.parametrize("engine, images, address, cpus, expected, why", [
    ("auto", 224, None, 8, "local", "224 images < detect.ray_min_images 500"),   # the demo's train split
    ("auto", 2000, None, 2, "local", "2 CPUs < detect.ray_min_cpus 4, no cluster"),  # 2 actors lose to their start-up
    ("auto", 2000, None, 8, "ray", "8 CPUs >= detect.ray_min_cpus 4"),
    ("auto", 2000, "ray://head:10001", 2, "ray", "a Ray cluster at ray://head:10001"),
    ("auto", 100, "ray://head:10001", 64, "local", "100 images < detect.ray_min_images 500"),
    ("ray", 1, None, 1, "ray", "detect.engine: ray"),
    ("local", 10_000, "ray://head:10001", 64, "local", "detect.engine: local"),
])
def test_the_detect_engine_follows_the_resources(engine, images, address, cpus, expected, why):
    from core.ray_utils import choose_engine

    cfg = replace(repo_params().detect, engine=engine, ray_min_images=500, ray_min_cpus=4)
    # MTCNN runs on CPU: the stage passes no GPU, so a GPU machine decides by its CPUs
    assert choose_engine("detect", cfg.engine, images, min_images=cfg.ray_min_images, min_cpus=cfg.ray_min_cpus,
                         cluster_address=address, cpus=cpus) == (expected, why)


def test_the_stage_says_which_engine_ran_each_split_and_why(dataset, monkeypatch):
    root, manifest_dir, base = dataset
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    summary = run(replace(repo_params().detect, face_detector="haar", engine="auto", ray_min_images=1,
                          ray_min_cpus=10_000), root, manifest_dir, base / "out_auto", splits=["val"])
    counts = summary["splits"]["val"]
    assert counts["ray"] is False and counts["engine_reason"].endswith("< detect.ray_min_cpus 10000, no cluster")
