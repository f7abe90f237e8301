"""objects stage: array contract, selection rules, resume, bad input, RoI feature maths, ObjectStore."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image
from support import REPO  # noqa: E402

from core.data.images import ImageReadError, load_rgb
from core.data.manifest import manifest_table, write_table
from core.data.object_store import ObjectStore
from core.errors import UserError
from core.features import objects
from core.features.extractor import ObjectFeatureExtractor
from core.features.roi_model import build_model, prepare_image
from core.features.selection import iou_with, select_for_person
from core.features.shards import ARRAY_NAMES, fp16_steps_apart
from core.features.weights import WeightsChoice, cached_checkpoint
from core.params import load_params

TOP_N = 3
IMAGE_SIZE = 48

# image -> (width, height, [(sample_id, person_box)])
IMAGES = {
    "img/a.jpg": (96, 64, [("a0", [4, 4, 40, 60]), ("a1", [50, 8, 90, 62])]),
    "img/b.png": (64, 80, [("b0", [10, 10, 50, 70])]),
    "img/c.jpg": (72, 72, [("c0", [0, 0, 30, 30])]),
    "img/d.jpg": (80, 64, [("d0", [5, 5, 60, 60])]),          # written corrupt
    "img/e.png": (120, 90, [("e0", [10, 10, 60, 80]), ("e1", [70, 5, 115, 85])]),
}
VAL_IMAGES = {"img/v.jpg": (64, 64, [("v0", [8, 8, 40, 56])])}

BOXES_CSV = """image_path,x1,y1,x2,y2,label,score
img/a.jpg,4,4,40,60,person,0.99
img/a.jpg,50,8,90,62,person,0.95
img/a.jpg,60,10,80,30,cup,0.40
img/a.jpg,2,30,20,50,dog,0.80
img/a.jpg,30,2,70,20,cup,0.60
img/a.jpg,10,40,30,63,dog,0.20
img/b.png,20,20,40,40,chair,0.70
img/b.png,-5,60,30,200,table,
img/b.png,1,1,2,x,chair,0.9
img/b.png,70,10,90,30,cup,0.9
img/e.png,12,12,58,78,person,0.90
img/e.png,72,6,114,84,person,0.90
img/e.png,0,0,30,30,cup,0.5
img/e.png,80,60,110,88,dog,0.5
img/e.png,40,40,70,70,chair,0.5
img/zzz.jpg,1,1,5,5,cup,0.9
img/v.jpg,40,40,60,60,cup,0.9
"""


def make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for split, images in (("train", IMAGES), ("val", VAL_IMAGES)):
        for path, (w, h, people) in images.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            if path == "img/d.jpg":
                (root / path).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
            else:
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / path)
            for sample_id, box in people:
                rows.append({"sample_id": sample_id, "image_path": path, "image_w": w, "image_h": h,
                             "person_box": [float(v) for v in box], "labels": [0], "vad": None,
                             "dataset": "emotic", "split": split, "source_ref": f"test:{sample_id}"})
    (root / "object_boxes.csv").write_text(BOXES_CSV)
    manifest_dir = root / "manifest"
    for split in ("train", "val"):
        write_table(manifest_table([r for r in rows if r["split"] == split]), manifest_dir / f"{split}.parquet")
    return manifest_dir


def small_params(root: Path, **objects_overrides):
    params = load_params(REPO / "params.yaml")
    cfg = dataclasses.replace(params.objects, boxes="dataset", boxes_file="object_boxes.csv", weights=None,
                              allow_random_weights=True, top_n=TOP_N, image_size=IMAGE_SIZE,
                              shard_size=2, score_threshold=0.3, exclude_iou=0.7, num_actors=None)
    cfg = dataclasses.replace(cfg, **objects_overrides)
    return dataclasses.replace(params, data=dataclasses.replace(params.data, root=str(root)), objects=cfg)


@pytest.fixture(autouse=True)
def no_cached_weights(tmp_path_factory, monkeypatch):
    # An empty torch hub: tests never see (or fetch) pretrained files.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The Ray actors run single-threaded; in-process runs must too for bit-identical numbers.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    """One uninterrupted in-process run shared by the read-only tests."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray actors use one thread too: results must match bit for bit
    root = tmp_path_factory.mktemp("data")
    manifest_dir = make_dataset(root)
    out_dir = root / "objects"
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(root / "torch_home"))
    try:
        summary = objects.run(small_params(root), ("train", "val"), out_dir, manifest_dir=manifest_dir,
                              engine="local", log=lambda _: None)
    finally:
        mp.undo()
        torch.set_num_threads(previous_threads)
    return root, manifest_dir, out_dir, summary


