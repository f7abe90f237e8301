"""The loader builds exactly the views a model declares, each one correctly, and counts face fallbacks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.metrics import mean_absolute_error

from core.data import views as V
from core.data.dataset import PersonDataset, input_keys, model_inputs, view_tensor
from core.data.person_inputs import read_face_boxes, split_dataset
from core.errors import UserError
from core.evaluation.metrics import vad_mae
from models.config import NORMALISATIONS, ViewSpec

UNIT = ViewSpec(size=40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
WIDTH, HEIGHT = 80, 60
BODY = [10.0, 5.0, 50.0, 55.0]
OTHER = [55.0, 10.0, 75.0, 50.0]


@pytest.fixture
def photo(tmp_path):
    """One 80 x 60 photo with two annotated people, and its manifest."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)  # no zero pixel: masks are visible
    Image.fromarray(rgb).save(tmp_path / "a.png")
    manifest = pd.DataFrame({
        "sample_id": ["a#0", "a#1"], "image_path": ["a.png", "a.png"], "image_w": [WIDTH] * 2,
        "image_h": [HEIGHT] * 2, "person_box": [np.array(BODY, np.float32), np.array(OTHER, np.float32)],
        "labels": [[0, 2], [1]], "vad": [[5.0, 6.0, 7.0], None],
    })
    return tmp_path, rgb, manifest


