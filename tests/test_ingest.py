"""Ingest end to end: manifest, quarantine, labels, summary, CAER-S val carve, errors, CLI."""
from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support import (
    REPO,  # noqa: E402
    repo_params,
)
from test_readers import EXCERPT_CSV, idx, image_record, train_person, write_emotic_mat

from core.data.ingest import check_image, run
from core.data.labels import CAERS_CLASSES, EMOTIC_CATEGORIES
from core.data.manifest import (
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    read_labels,
    read_manifest,
)
from core.errors import UserError
from stages.ingest import main


def noise_image(path: Path, size_wh: tuple[int, int], seed: int = 0, fmt: str | None = None) -> bytes:
    """A JPEG/PNG of random pixels (incompressible, so half the file is half the pixels)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size_wh[1], size_wh[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, quality=95)
    return path.read_bytes()


def quarantine_of(out: Path) -> dict[str, str]:
    table = pq.read_table(out / "manifest" / "quarantine.parquet")
    assert table.schema.equals(QUARANTINE_SCHEMA)
    return {r["source_ref"]: r["reason"] for r in table.to_pylist()}


# --------------------------------------------------------------------- EMOTIC (.mat)

@pytest.fixture
def emotic_bad_inputs(tmp_path):
    """An official-layout .mat whose persons hit every quarantine reason once."""
    root = tmp_path / "raw"
    folder = "site/images"
    noise_image(root / folder / "good.jpg", (64, 48), seed=1)
    noise_image(root / folder / "other.jpg", (40, 30), seed=2)
    (root / folder / "corrupt.jpg").write_bytes(np.random.default_rng(3).bytes(2000))
    cut = noise_image(root / folder / "cut.jpg", (64, 64), seed=4)
    (root / folder / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    noise_image(root / folder / "test.png", (32, 32), seed=5, fmt="PNG")
    write_emotic_mat(root / "Annotations.mat", {
        "train": [
            image_record(folder, "good.jpg", (64, 48), [
                train_person([4, 5, 30, 40], ["Peace", "Happiness"], vad=(6, 5, 4)),      # kept
                train_person([-10, 10, 100, 47], ["Fear"], vad=(2, 8, 3)),                # clamped
                train_person([4, 5, 30, 40], ["Peace", "Happiness"], vad=(1, 1, 1)),      # duplicate
                train_person([70, 50, 90, 60], ["Fear"]),                                  # outside
                train_person([1, 1, 9, 9], ["Joy"]),                                       # unknown label
                train_person([1, 1, 9, 9], []),                                            # no labels
                train_person([1, 1, 9], ["Peace"]),                                        # malformed
            ]),
            image_record(folder, "missing.jpg", (64, 48), [train_person([1, 1, 9, 9], ["Peace"])]),
            image_record(folder, "corrupt.jpg", (64, 48), [train_person([1, 1, 9, 9], ["Peace"])]),
            image_record(folder, "cut.jpg", (64, 64), [train_person([1, 1, 9, 9], ["Peace"])]),
            # stored size transposed: kept, the decoded size wins, counted in the summary
            image_record(folder, "other.jpg", (30, 40), [train_person([2, 3, 20, 25], ["Pain"])]),
        ],
        "val": [image_record(folder, "other.jpg", (40, 30), [train_person([0, 0, 40, 30], ["Anger"])])],
        "test": [image_record(folder, "test.png", (32, 32), [train_person([8, 8, 24, 30], ["Esteem"])])],
    })
    return root


def test_emotic_mat_ingest_writes_the_manifest_and_quarantines_each_bad_input(emotic_bad_inputs, tmp_path):
    out = tmp_path / "data"
    summary = run(replace(repo_params().data, kind="emotic", root=str(emotic_bad_inputs), annotations="Annotations.mat"),
                  seed=0, out_dir=out)

    train = read_manifest("train", out / "manifest")
    assert list(train["sample_id"]) == ["train/site/images/good.jpg#0", "train/site/images/good.jpg#1",
                                        "train/site/images/other.jpg#0"]
    assert [list(b) for b in train["person_box"]] == [[4, 5, 30, 40], [0, 10, 64, 47], [2, 3, 20, 25]]
    assert [list(x) for x in train["labels"]] == [list(idx("Peace", "Happiness")), list(idx("Fear")),
                                                  list(idx("Pain"))]
    assert list(train["image_w"]) == [64, 64, 40] and list(train["image_h"]) == [48, 48, 30]
    assert [list(v) for v in train["vad"]] == [[6, 5, 4], [2, 8, 3], [5, 5, 5]]
    assert set(train["dataset"]) == {"emotic"} and set(train["split"]) == {"train"}
    assert train["source_ref"][1] == "Annotations.mat:train[0]/person[1]"
    assert pq.read_table(out / "manifest" / "train.parquet").schema.equals(MANIFEST_SCHEMA)
    assert list(read_manifest("val", out / "manifest")["sample_id"]) == ["val/site/images/other.jpg#0"]
    test = read_manifest("test", out / "manifest")
    assert list(test["image_path"]) == ["site/images/test.png"] and list(test["person_box"][0]) == [8, 8, 24, 30]

    assert quarantine_of(out) == {
        "Annotations.mat:train[0]/person[2]": "duplicate_row",
        "Annotations.mat:train[0]/person[3]": "box_outside_image",
        "Annotations.mat:train[0]/person[4]": "unknown_label",
        "Annotations.mat:train[0]/person[5]": "no_labels",
        "Annotations.mat:train[0]/person[6]": "malformed_row",
        "Annotations.mat:train[1]/person[0]": "missing_image",
        "Annotations.mat:train[2]/person[0]": "unreadable_image",
        "Annotations.mat:train[3]/person[0]": "truncated_image",
    }
    assert summary["rows"] == {"train": 3, "val": 1, "test": 1, "total": 5}
    assert summary["quarantine"] == {"total": 8, "by_reason": {
        "box_outside_image": 1, "duplicate_row": 1, "malformed_row": 1, "missing_image": 1,
        "no_labels": 1, "truncated_image": 1, "unknown_label": 1, "unreadable_image": 1}}
    assert summary["boxes_clamped"] == {"train": 1, "val": 0, "test": 0}
    assert summary["image_size_mismatch"] == {"train": 1, "val": 0, "test": 0}
    assert summary["images_opened"] == 6  # good, other, missing, corrupt, cut, test: once each
    assert summary["images"] == {"train": 2, "val": 1, "test": 1}
    freq = summary["label_frequency"]
    assert (freq["train"]["Peace"], freq["train"]["Happiness"], freq["train"]["Fear"], freq["train"]["Pain"],
            freq["val"]["Anger"], freq["test"]["Esteem"]) == (1, 1, 1, 1, 1, 1)
    assert sum(freq["train"].values()) == 4 and len(freq["train"]) == 26
    assert json.loads((out / "manifest" / "summary.json").read_text()) == summary
    assert read_labels(out / "labels.json") == list(EMOTIC_CATEGORIES)
    assert json.loads((out / "labels.json").read_text())["dataset"] == "emotic"
    assert not (out / "manifest" / "caers_val_split.json").exists()


def test_without_verify_images_only_headers_are_read(emotic_bad_inputs, tmp_path):
    summary = run(replace(repo_params().data, kind="emotic", root=str(emotic_bad_inputs), verify_images=False),
                  seed=0, out_dir=tmp_path / "data")
    reasons = summary["quarantine"]["by_reason"]
    assert reasons["missing_image"] == 1 and reasons["unreadable_image"] == 1
    assert "truncated_image" not in reasons  # documented: truncation needs the full decode
    assert summary["rows"]["train"] == 4


def test_check_image_tells_truncated_from_corrupt_and_missing(tmp_path):
    full = noise_image(tmp_path / "a.jpg", (80, 60))
    assert check_image(tmp_path / "a.jpg", decode=True).size == (80, 60)
    (tmp_path / "half.jpg").write_bytes(full[: len(full) // 2])
    assert check_image(tmp_path / "half.jpg", decode=True).reason == "truncated_image"
    assert check_image(tmp_path / "half.jpg", decode=False).size == (80, 60)
    png = noise_image(tmp_path / "a.png", (40, 30), fmt="PNG")
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    assert check_image(tmp_path / "half.png", decode=True).reason == "truncated_image"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_image(tmp_path / "empty.jpg", decode=True).reason == "unreadable_image"
    (tmp_path / "dir.jpg").mkdir()
    assert check_image(tmp_path / "dir.jpg", decode=True).reason == "unreadable_image"
    assert check_image(tmp_path / "nope.jpg", decode=True).reason == "missing_image"


# ---------------------------------------------------------------------- EMOTIC (CSV)

def test_emotic_csv_excerpt_with_generated_images_is_all_valid(tmp_path):
    root = _mkdir(tmp_path / "raw")
    (root / "annotations_val.csv").write_bytes(EXCERPT_CSV.read_bytes())
    with EXCERPT_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    sizes = {(r["Folder"], r["Filename"]): tuple(ast.literal_eval(r["Image Size"])) for r in rows}
    for (folder, filename), (w, h) in sizes.items():
        Image.new("RGB", (w, h), (90, 120, 150)).save(_mkdir(root / folder) / filename)
    cfg = replace(repo_params().data, kind="emotic", root=str(root), annotations="annotations_val.csv")
    with pytest.raises(UserError, match="the train split is empty: no train rows in annotations_val.csv "
                                        r"\(add annotations_train.csv next to it\)"):
        run(cfg, seed=0, out_dir=tmp_path / "only_val")  # every split must hold a person
    for split in ("train", "test"):  # one person each, on images the excerpt does not use
        Image.new("RGB", (64, 48)).save(_mkdir(root / "own") / f"{split}.jpg")
        (root / f"annotations_{split}.csv").write_text(
            EXCERPT_CSV.read_text().splitlines()[0] + f'\n0,own,{split}.jpg,"[64, 48]","[1, 2, 30, 40]",'
            "\"['Peace']\",\"[5, 5, 5]\",Male,Adult\n")
    out = tmp_path / "data"
    summary = run(cfg, seed=0, out_dir=out)
    assert summary["rows"] == {"train": 1, "val": 40, "test": 1, "total": 42}
    assert summary["quarantine"]["total"] == 0 and summary["boxes_clamped"]["val"] == 0
    assert summary["image_size_mismatch"]["val"] == 0
    assert summary["images"]["val"] == len(sizes) == summary["images_opened"] - 2
    val = read_manifest("val", out / "manifest")
    assert list(val["labels"][0]) == [1, 2, 4, 6, 8, 9, 11]
    assert list(val["person_box"][0]) == [146, 76, 317, 317]
    assert val["source_ref"][39] == "annotations_val.csv:row 39"
    expected = sum(len(ast.literal_eval(r["Categorical_Labels"])) for r in rows)
    assert sum(summary["label_frequency"]["val"].values()) == expected


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# -------------------------------------------------------------------------- CAER-S

def make_caers(root: Path, counts: dict[str, int], size=(24, 16)) -> None:
    """Tiny PNGs under <split>/<Class>/; counts maps 'train/Angry' -> number of images."""
    for folder, n in counts.items():
        d = _mkdir(root / folder)
        for i in range(n):
            Image.new("RGB", size, (i, 10, 20)).save(d / f"{i:04d}.png")


def test_caers_ingest_carves_a_stratified_seeded_val_split(tmp_path):
    root = tmp_path / "caers"
    make_caers(root, {"train/Angry": 10, "train/Happy": 20, "train/Fear": 1, "test/Anger": 3, "test/Happy": 2})
    (root / "faces_test.txt").write_text("test/Anger/0000.png,0,2,3,12,14\ntest/Happy/0001.png,0,2,3,12,14\n")
    cfg = replace(repo_params().data, kind="caers", root=str(root), annotations="faces_test.txt", val_fraction=0.2)

    out0 = tmp_path / "seed0"
    summary = run(cfg, seed=0, out_dir=out0)
    assert summary["rows"] == {"train": 25, "val": 6, "test": 4, "total": 35}
    assert summary["val_split"] == "carved_from_train"
    assert quarantine_of(out0) == {"test/Happy/0001.png; faces_test.txt:row 1": "label_mismatch"}
    val = read_manifest("val", out0 / "manifest")
    carved = json.loads((out0 / "manifest" / "caers_val_split.json").read_text())
    assert carved["seed"] == 0 and carved["carved_from"] == "train" and carved["val_fraction"] == 0.2
    assert carved["sample_ids"] == sorted(val["sample_id"])
    assert carved["per_class"] == {"Anger": 2, "Disgust": 0, "Fear": 0, "Happy": 4, "Neutral": 0, "Sad": 0,
                                   "Surprise": 0}
    assert all(s.startswith("train/") for s in val["sample_id"])
    assert all("carved from train into val, seed 0" in s for s in val["source_ref"])
    train = read_manifest("train", out0 / "manifest")
    assert "train/Fear/0000.png" in set(train["sample_id"])  # a lone image stays in train
    assert not set(train["sample_id"]) & set(val["sample_id"])
    # Angry (train) and Anger (test) are the same class 0
    assert {tuple(x) for x in train[train["image_path"].str.contains("Angry")]["labels"]} == {(0,)}
    test = read_manifest("test", out0 / "manifest").set_index("sample_id")
    assert list(test.loc["test/Anger/0000.png", "labels"]) == [0]
    assert list(test.loc["test/Anger/0000.png", "person_box"]) == [2, 3, 12, 14]  # the face box
    assert list(test.loc["test/Anger/0001.png", "person_box"]) == [0, 0, 24, 16]  # whole frame
    assert test["vad"].isna().all()
    assert summary["whole_frame_boxes"] == {"train": 25, "val": 6, "test": 3}
    assert read_labels(out0 / "labels.json") == list(CAERS_CLASSES)

    again = run(cfg, seed=0, out_dir=tmp_path / "again")
    assert again == summary
    assert (tmp_path / "again" / "manifest" / "caers_val_split.json").read_text() == \
        (out0 / "manifest" / "caers_val_split.json").read_text()
    other = run(cfg, seed=1, out_dir=tmp_path / "seed1")
    other_ids = json.loads((tmp_path / "seed1" / "manifest" / "caers_val_split.json").read_text())["sample_ids"]
    assert other["rows"] == summary["rows"] and other_ids != carved["sample_ids"]


def test_caers_with_a_val_folder_keeps_it(tmp_path):
    root = tmp_path / "caers"
    make_caers(root, {"train/Sad": 4, "val/Sad": 2, "test/Sad": 1})
    summary = run(replace(repo_params().data, kind="caers", root=str(root), annotations=None), seed=0, out_dir=tmp_path / "d")
    assert summary["rows"] == {"train": 4, "val": 2, "test": 1, "total": 7}
    assert summary["val_split"] == "official"
    assert not (tmp_path / "d" / "manifest" / "caers_val_split.json").exists()


# ------------------------------------------------------------------- user mistakes

def test_zero_valid_rows_is_a_user_error_and_writes_nothing(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    write_emotic_mat(root / "Annotations.mat", {"train": [
        image_record("x/images", "gone.jpg", (10, 10), [train_person([1, 1, 5, 5], ["Peace"])]),
        image_record("x/images", "gone2.jpg", (10, 10), [train_person([1, 1, 5, 5], ["Peace"])]),
    ]})
    with pytest.raises(UserError) as err:
        run(replace(repo_params().data, kind="emotic", root=str(root)), seed=0, out_dir=tmp_path / "data")
    message = str(err.value)
    assert "no valid rows in" in message and "all 2 quarantined (missing_image 2)" in message
    assert "Annotations.mat:train[0]/person[0]" in message and "\n" not in message
    assert not (tmp_path / "data").exists()


def test_a_caers_set_too_small_for_a_val_split_stops_naming_the_split(tmp_path, capsys):
    from core.synth import generate

    generate(tmp_path / "x", images=24, seed=0, fmt="caers")  # `ctxemo synth --format caers --images 24`
    params = write_params(tmp_path / "params.yaml", {"kind": "caers", "root": str(tmp_path / "x"),
                                                     "annotations": "face_boxes.txt", "val_fraction": 0.1})
    out, metrics = tmp_path / "data", tmp_path / "ingest.json"
    assert main(["--params", str(params), "--out", str(out), "--metrics", str(metrics)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "ingest: error: the val split is empty: there is no val/ folder, and data.val_fraction 0.1 carves "
        "round(n x 0.1) of the n valid train images of each class (one always stays in train), which is 0 "
        "for every class here (the largest, Anger, has 3); at this fraction a class needs at least 5: "
        "add images, raise data.val_fraction to at least 0.17, or add a val/<Class>/ folder; training "
        "and evaluation need at least one valid person in each of train, val and test\n")
    assert not out.exists() and not metrics.exists()
    cfg = replace(repo_params().data, kind="caers", root=str(tmp_path / "x"), annotations=None)
    with pytest.raises(UserError, match="data.val_fraction is 0, so none is carved: set it above 0"):
        run(replace(cfg, val_fraction=0.0), seed=0, out_dir=out)
    make_caers(tmp_path / "one", {"train/Sad": 1, "train/Fear": 1, "test/Sad": 1})
    with pytest.raises(UserError, match="every class has at most one valid train image"):
        run(replace(cfg, root=str(tmp_path / "one")), seed=0, out_dir=out)
    make_caers(tmp_path / "notest", {"train/Sad": 9})
    with pytest.raises(UserError, match=r"the test split is empty: no test rows in train/ \(add images under test/<Class>/\)"):
        run(replace(cfg, root=str(tmp_path / "notest")), seed=0, out_dir=out)
    assert not out.exists()


def test_an_empty_emotic_split_stops_naming_it(tmp_path):
    root = tmp_path / "raw"
    noise_image(root / "x/images/a.jpg", (32, 32))
    train = [image_record("x/images", "a.jpg", (32, 32), [train_person([1, 1, 20, 20], ["Peace"])])]
    val = [image_record("x/images", "a.jpg", (32, 32), [train_person([2, 2, 20, 20], ["Pain"])])]
    write_emotic_mat(root / "Annotations.mat", {"train": train, "val": val})
    cfg = replace(repo_params().data, kind="emotic", root=str(root), annotations="Annotations.mat")
    with pytest.raises(UserError, match=r"the test split is empty: no test rows in Annotations.mat \(add a "
                                        r"'test' variable to it\); training and evaluation need"):
        run(cfg, seed=0, out_dir=tmp_path / "data")
    test = [image_record("x/images", "gone.jpg", (32, 32), [train_person([1, 1, 9, 9], ["Fear"])])]
    write_emotic_mat(root / "Annotations.mat", {"train": train, "val": val, "test": test})
    with pytest.raises(UserError) as err:
        run(cfg, seed=0, out_dir=tmp_path / "data")
    assert str(err.value).startswith(
        "the test split is empty: all 1 test rows were quarantined (missing_image 1; first: missing_image at "
        "Annotations.mat:test[0]/person[0]: no file at ")
    assert not (tmp_path / "data").exists()


def test_wrong_paths_and_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="dataset root not found"):
        run(replace(repo_params().data, kind="emotic", root=str(tmp_path / "nope")), seed=0, out_dir=tmp_path / "d")
    with pytest.raises(UserError, match="annotations file not found"):
        run(replace(repo_params().data, kind="emotic", root=str(tmp_path), annotations="Annotations.mat"), 0, tmp_path / "d")
    with pytest.raises(UserError, match=r"val_fraction is 1.5; it must be in \[0, 1\)"):
        run(replace(repo_params().data, kind="caers", root=str(tmp_path), val_fraction=1.5), 0, tmp_path / "d")
    with pytest.raises(UserError, match="no rows found"):
        (tmp_path / "annotations_train.csv").write_text("")
        run(replace(repo_params().data, kind="emotic", root=str(tmp_path), annotations="annotations_train.csv"), 0, tmp_path / "d")


def write_params(path: Path, data: dict) -> Path:
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_with_a_wrong_path_exits_2_with_one_line(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"root": str(tmp_path / "missing_root")})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(params),
                           "--out", str(tmp_path / "data"), "--metrics", str(tmp_path / "ingest.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("ingest: error: dataset root not found:") and "missing_root" in lines[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "ingest.json").exists()


def test_main_prints_the_per_reason_counts(emotic_bad_inputs, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", {"kind": "emotic", "root": str(emotic_bad_inputs),
                                                     "annotations": "Annotations.mat", "verify_images": True})
    metrics = tmp_path / "reports" / "ingest.json"
    assert main(["--params", str(params), "--out", str(tmp_path / "data"), "--metrics", str(metrics)]) == 0
    summary = json.loads((tmp_path / "data" / "manifest" / "summary.json").read_text())
    # the DVC metrics are the counts; the full summary (reasons, label frequencies) stays in the manifest
    assert json.loads(metrics.read_text()) == {"persons": {"train": 3, "val": 1, "test": 1, "total": 5},
                                               "quarantined": 8, "boxes_clamped": 1, "conflicting_labels": 0,
                                               "cross_split_persons": {"total": 0, "by_splits": {}, "persons": []}}
    assert summary["rows"] == {"train": 3, "val": 1, "test": 1, "total": 5} and summary["quarantine"]["total"] == 8
    printed = capsys.readouterr().out
    assert "train 3, val 1, test 1 persons" in printed
    assert ("quarantined 8: box_outside_image 1, duplicate_row 1, malformed_row 1, missing_image 1, "
            "no_labels 1, truncated_image 1, unknown_label 1, unreadable_image 1") in printed
    assert "boxes clamped 1, image size differs from annotation 1" in printed


def test_a_bad_params_file_is_one_line_too(tmp_path, capsys):
    bad = write_params(tmp_path / "params.yaml", {"rooot": "x"})
    assert main(["--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rooot" in err


# --------------------------------------------------------- the generated demo data set

def _manifest_rows(out: Path) -> list[tuple]:
    rows = []
    for split in ("train", "val", "test"):
        df = read_manifest(split, out / "manifest")
        rows += [(r.sample_id, r.split, r.image_path, r.image_w, r.image_h, tuple(r.person_box),
                  tuple(r.labels), None if r.vad is None else tuple(r.vad)) for r in df.itertuples()]
    return rows


def test_generated_emotic_data_ingests_completely_from_mat_and_from_csv(tmp_path):
    from core.synth import generate

    made = generate(tmp_path / "emotic", images=24, seed=3, fmt="emotic")
    summaries = {}
    for annotations in ("Annotations.mat", "annotations_train.csv"):
        out = tmp_path / annotations
        summaries[annotations] = run(replace(repo_params().data, kind="emotic", root=str(tmp_path / "emotic"),
                                                annotations=annotations), seed=0, out_dir=out)
        s = summaries[annotations]
        assert {k: s["rows"][k] for k in ("train", "val", "test")} == made["persons"]
        assert s["images"] == made["images"]
        assert s["quarantine"]["total"] == 0 and s["images_opened"] == made["image_files"]
        totals = {c: sum(s["label_frequency"][split][c] for split in ("train", "val", "test"))
                  for c in EMOTIC_CATEGORIES}
        assert totals == made["label_counts"]
    # the two layouts describe the same persons: same ids, boxes, labels and VAD
    assert _manifest_rows(tmp_path / "Annotations.mat") == _manifest_rows(tmp_path / "annotations_train.csv")
    assert summaries["Annotations.mat"]["sources"] == "Annotations.mat"
    assert summaries["annotations_train.csv"]["sources"] == \
        "annotations_train.csv, annotations_val.csv, annotations_test.csv"


def test_generated_caers_data_ingests_completely_with_a_carved_val(tmp_path):
    from core.synth import generate

    made = generate(tmp_path / "caers", images=28, seed=3, fmt="caers")
    fraction = 0.34
    s = run(replace(repo_params().data, kind="caers", root=str(tmp_path / "caers"), annotations="face_boxes.txt",
                       val_fraction=fraction), seed=5, out_dir=tmp_path / "data")
    train_per_class = made["label_counts_by_split"]["train"]
    expected_val = sum(min(int(n * fraction + 0.5), n - 1) for n in train_per_class.values() if n)
    assert s["rows"]["val"] == expected_val > 0
    assert s["rows"]["train"] + s["rows"]["val"] == made["persons"]["train"]
    assert s["rows"]["test"] == made["persons"]["test"]
    assert s["quarantine"]["total"] == 0
    assert s["whole_frame_boxes"] == {"train": 0, "val": 0, "test": 0}  # every frame has a face box
    for cls in CAERS_CLASSES:
        assert sum(s["label_frequency"][split][cls] for split in ("train", "val", "test")) == \
            made["label_counts"][cls]