def load_split(split_dir: Path) -> dict[str, np.ndarray]:
    return {name: np.load(split_dir / f"{name}.npy") for name in ARRAY_NAMES}


def row_by_id(split_dir: Path) -> dict[str, int]:
    index = pq.read_table(split_dir / "index.parquet").to_pandas()
    return dict(zip(index["sample_id"], index["row"]))


def csv_boxes(image_path: str) -> pd.DataFrame:
    from io import StringIO

    table = pd.read_csv(StringIO(BOXES_CSV))
    return table[table["image_path"] == image_path].reset_index(drop=True)


def test_arrays_follow_the_contract(local_result):
    _, _, out_dir, summary = local_result
    arrays = load_split(out_dir / "train")
    persons = sum(len(p) for _, _, p in IMAGES.values())
    assert arrays["features"].shape == (persons, TOP_N, 2048) and arrays["features"].dtype == np.float16
    assert arrays["boxes"].shape == (persons, TOP_N, 4) and arrays["boxes"].dtype == np.float32
    assert arrays["scores"].shape == (persons, TOP_N) and arrays["scores"].dtype == np.float32
    assert arrays["classes"].shape == (persons, TOP_N) and arrays["classes"].dtype == np.int16
    assert arrays["counts"].shape == (persons,) and arrays["counts"].dtype == np.int32
    # Rows follow the manifest order.
    expected_ids = [sid for _, _, people in IMAGES.values() for sid, _ in people]
    assert list(pq.read_table(out_dir / "train" / "index.parquet").column("sample_id").to_pylist()) == expected_ids
    # Memory-mappable as written.
    assert isinstance(np.load(out_dir / "train" / "features.npy", mmap_mode="r"), np.memmap)
    meta = json.loads((out_dir / "train" / "meta.json").read_text())
    assert meta["classes"] == ["chair", "cup", "dog", "person", "table"]
    assert meta["weights"] == {"source": "random", "name": "random", "sha256": None, "seed": 0}
    assert meta["top_n"] == TOP_N and meta["samples"] == persons
    assert meta["counts"]["objects"] == int(arrays["counts"].sum())
    assert summary["splits"]["train"]["complete"] and summary["splits"]["val"]["complete"]
    # 5 train images in shards of 2 -> 3 shards, all computed in this run; shards removed afterwards.
    assert summary["splits"]["train"]["computed"] == [0, 1, 2] and summary["splits"]["train"]["reused"] == []
    assert not (out_dir.parent / "objects.shards" / "train").exists()