def dataset(photo, views, *, size=WIDTH, face_boxes=None, **kwargs):
    root, _, manifest = photo
    spec = ViewSpec(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return PersonDataset(manifest, root, num_classes=3, task="multilabel", views=views,
                         view_specs={v: spec for v in views}, face_boxes=face_boxes, **kwargs)


def test_an_item_holds_exactly_the_declared_views(photo):
    ds = dataset(photo, ("body", "image"))
    item = ds[0]
    assert set(item) == {"body", "image", "target", "index"}
    assert item["body"].shape == (3, WIDTH, WIDTH) and item["image"].shape == (3, WIDTH, WIDTH)
    np.testing.assert_array_equal(item["target"].numpy(), [1.0, 0.0, 1.0])
    assert input_keys(("face", "objects")) == ("face", "obj_feats", "obj_boxes", "obj_mask", "person_box")


def test_a_masked_image_is_zero_exactly_inside_the_box_and_unchanged_outside(photo):
    _, rgb, _ = photo
    spec = ViewSpec(size=WIDTH, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    masked = V.pixel_view("image_body_masked", rgb, body_box=BODY, face_box=[20, 5, 30, 15])
    inside = np.zeros((HEIGHT, WIDTH), bool)
    inside[5:55, 10:50] = True
    assert (masked[inside] == 0).all()
    np.testing.assert_array_equal(masked[~inside], rgb[~inside])
    # a fractional box covers every pixel it touches: [10.5, 5.2, 49.5, 54.9] is the same pixels
    again = V.pixel_view("image_body_masked", rgb, body_box=[10.5, 5.2, 49.5, 54.9], face_box=[0, 0, 1, 1])
    np.testing.assert_array_equal(again, masked)
    # through the loader, at the image's own width the rows are resized only vertically
    assert view_tensor("image_body_masked", rgb, spec, body_box=BODY, face_box=None).shape == (3, WIDTH, WIDTH)


def test_people_masked_zeroes_every_annotated_person_of_the_photo(photo):
    _, rgb, _ = photo
    ds = dataset(photo, ("image_people_masked",))
    np.testing.assert_array_equal(ds.people_boxes[0], [BODY, OTHER])
    masked = V.pixel_view("image_people_masked", rgb, body_box=BODY, face_box=BODY, people_boxes=ds.people_boxes[0])
    assert (masked[5:55, 10:50] == 0).all() and (masked[10:50, 55:75] == 0).all()
    assert (masked[:, :10] == rgb[:, :10]).all() and (masked[:, 75:] == rgb[:, 75:]).all()


def test_a_patch_grid_tiles_the_image(photo):
    _, rgb, _ = photo
    patches = V.patch_grid(rgb, 3)
    assert len(patches) == 9
    rows = [np.concatenate(patches[r * 3:(r + 1) * 3], axis=1) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(rows, axis=0), rgb)
    assert sum(p.shape[0] * p.shape[1] for p in patches) == WIDTH * HEIGHT
    spec = ViewSpec(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), grid=3)
    assert view_tensor("patches", rgb, spec, body_box=BODY, face_box=None).shape == (9, 3, 16, 16)


def test_the_body_view_is_the_crop_resized_and_normalised_as_the_spec_says(photo):
    _, rgb, _ = photo
    mean, std = NORMALISATIONS["imagenet"]
    spec = ViewSpec(size=40, mean=mean, std=std)
    tensor = view_tensor("body", rgb, spec, body_box=BODY, face_box=None).numpy()
    crop = Image.fromarray(rgb[5:55, 10:50]).resize((40, 40), Image.BILINEAR)
    expected = (np.asarray(crop, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    np.testing.assert_allclose(tensor, expected.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_a_person_without_a_detected_face_gets_the_fallback_and_is_counted(photo):
    _, rgb, _ = photo
    ds = dataset(photo, ("face",), size=16, face_boxes=[[20.0, 8.0, 36.0, 24.0], None])
    assert ds.face_fallbacks == 1
    np.testing.assert_array_equal(ds.face_boxes[0], [20.0, 8.0, 36.0, 24.0])
    # OTHER is 20 wide, 40 high: side min(20, 40/3) = 13.33, centred at x 65, at the top
    np.testing.assert_allclose(ds.face_boxes[1], [65 - 20 / 3, 10, 65 + 20 / 3, 10 + 40 / 3], rtol=1e-6)
    item = ds[1]
    expected = view_tensor("face", rgb, ds.view_specs["face"], body_box=OTHER, face_box=ds.face_boxes[1])
    torch.testing.assert_close(item["face"], expected)
    assert dataset(photo, ("body",)).face_fallbacks == 0  # no face view read: nothing to fall back from


def test_face_boxes_come_from_the_detect_stage_and_caers_face_box_files(photo, tmp_path):
    _, _, manifest = photo
    detections = tmp_path / "detections"
    detections.mkdir()
    pq.write_table(pa.table({"sample_id": ["a#0", "a#1"], "face_box": [[20.0, 8.0, 36.0, 24.0], None]}),
                   detections / "test.parquet")
    assert read_face_boxes(detections, "test", manifest, "emotic") == [[20.0, 8.0, 36.0, 24.0], None]
    # CAER-S: a person box smaller than the frame is the data set's face box; the whole frame is not
    caers = manifest.copy()
    caers["person_box"] = [np.array([0, 0, WIDTH, HEIGHT], np.float32), np.array(OTHER, np.float32)]
    assert read_face_boxes(detections, "test", caers, "caers") == [[20.0, 8.0, 36.0, 24.0], OTHER]
    with pytest.raises(UserError, match="run the detect stage"):
        read_face_boxes(detections, "val", manifest, "emotic")
    with pytest.raises(UserError, match="no row for 2 manifest person"):
        read_face_boxes(detections, "test", pd.concat([manifest, manifest.assign(sample_id="b#0")]), "emotic")


class FaceModel(torch.nn.Module):
    views = ("face", "image_face_masked")
    num_classes, task, predicts_vad = 3, "multilabel", True

    def __init__(self):
        super().__init__()
        self.view_specs = {"face": UNIT, "image_face_masked": UNIT}


def test_split_dataset_builds_the_views_a_model_declares_with_vad(photo, tmp_path):
    from core.workspace import Workspace

    root, _, manifest = photo
    (tmp_path / "det").mkdir()
    pq.write_table(pa.table({"sample_id": ["a#0", "a#1"], "face_box": [None, None]}), tmp_path / "det" / "val.parquet")
    paths = Workspace.at(tmp_path, data_root=root, detections_dir=tmp_path / "det")
    ds = split_dataset(FaceModel(), "val", paths, kind="emotic", manifest=manifest)
    assert ds.face_fallbacks == 2
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert set(batch) == {"face", "image_face_masked", "target", "vad", "has_vad", "index"}
    np.testing.assert_array_equal(batch["has_vad"].numpy(), [True, False])
    np.testing.assert_array_equal(batch["vad"].numpy(), [[5, 6, 7], [0, 0, 0]])
    assert set(model_inputs(FaceModel(), batch)) == {"face", "image_face_masked"}


def test_an_unknown_view_or_a_view_without_a_spec_is_an_error(photo):
    with pytest.raises(UserError, match="unknown input view"):
        dataset(photo, ("body", "thermal"))
    root, _, manifest = photo
    with pytest.raises(UserError, match="no size/normalisation"):
        PersonDataset(manifest, root, num_classes=3, task="multilabel", views=("body",), view_specs={})


def test_vad_mae_matches_sklearn_over_the_persons_with_labels():
    rng = np.random.default_rng(1)
    predicted, truth = rng.uniform(1, 10, (20, 3)), rng.uniform(1, 10, (20, 3))
    known = rng.random(20) < 0.7
    result = vad_mae(predicted, truth, known)
    for i, name in enumerate(("valence", "arousal", "dominance")):
        assert result[f"mae_{name}"] == pytest.approx(mean_absolute_error(truth[known, i], predicted[known, i]))
    assert result["mae_vad"] == pytest.approx(mean_absolute_error(truth[known], predicted[known]))
    assert result["vad_persons"] == known.sum()
    assert vad_mae(predicted, truth, np.zeros(20, bool))["mae_vad"] is None