def test_own_box_excluded_other_person_kept_top_n_by_score(local_result):
    _, _, out_dir, _ = local_result
    arrays, rows = load_split(out_dir / "train"), row_by_id(out_dir / "train")
    classes = json.loads((out_dir / "train" / "meta.json").read_text())["classes"]
    table = csv_boxes("img/a.jpg")
    # a0: its own box (0.99) is excluded; a1's box (0.95) stays; then dog 0.80 > cup 0.60 > cup 0.40.
    a0 = rows["a0"]
    assert arrays["counts"][a0] == TOP_N
    np.testing.assert_array_equal(arrays["scores"][a0], np.float32([0.95, 0.80, 0.60]))
    np.testing.assert_array_equal(arrays["boxes"][a0], table.loc[[1, 3, 4], ["x1", "y1", "x2", "y2"]].to_numpy(np.float32))
    assert [classes[c] for c in arrays["classes"][a0]] == ["person", "dog", "cup"]
    # a1 symmetrically keeps a0's box first.
    a1 = rows["a1"]
    np.testing.assert_array_equal(arrays["scores"][a1], np.float32([0.99, 0.80, 0.60]))
    np.testing.assert_array_equal(arrays["boxes"][a1][0], np.float32([4, 4, 40, 60]))
    # e0/e1: near-duplicates of their own boxes (IoU >= 0.7) are excluded, the other person kept.
    e0 = rows["e0"]
    assert arrays["counts"][e0] == TOP_N
    assert [classes[c] for c in arrays["classes"][e0]] == ["person", "cup", "dog"]
    np.testing.assert_array_equal(arrays["boxes"][e0][0], np.float32([72, 6, 114, 84]))
    # The 0.20 dog is below score_threshold 0.3 and never selected.
    assert not np.any(np.isclose(arrays["scores"], 0.20))
    assert np.all(np.diff(arrays["scores"][a0]) <= 0)


def test_fewer_boxes_are_zero_padded_and_counted(local_result):
    _, _, out_dir, _ = local_result
    arrays, rows = load_split(out_dir / "train"), row_by_id(out_dir / "train")
    # b0: chair 0.70 and the clamped table (empty score = 1.0); the row with 'x' is rejected, the
    # cup at x>=70 lies outside the 64-px-wide image.
    b0 = rows["b0"]
    assert arrays["counts"][b0] == 2
    np.testing.assert_array_equal(arrays["scores"][b0], np.float32([1.0, 0.70, 0.0]))
    np.testing.assert_array_equal(arrays["boxes"][b0][0], np.float32([0, 60, 30, 80]))   # clamped to 64x80
    assert np.all(arrays["features"][b0, 2] == 0) and np.all(arrays["boxes"][b0, 2] == 0)
    assert arrays["classes"][b0, 2] == -1
    assert np.any(arrays["features"][b0, :2] != 0)
    # c0: no boxes at all.
    c0 = rows["c0"]
    assert arrays["counts"][c0] == 0 and np.all(arrays["features"][c0] == 0) and np.all(arrays["classes"][c0] == -1)
    rejected = pq.read_table(out_dir / "rejected_boxes.parquet").to_pandas()
    assert sorted(zip(rejected["line"], rejected["reason"])) == [
        (10, "bad_number"), (11, "empty_after_clamp"), (17, "image_not_in_processed_splits")]


def test_corrupt_image_is_reported_not_fatal(local_result):
    _, _, out_dir, summary = local_result
    arrays, rows = load_split(out_dir / "train"), row_by_id(out_dir / "train")
    index = pq.read_table(out_dir / "train" / "index.parquet").to_pandas().set_index("sample_id")
    assert index.loc["d0", "status"] == "unreadable_image" and "cannot decode" in index.loc["d0", "reason"]
    assert (index["status"] == "ok").sum() == len(index) - 1
    assert arrays["counts"][rows["d0"]] == 0 and np.all(arrays["features"][rows["d0"]] == 0)
    meta = json.loads((out_dir / "train" / "meta.json").read_text())
    assert [u["image_path"] for u in meta["unreadable"]] == ["img/d.jpg"]
    assert meta["unreadable"][0]["sample_ids"] == ["d0"]
    assert summary["splits"]["train"]["unreadable_images"] == 1


def test_roi_feature_equals_direct_res5_of_roi_align(local_result):
    root, _, out_dir, _ = local_result
    arrays, rows = load_split(out_dir / "train"), row_by_id(out_dir / "train")
    # Independent of the stage's module wiring: a torchvision ResNet-50 with the same seeded init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        resnet = torchvision.models.resnet50().eval()
    rgb = np.array(Image.open(root / "img/a.jpg").convert("RGB"))
    image, (sx, sy) = prepare_image(rgb, IMAGE_SIZE)
    assert image.shape[-2:] == (IMAGE_SIZE, round(96 * IMAGE_SIZE / 64)) and (sx, sy) == (72 / 96, 48 / 64)
    box = arrays["boxes"][rows["a0"]][1]
    with torch.no_grad():
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(image))))
        c4 = resnet.layer3(resnet.layer2(resnet.layer1(x)))
        roi = torchvision.ops.roi_align(c4, [torch.from_numpy(box * np.float32([sx, sy, sx, sy]))[None]], output_size=14,
                                        spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
        res5 = resnet.layer4(roi)
        assert res5.shape[-2:] == (7, 7)
        direct = res5.mean(dim=(2, 3))[0].numpy()
    stored = arrays["features"][rows["a0"]][1].astype(np.float32)
    np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=1e-3)
    assert np.abs(direct).max() > 0.1


def test_the_public_extractor_gives_the_stages_numbers(local_result, tmp_path):
    from core.detection import people as people_detection

    root, _, out_dir, _ = local_result
    meta = json.loads((out_dir / "train" / "meta.json").read_text())
    params = small_params(root)
    extractor = ObjectFeatureExtractor(params.objects, params.seed, meta, data_root=root)
    assert extractor.weights.as_dict() == meta["weights"]
    arrays, rows = load_split(out_dir / "train"), row_by_id(out_dir / "train")
    for image_path, (_, _, people) in IMAGES.items():
        if image_path == "img/d.jpg":   # unreadable: the caller's load_rgb fails before any extraction
            continue
        found = extractor.extract(load_rgb(root / image_path), [box for _, box in people], image_path=root / image_path)
        if image_path != "img/c.jpg":   # c.jpg has no rows in the boxes file: no objects either way
            assert found.source == "data set boxes (object_boxes.csv)" and found.class_names == meta["classes"]
        for (sample_id, _), person in zip(people, found.people, strict=True):
            row = rows[sample_id]
            for name, stored in (("features", "features"), ("boxes", "boxes"), ("scores", "scores"),
                                 ("classes", "classes"), ("count", "counts")):
                np.testing.assert_array_equal(getattr(person, name), arrays[stored][row], err_msg=f"{sample_id}/{name}")

    # Outside the data set and without cached detector weights there are no object boxes, and it says so.
    people_detection.load_person_detector.cache_clear()
    outside = tmp_path / "photo.png"
    outside.write_bytes((root / "img/a.jpg").read_bytes())
    found = extractor.extract(load_rgb(outside), [[4, 4, 40, 60]], image_path=outside)
    assert found.source.startswith("none:") and found.people[0].count == 0
    with pytest.raises(UserError, match="does not match the model's params"):
        ObjectFeatureExtractor(params.objects, params.seed, {**meta, "top_n": TOP_N + 1}, data_root=root)


def test_object_store_reads_back(local_result):
    _, _, out_dir, _ = local_result
    arrays = load_split(out_dir / "train")
    store = ObjectStore(out_dir / "train")
    assert len(store) == len(arrays["counts"]) and store.classes[0] == "chair"
    store = pickle.loads(pickle.dumps(store))   # as a DataLoader worker receives it
    assert store._arrays is None
    for sample_id, row in row_by_id(out_dir / "train").items():
        assert store.row_of(sample_id) == row
        feats, boxes, mask = store.get(row)
        assert feats.dtype == np.float16 and boxes.dtype == np.float32 and mask.dtype == bool
        np.testing.assert_array_equal(feats, arrays["features"][row])
        np.testing.assert_array_equal(boxes, arrays["boxes"][row])
        np.testing.assert_array_equal(mask, np.arange(TOP_N) < arrays["counts"][row])
        np.testing.assert_array_equal(store.scores(row), arrays["scores"][row])
    assert feats.flags.writeable   # a copy, safe for torch.from_numpy
    with pytest.raises(UserError, match="no object row for sample_id 'nobody'"):
        store.row_of("nobody")
    with pytest.raises(UserError, match="run `python -m stages.objects`"):
        ObjectStore(out_dir / "test")


@pytest.fixture
def local_ray(tmp_path_factory):
    import ray

    from core.ray_utils import init_ray

    if ray.is_initialized():   # left over by another test module: this test needs exactly 2 CPUs
        ray.shutdown()
    assert init_ray(num_cpus=2, object_store_memory=300 * 1024**2, temp_dir="/tmp/ray_obj")
    yield
    ray.shutdown()


def test_ray_run_resumes_and_matches_uninterrupted_run(local_result, local_ray, tmp_path):
    root, manifest_dir, reference_dir, _ = local_result
    params = small_params(root)
    out_dir, shard_root = tmp_path / "objects", tmp_path / "shards"
    logs: list[str] = []

    def run(limit):
        return objects.run(params, ("train", "val"), out_dir, limit, manifest_dir=manifest_dir,
                           shard_root=shard_root, engine="ray", log=logs.append)

    first = run(1)                                  # interrupted after one shard
    assert first["splits"]["train"] == {"persons": 7, "shards": 3, "computed": [0], "reused": [], "complete": False}
    assert not (out_dir / "train").exists()
    part0 = shard_root / "train" / "part-00000.npz"
    stamp = part0.stat().st_mtime_ns
    # The middle leg runs in-process (cheaper than a second Ray pipeline): shards do not depend on the engine.
    second = objects.run(params, ("train", "val"), out_dir, 1, manifest_dir=manifest_dir, shard_root=shard_root,
                         engine="local", log=logs.append)
    assert second["splits"]["train"]["computed"] == [1] and second["splits"]["train"]["reused"] == [0]
    assert part0.stat().st_mtime_ns == stamp        # finished shard not recomputed
    third = run(None)
    assert third["splits"]["train"]["computed"] == [2] and third["splits"]["train"]["reused"] == [0, 1]
    assert third["splits"]["train"]["complete"] and third["splits"]["val"]["computed"] == [0]
    assert third["execution"]["actors"] == 2
    assert any("train shard 3/3 done" in line for line in logs)
    # the actors wrote the shards themselves (the driver only heard which were done)
    writers = third["execution"]["shards_written_by"]
    assert sum(writers.values()) == 2 and all(w.startswith("node ") for w in writers)
    assert not any(w.endswith(f" pid {os.getpid()}") for w in writers)
    assert second["execution"]["shards_written_by"] == {f"in-process pid {os.getpid()}": 1}
    for split in ("train", "val"):
        resumed, reference = load_split(out_dir / split), load_split(reference_dir / split)
        for name in ARRAY_NAMES:
            np.testing.assert_array_equal(resumed[name], reference[name], err_msg=f"{split}/{name}")
    assert not (shard_root / "train").exists()


def test_fp16_steps_apart_measures_in_steps_at_each_vectors_scale():
    # rows: largest magnitude 64 (float16 step 1/16), 1.5 (step 1/1024), 0 (padding)
    a = np.array([[64.0, 3.0, 0.0], [1.5, -0.25, 1e-4], [0.0, 0.0, 0.0]], dtype=np.float16)
    b = np.array([[64.0625, 3.125, 0.0], [1.5, -0.25, 1e-4 + 2 ** -10], [0.0, 0.0, 0.0]], dtype=np.float16)
    steps = fp16_steps_apart(a, b)
    np.testing.assert_allclose(steps[:2], [[1, 2, 0], [0, 0, 1]], atol=0.02)  # 1e-4 + 2^-10 rounds in float16
    np.testing.assert_array_equal(steps[2], [0, 0, 0])
    np.testing.assert_array_equal(fp16_steps_apart(a, a), np.zeros_like(steps))
    assert fp16_steps_apart(np.float32([[1.0, 0.5]]), np.float32([[1.0, 0.5 + 3 * 2 ** -10]])).max() == 3


def test_features_computed_on_two_threads_are_the_one_thread_run_to_fp16_rounding(local_result, tmp_path):
    """The loop runs on all the machine's threads and each Ray actor on one: their float32 sums may
    round apart, so what they store may differ by one float16 step of the vector's scale, never more."""
    root, manifest_dir, reference_dir, _ = local_result
    torch.set_num_threads(2)  # the autouse fixture puts it back
    out_dir = tmp_path / "objects"
    objects.run(small_params(root), ("train", "val"), out_dir, manifest_dir=manifest_dir,
                shard_root=tmp_path / "shards", engine="local", log=lambda _: None)
    for split in ("train", "val"):
        ours, reference = load_split(out_dir / split), load_split(reference_dir / split)
        assert fp16_steps_apart(ours["features"], reference["features"]).max() <= 1, split
        for name in ("boxes", "scores", "classes", "counts"):
            np.testing.assert_array_equal(ours[name], reference[name], err_msg=f"{split}/{name}")


def test_nchw_layout_gives_the_channels_last_features_to_fp16_rounding(local_result, tmp_path):
    """objects.channels_last is a scheduling key: the layout sums in another order, nothing else."""
    root, manifest_dir, reference_dir, _ = local_result
    assert small_params(root).objects.channels_last  # params.yaml's default made the reference run
    out_dir = tmp_path / "objects"
    objects.run(small_params(root, channels_last=False), ("train", "val"), out_dir, manifest_dir=manifest_dir,
                shard_root=tmp_path / "shards", engine="local", log=lambda _: None)
    for split in ("train", "val"):
        ours, reference = load_split(out_dir / split), load_split(reference_dir / split)
        assert fp16_steps_apart(ours["features"], reference["features"]).max() <= 1, split
        assert np.abs(reference["features"].astype(np.float32)).max() > 0.1
        for name in ("boxes", "scores", "classes", "counts"):
            np.testing.assert_array_equal(ours[name], reference[name], err_msg=f"{split}/{name}")


@pytest.mark.parametrize("boxes", ["dataset", "detector"])
def test_the_extractor_runs_in_the_layout_it_was_built_for(boxes):
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    maps = {}
    for channels_last in (False, True):
        cfg = dataclasses.replace(load_params(REPO / "params.yaml").objects, boxes=boxes, channels_last=channels_last)
        model = build_model(cfg, WeightsChoice("random", "random", seed=5), None, seed=0)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert model.stem[0].weight.is_contiguous(memory_format=layout)
        for size in (48, 64):   # 48: no resize, where the decoded HWC array is NHWC already
            image, _ = prepare_image(rgb, size, channels_last=channels_last)
            assert image.is_contiguous(memory_format=layout), (channels_last, size)
        with torch.inference_mode():
            maps[channels_last] = model.detect(image)[0] if boxes == "detector" else model.c4_map(image)
        assert maps[channels_last].is_contiguous(memory_format=layout)
    torch.testing.assert_close(maps[True], maps[False], rtol=1e-4, atol=1e-4 * maps[False].abs().max().item())


def test_changed_settings_invalidate_finished_shards(local_result, tmp_path):
    root, manifest_dir, _, _ = local_result
    kwargs = dict(manifest_dir=manifest_dir, shard_root=tmp_path / "shards", engine="local", log=lambda _: None)
    first = objects.run(small_params(root), ("val",), tmp_path / "o", 0, **kwargs)
    assert first["splits"]["val"]["computed"] == []
    objects.run(small_params(root), ("train",), tmp_path / "o", 1, **kwargs)
    same = objects.run(small_params(root), ("train",), tmp_path / "o", 1, **kwargs)
    assert same["splits"]["train"]["reused"] == [0]
    changed = objects.run(small_params(root, top_n=2), ("train",), tmp_path / "o", 1, **kwargs)
    assert changed["splits"]["train"]["reused"] == [] and changed["splits"]["train"]["computed"] == [0]


def test_weights_errors_are_clear(local_result, tmp_path, monkeypatch):
    root, manifest_dir, _, _ = local_result
    kwargs = dict(manifest_dir=manifest_dir, engine="local", log=lambda _: None)
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match=f"objects.weights: {missing} does not exist"):
        objects.run(small_params(root, weights=str(missing)), ("val",), tmp_path / "o", **kwargs)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="not a resnet50"):
        objects.run(small_params(root, weights=str(wrong)), ("val",), tmp_path / "o", **kwargs)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(UserError, match="allow_random_weights"):
        objects.run(small_params(root, allow_random_weights=False), ("val",), tmp_path / "o", **kwargs)


def test_local_weights_file_is_used(local_result, tmp_path):
    root, manifest_dir, reference_dir, _ = local_result
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = torchvision.models.resnet50().state_dict()
    weights = tmp_path / "resnet50.pth"
    torch.save(state, weights)
    objects.run(small_params(root, weights=str(weights), allow_random_weights=False), ("val",), tmp_path / "o",
                manifest_dir=manifest_dir, engine="local", log=lambda _: None)
    meta = json.loads((tmp_path / "o" / "val" / "meta.json").read_text())
    assert meta["weights"]["source"] == "file" and meta["weights"]["name"] == str(weights)
    assert len(meta["weights"]["sha256"]) == 64
    # Same numbers as the seeded random init the file was saved from.
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "val" / "features.npy"),
                                  np.load(reference_dir / "val" / "features.npy"))


def test_cached_torchvision_weights_are_used_without_network(local_result, tmp_path, monkeypatch):
    root, manifest_dir, reference_dir, _ = local_result
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    enum = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cached = cached_checkpoint(enum)
    assert cached.parent == tmp_path / "torch_home" / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50().state_dict(), cached)   # stands in for the real file
    objects.run(small_params(root), ("val",), tmp_path / "o", manifest_dir=manifest_dir, engine="local",
                log=lambda _: None)
    meta = json.loads((tmp_path / "o" / "val" / "meta.json").read_text())
    assert meta["weights"]["source"] == "torchvision" and meta["weights"]["name"] == "ResNet50_Weights.IMAGENET1K_V1"
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "val" / "features.npy"),
                                  np.load(reference_dir / "val" / "features.npy"))


def test_detector_file_gives_its_resnet_body_to_dataset_boxes():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    cfg = dataclasses.replace(load_params(REPO / "params.yaml").objects, boxes="dataset")
    choice = WeightsChoice("file", "detector.pth", "0" * 64)
    model = build_model(cfg, choice, detector.state_dict(), seed=0)
    for name, tensor in detector.backbone.body.layer4.state_dict().items():
        torch.testing.assert_close(model.layer4.state_dict()[name], tensor, rtol=0, atol=0)
    torch.testing.assert_close(model.stem[0].weight, detector.backbone.body.conv1.weight, rtol=0, atol=0)


def test_detector_boxes_with_random_detector(local_result, tmp_path):
    root, manifest_dir, _, _ = local_result
    params = small_params(root, boxes="detector", score_threshold=0.0, top_n=4)
    summary = objects.run(params, ("val",), tmp_path / "o", manifest_dir=manifest_dir, engine="local",
                          log=lambda _: None)
    meta = json.loads((tmp_path / "o" / "val" / "meta.json").read_text())
    assert meta["classes"][:2] == ["__background__", "person"] and meta["boxes_source"] == "detector"
    arrays = load_split(tmp_path / "o" / "val")
    count = int(arrays["counts"][0])
    assert summary["splits"]["val"]["complete"] and 0 < count <= 4
    boxes = arrays["boxes"][0, :count]
    assert np.all(boxes[:, [0, 1]] >= 0) and np.all(boxes[:, 2] <= 64) and np.all(boxes[:, 3] <= 64)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(np.diff(arrays["scores"][0, :count]) <= 0)
    assert np.all((arrays["classes"][0, :count] >= 1) & (arrays["classes"][0, :count] < 91))
    assert np.all(iou_with(np.float32([8, 8, 40, 56]), boxes) < params.objects.exclude_iou)
    assert np.all(np.isfinite(arrays["features"][0, :count].astype(np.float32)))
    assert np.any(arrays["features"][0, :count] != 0) and np.all(arrays["features"][0, count:] == 0)


def test_selection_and_iou_units():
    boxes = np.float32([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [5, 5, 15, 15], [40, 40, 50, 50]])
    scores = np.float32([0.9, 0.8, 0.5, 0.5, 0.7])
    expected = torchvision.ops.box_iou(torch.tensor(boxes[:1]), torch.tensor(boxes))[0].numpy()
    np.testing.assert_allclose(iou_with(boxes[0], boxes), expected, rtol=1e-6)
    # Box 0 is the person, box 1 overlaps it at IoU 0.9: both excluded; ties keep file order.
    np.testing.assert_array_equal(select_for_person(boxes, scores, [0, 0, 10, 10], 3, 0.7), [4, 2, 3])
    np.testing.assert_array_equal(select_for_person(boxes, scores, [0, 0, 10, 10], 10, 0.95), [1, 4, 2, 3])
    assert select_for_person(boxes[:0], scores[:0], [0, 0, 1, 1], 3, 0.7).shape == (0,)


def test_load_rgb_errors(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        load_rgb(tmp_path / "missing.jpg")
    truncated = tmp_path / "t.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="t.png: cannot decode"):
        load_rgb(truncated)
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(gray)
    assert load_rgb(gray).shape == (5, 7, 3)


def test_empty_split_gives_empty_arrays(local_result, tmp_path):
    root, manifest_dir, _, _ = local_result
    empty_dir = tmp_path / "manifest"
    write_table(manifest_table([]), empty_dir / "test.parquet")
    summary = objects.run(small_params(root), ("test",), tmp_path / "o", manifest_dir=empty_dir, engine="ray",
                          log=lambda _: None)   # nothing to compute: Ray is never started
    assert summary["splits"]["test"]["complete"] and summary["execution"] == {"engine": "ray"}
    arrays = load_split(tmp_path / "o" / "test")
    assert arrays["features"].shape == (0, TOP_N, 2048) and arrays["counts"].shape == (0,)
    assert len(ObjectStore(tmp_path / "o" / "test")) == 0


def test_boxes_file_problems_are_user_errors(local_result, tmp_path):
    root, manifest_dir, _, _ = local_result
    kwargs = dict(manifest_dir=manifest_dir, engine="local", log=lambda _: None)
    with pytest.raises(UserError, match="does not exist"):
        objects.run(small_params(root, boxes_file="none.csv"), ("val",), tmp_path / "o", **kwargs)
    (root / "bad.csv").write_text("image_path,x1,y1,x2,y2\nimg/v.jpg,1,1,2,2\n")
    with pytest.raises(UserError, match=r"bad.csv: missing column\(s\) \['label', 'score'\]"):
        objects.run(small_params(root, boxes_file="bad.csv"), ("val",), tmp_path / "o", **kwargs)
    with pytest.raises(UserError, match="test.parquet does not exist: run the ingest stage"):
        objects.run(small_params(root), ("test",), tmp_path / "o", **kwargs)


@pytest.mark.parametrize("engine, images, address, cpus, gpu, expected", [
    ("auto", 320, None, 2, False, "local"),        # this machine: the loop is as fast, with a third of the memory
    ("auto", 320, None, 16, False, "ray"),         # many cores: one actor per CPU
    ("auto", 320, None, 2, True, "ray"),           # a GPU
    ("auto", 320, "ray://head:10001", 2, False, "ray"),  # a cluster: every node's actors
    ("auto", 48, "ray://head:10001", 16, True, "local"),  # too few images to pay for Ray's start-up
    ("ray", 1, None, 1, False, "ray"),             # an explicit engine is obeyed
    ("local", 10_000, "ray://head:10001", 64, True, "local"),
])
def test_the_engine_follows_the_resources(engine, images, address, cpus, gpu, expected):
    from core.features.execution import choose_engine

    cfg = dataclasses.replace(small_params(Path("unused")).objects, engine=engine, ray_min_images=100, ray_min_cpus=4)
    chosen, why = choose_engine(cfg, images, cluster_address=address, cpus=cpus, gpu=gpu)
    assert chosen == expected and why
