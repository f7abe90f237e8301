"""Dataset readers: real EMOTIC CSV and CAER-S face-box rows, the official .mat layout, CAER-S trees.

The real rows come from excerpts in tests/fixtures (whole images of the EMOTIC val file, odd
boxes of the CAER-S face-box file), checked against numbers counted independently; the tests
over the whole files skip when ../shared/fixtures is absent (conftest.shared_fixture).

Also home of the helpers that write the official EMOTIC Annotations.mat layout with
scipy.io.savemat (test_ingest.py imports them).
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import FIXTURES, shared_fixture

from core.data.labels import CAERS_CLASSES, EMOTIC_CATEGORIES
from core.data.manifest import Quarantine
from core.data.readers import (
    caers_class_index,
    read_caers,
    read_dataset,
    read_emotic_csv,
    read_emotic_csv_splits,
    read_emotic_mat,
    read_face_boxes,
    split_siblings,
)
from core.errors import UserError

EMOTIC_VAL_CSV = "emotic_val_annotations.csv"          # whole files: shared_fixture(name)
CAERS_FACE_BOXES = "caers_test_face_boxes.txt"
EXCERPT_CSV = FIXTURES / "emotic_csv" / "annotations_val.csv"   # its first 40 rows
# 44 rows (17 whole images, original Index kept) and 30 face-box rows chosen for what they exercise
VAL_EXCERPT = FIXTURES / "emotic_val_excerpt.csv"
FACE_BOX_EXCERPT = FIXTURES / "caers_test_face_boxes_excerpt.txt"

NAN = float("nan")


def idx(*names: str) -> tuple[int, ...]:
    return tuple(sorted(EMOTIC_CATEGORIES.index(n) for n in names))


# --------------------------------------------------------- official .mat layout writer

def struct_array(records: list[dict]) -> np.ndarray:
    """A MATLAB 1xN struct array (savemat writes a structured object array as one)."""
    fields = list(records[0])
    arr = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        for f in fields:
            arr[0, i][f] = rec[f]
    return arr


def cell(items: list) -> np.ndarray:
    """A MATLAB 1xN cell array."""
    out = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        out[0, i] = item
    return out


def vad_struct(v: float, a: float, d: float) -> np.ndarray:
    return struct_array([{"valence": float(v), "arousal": float(a), "dominance": float(d)}])


def train_person(box, categories, vad=(5, 5, 5), gender="Male", age="Adult") -> dict:
    return {"body_bbox": np.array([box], dtype=np.float64),
            "annotations_categories": struct_array([{"categories": cell(list(categories))}]),
            "annotations_continuous": vad_struct(*vad), "gender": gender, "age": age}


def eval_person(box, annotators: list[list[str]], combined, vad=(5, 5, 5), gender="Female",
                age="Kid") -> dict:
    """A val/test person: per-annotator lists plus the combined ones the reader must use."""
    return {"body_bbox": np.array([box], dtype=np.float64),
            "annotations_categories": struct_array([{"categories": cell(a)} for a in annotators]),
            "combined_categories": cell(list(combined)),
            "annotations_continuous": struct_array(
                [{"valence": 1.0, "arousal": 1.0, "dominance": 1.0} for _ in annotators]),
            "combined_continuous": vad_struct(*vad), "gender": gender, "age": age}


def image_record(folder: str, filename: str, size_wh, persons: list[dict]) -> dict:
    return {"filename": filename, "folder": folder,
            "image_size": struct_array([{"n_col": float(size_wh[0]), "n_row": float(size_wh[1])}]),
            "original_database": struct_array([{"name": folder.split("/")[0], "info": "n/a"}]),
            "person": struct_array(persons)}


def write_emotic_mat(path: Path, splits: dict[str, list[dict]]) -> Path:
    scipy.io.savemat(path, {split: struct_array(images) for split, images in splits.items()})
    return path


# ------------------------------------------------------------------ CSV: real rows

def strip(c):
    return (c.sample_id, c.image_path, c.labels, c.box, c.vad, c.annotated_size)


def test_csv_reader_parses_the_real_val_excerpt():
    result = read_emotic_csv_splits(VAL_EXCERPT)
    assert result.sources == ["emotic_val_excerpt.csv"]
    assert len(result.candidates) == 44 and len(result.quarantine) == 0
    assert {c.split for c in result.candidates} == {"val"}
    assert len({c.sample_id for c in result.candidates}) == 44
    got = result.candidates

    assert got[0].labels == idx("Anger", "Annoyance", "Aversion", "Disapproval", "Disquietment",
                                "Doubt/Confusion", "Engagement") == (1, 2, 4, 6, 8, 9, 11)
    assert (got[0].box, got[0].annotated_size, got[0].vad) == ((146, 76, 317, 317), (317, 380), (3, 6, 6))
    assert got[0].sample_id == "val/emodb_small/images/h616x5yhky60how3nt.jpg#0"
    assert got[1].sample_id == "val/emodb_small/images/h616x5yhky60how3nt.jpg#1"
    assert got[2].labels == (0, 3, 7, 11, 16, 18, 19, 23)  # Affection .. Surprise, by hand
    assert got[2].box == (250, 115, 299, 269) and got[2].annotated_size == (400, 400)
    # nine persons of one image: #0..#8; source_ref counts the excerpt's rows, not its Index column (505..513)
    crowd = [c for c in got if c.image_path == "emodb_small/images/4cdghezg7cokvg00k2.jpg"]
    assert [c.sample_id.rsplit("#", 1)[1] for c in crowd] == [str(k) for k in range(9)]
    assert crowd[0].source_ref == "emotic_val_excerpt.csv:row 8"
    assert crowd[-1].source_ref == "emotic_val_excerpt.csv:row 16"
    assert crowd[0].box == (0, 554, 896, 1465) and crowd[0].annotated_size == (1474, 1600)
    assert crowd[4].box == (1190, 320, 1474, 1103)  # touches the right edge: x2 == width
    # odd boxes: 6 and 7 pixels wide at the right edge of portrait images
    assert (got[42].box, got[42].annotated_size) == ((516, 3, 522, 519), (522, 930))
    assert got[42].labels == idx("Anger", "Annoyance", "Anticipation", "Aversion", "Disapproval", "Disconnection",
                                 "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem",
                                 "Fear", "Sadness", "Sensitivity", "Suffering")  # 15 categories
    assert (got[23].box, got[23].annotated_size) == ((342, 223, 349, 271), (349, 620))
    assert got[31].labels == idx("Anticipation", "Engagement")  # two categories, the fewest in the file
    last = got[43]
    assert last.source_ref == "emotic_val_excerpt.csv:row 43"
    assert last.sample_id == "val/mscoco/images/COCO_val2014_000000117690.jpg#0"
    assert last.labels == idx("Anticipation", "Confidence", "Disconnection", "Disquietment",
                              "Engagement", "Excitement", "Yearning")
    assert last.box == (46, 21, 192, 294) and last.annotated_size == (640, 494) and last.vad == (6, 7, 6)

    freq = Counter(EMOTIC_CATEGORIES[i] for c in got for i in c.labels)
    assert len(freq) == 26 and sum(freq.values()) == 298
    assert (freq["Engagement"], freq["Anticipation"], freq["Happiness"], freq["Anger"], freq["Fatigue"],
            freq["Pain"]) == (36, 29, 23, 5, 2, 4)
    # Image Size is [width, height]: no box passes it on either axis, 8 pass the height on x
    assert all(c.box[2] <= c.annotated_size[0] and c.box[3] <= c.annotated_size[1] for c in got)
    assert [n for n, c in enumerate(got) if c.box[2] > c.annotated_size[1]] == [21, 28, 29, 31, 32, 36, 37, 40]


def test_csv_excerpt_in_the_repo_reads_as_written():
    excerpt = read_emotic_csv_splits(EXCERPT_CSV)
    assert excerpt.sources == ["annotations_val.csv"]
    assert len(excerpt.candidates) == 40 and len(excerpt.quarantine) == 0
    first = excerpt.candidates[0]
    assert first.labels == (1, 2, 4, 6, 8, 9, 11) and first.box == (146, 76, 317, 317)
    assert first.source_ref == "annotations_val.csv:row 0"


def test_csv_reader_parses_every_row_of_the_real_val_file():
    """Needs the whole val file (skips without ../shared/fixtures)."""
    result = read_emotic_csv_splits(shared_fixture(EMOTIC_VAL_CSV))
    assert len(result.candidates) == 3315
    assert len(result.quarantine) == 0
    assert {c.split for c in result.candidates} == {"val"}
    assert len({c.sample_id for c in result.candidates}) == 3315

    row0, row1, row2, last = (result.candidates[i] for i in (0, 1, 2, 3314))
    assert row0.labels == idx("Anger", "Annoyance", "Aversion", "Disapproval", "Disquietment",
                              "Doubt/Confusion", "Engagement") == (1, 2, 4, 6, 8, 9, 11)
    assert row0.box == (146, 76, 317, 317)
    assert row0.annotated_size == (317, 380)
    assert row0.vad == (3, 6, 6)
    assert row0.image_path == "emodb_small/images/h616x5yhky60how3nt.jpg"
    assert row0.sample_id == "val/emodb_small/images/h616x5yhky60how3nt.jpg#0"
    assert row1.sample_id == "val/emodb_small/images/h616x5yhky60how3nt.jpg#1"
    assert row1.labels == idx("Anger", "Annoyance", "Embarrassment", "Engagement", "Fear", "Sadness")
    assert row1.box == (37, 35, 192, 317)
    assert row2.labels == (0, 3, 7, 11, 16, 18, 19, 23)  # Affection .. Surprise, by hand
    assert row2.box == (250, 115, 299, 269) and row2.annotated_size == (400, 400)
    assert last.source_ref == "emotic_val_annotations.csv:row 3314"
    assert last.labels == idx("Anticipation", "Confidence", "Disconnection", "Disquietment",
                              "Engagement", "Excitement", "Yearning")
    assert last.box == (46, 21, 192, 294) and last.annotated_size == (640, 494)
    assert last.vad == (6, 7, 6)

    freq = Counter(EMOTIC_CATEGORIES[i] for c in result.candidates for i in c.labels)
    assert sum(freq.values()) == 20397
    assert (freq["Engagement"], freq["Anticipation"], freq["Happiness"], freq["Anger"],
            freq["Doubt/Confusion"], freq["Yearning"]) == (3133, 2958, 2276, 110, 390, 403)
    assert len(freq) == 26
    # Image Size is [width, height]: no box passes it on either axis.
    assert all(c.box[2] <= c.annotated_size[0] and c.box[3] <= c.annotated_size[1]
               for c in result.candidates)
    assert sum(c.box[2] > c.annotated_size[1] for c in result.candidates) == 1116


def test_csv_excerpts_read_the_same_as_the_full_file():
    """Both excerpts are verbatim rows of the whole val file (skips without ../shared/fixtures)."""
    full = read_emotic_csv(shared_fixture(EMOTIC_VAL_CSV), "val").candidates
    first40 = read_emotic_csv_splits(EXCERPT_CSV).candidates
    assert [strip(c) for c in first40] == [strip(c) for c in full[:40]]
    with VAL_EXCERPT.open(newline="") as fh:
        index = [int(r["Index"]) for r in csv.DictReader(fh)]
    chosen = read_emotic_csv_splits(VAL_EXCERPT).candidates
    # whole images were taken, so even the person numbers in the sample_ids agree
    assert [strip(c) for c in chosen] == [strip(full[i]) for i in index]


# ------------------------------------------------------------------ CSV: split rule

def test_split_siblings_reads_the_existing_siblings_and_needs_a_split_word(tmp_path):
    for name in ("annotations_train.csv", "annotations_test.csv", "other_val.csv"):
        (tmp_path / name).write_text("x\n")
    assert split_siblings(tmp_path / "annotations_train.csv") == {
        "train": tmp_path / "annotations_train.csv", "test": tmp_path / "annotations_test.csv"}
    assert split_siblings(tmp_path / "emotic_val_annotations.csv") == {}
    with pytest.raises(UserError, match="exactly one of the words train/val/test"):
        split_siblings(tmp_path / "annotations.csv")
    with pytest.raises(UserError, match="found train, test"):
        split_siblings(tmp_path / "train_test.csv")
    # `interval` and `testing` are not split words
    with pytest.raises(UserError, match="found none"):
        split_siblings(tmp_path / "interval_testing.csv")


HEADER = "Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age"


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER.split(","))
        writer.writerows(rows)
    return path


def row(i, box="[1, 2, 30, 40]", cats="['Anger', 'Fear']", cont="[1, 2, 3]", folder="f/images",
        filename="a.jpg", size="[64, 48]"):
    return [str(i), folder, filename, size, box, cats, cont, "Male", "Adult"]


def test_csv_reader_quarantines_each_kind_of_bad_row(tmp_path):
    rows = [
        row(0),
        row(1, box="[1, 2, 30"),                         # bad literal
        row(2)[:8],                                       # wrong arity
        row(3, box="['a', 2, 30, 40]"),                   # non-numeric
        row(4, cats="['Anger', 'Joy']"),                  # unknown label
        row(5, cats="[]"),                                # no labels
        row(6, box="[1, 2, 30]"),                         # three numbers
        row(7, folder="../../etc"),                       # leaves the root
        row(8, box="[30, 2, 1, 40]"),                     # inverted
        row(9, cont="[nan, nan, nan]", filename="b.jpg"),  # missing VAD is allowed
        row(10, size="[64]"),                             # bad size
        row(11, cats="__import__('os')"),                 # never evaluated
        row(12, box="[1.5, 2, 30, 40.25]", cats="'Peace'"),  # one name, float box
    ]
    path = write_csv(tmp_path / "annotations_train.csv", rows)
    result = read_emotic_csv_splits(path)
    reasons = {q["source_ref"]: q["reason"] for q in result.quarantine.rows}
    assert reasons == {
        "annotations_train.csv:row 1": "malformed_row", "annotations_train.csv:row 2": "malformed_row",
        "annotations_train.csv:row 3": "malformed_row", "annotations_train.csv:row 4": "unknown_label",
        "annotations_train.csv:row 5": "no_labels", "annotations_train.csv:row 6": "malformed_row",
        "annotations_train.csv:row 7": "malformed_row", "annotations_train.csv:row 8": "malformed_row",
        "annotations_train.csv:row 10": "malformed_row", "annotations_train.csv:row 11": "malformed_row",
    }
    details = {q["source_ref"]: q["detail"] for q in result.quarantine.rows}
    assert "['Joy']" in details["annotations_train.csv:row 4"]
    assert details["annotations_train.csv:row 2"].startswith("8 fields, expected 9")
    assert all(q["split"] == "train" and q["raw"] for q in result.quarantine.rows)
    good = {c.source_ref: c for c in result.candidates}
    assert set(good) == {"annotations_train.csv:row 0", "annotations_train.csv:row 9",
                         "annotations_train.csv:row 12"}
    assert good["annotations_train.csv:row 0"].labels == (1, 15)
    assert good["annotations_train.csv:row 9"].vad is None
    assert good["annotations_train.csv:row 9"].sample_id == "train/f/images/b.jpg#0"
    # the person index counts the earlier rows of a.jpg whose path could be read (not 2, 7, 9)
    assert good["annotations_train.csv:row 12"].sample_id == "train/f/images/a.jpg#9"
    assert good["annotations_train.csv:row 12"].box == (1.5, 2, 30, 40.25)
    assert good["annotations_train.csv:row 12"].labels == (18,)


def test_csv_with_a_wrong_header_is_a_user_error(tmp_path):
    path = tmp_path / "annotations_val.csv"
    path.write_text("Folder,Filename,Box\nf,a.jpg,[1,2,3,4]\n")
    with pytest.raises(UserError, match=r"missing column\(s\) \['BBox', 'Categorical_Labels'\]"):
        read_emotic_csv_splits(path)


# ------------------------------------------------------------------ official .mat layout

def test_mat_in_the_official_layout_round_trips(tmp_path):
    path = write_emotic_mat(tmp_path / "Annotations.mat", {
        "train": [
            # a single person with a single category: squeeze_me gives a struct and a str
            image_record("mscoco/images", "a.jpg", (640, 480),
                         [train_person([10, 20, 110, 220], ["Peace"], vad=(6, NAN, 4))]),
            image_record("framesdb/images", "b.jpg", (300, 200),
                         [train_person([0, 0, 50, 60], ["Happiness", "Anticipation", "Happiness"], vad=(7, 6, 5)),
                          train_person([5, 6, 70, 80], ["Fear", "Pain"], vad=(2, 8, 3))]),
        ],
        "val": [
            image_record("ade20k/images", "c.jpg", (100, 90),
                         [eval_person([1, 2, 3, 4], [["Anger"], ["Fear", "Anger"]], ["Anger", "Fear"], vad=(3, 7, 5))]),
            image_record("emodb_small/images", "d.jpg", (50, 40),
                         [eval_person([4, 3, 20, 30], [["Sadness"]], ["Sadness"], vad=(2, 3, 4))]),
        ],
        # one image only: the split itself squeezes to a struct
        "test": [image_record("mscoco/images", "e.jpg", (64, 48),
                              [eval_person([2, 2, 40, 40], [["Pain"], ["Suffering"], ["Pain"]],
                                           ["Pain", "Suffering"], vad=(1, 9, 2))])],
    })
    result = read_emotic_mat(path)
    assert len(result.quarantine) == 0
    got = {c.sample_id: c for c in result.candidates}
    assert list(got) == ["train/mscoco/images/a.jpg#0", "train/framesdb/images/b.jpg#0",
                         "train/framesdb/images/b.jpg#1", "val/ade20k/images/c.jpg#0",
                         "val/emodb_small/images/d.jpg#0", "test/mscoco/images/e.jpg#0"]
    a = got["train/mscoco/images/a.jpg#0"]
    assert (a.labels, a.box, a.vad, a.annotated_size) == (idx("Peace"), (10, 20, 110, 220), None, (640, 480))
    assert a.source_ref == "Annotations.mat:train[0]/person[0]" and a.image_path == "mscoco/images/a.jpg"
    b1 = got["train/framesdb/images/b.jpg#1"]
    assert (b1.labels, b1.box, b1.vad, b1.split) == (idx("Fear", "Pain"), (5, 6, 70, 80), (2, 8, 3), "train")
    assert got["train/framesdb/images/b.jpg#0"].labels == idx("Anticipation", "Happiness")
    c = got["val/ade20k/images/c.jpg#0"]  # the combined fields, not the annotators' 1, 1, 1
    assert (c.labels, c.vad, c.source_ref) == (idx("Anger", "Fear"), (3, 7, 5), "Annotations.mat:val[0]/person[0]")
    assert got["val/emodb_small/images/d.jpg#0"].labels == idx("Sadness")
    e = got["test/mscoco/images/e.jpg#0"]
    assert (e.labels, e.vad, e.box, e.annotated_size) == (idx("Pain", "Suffering"), (1, 9, 2), (2, 2, 40, 40), (64, 48))
    assert e.source_ref == "Annotations.mat:test[0]/person[0]"


def test_mat_reader_quarantines_bad_persons_and_images(tmp_path):
    no_box = train_person([0, 0, 5, 5], ["Peace"])
    del no_box["body_bbox"]
    path = write_emotic_mat(tmp_path / "Annotations.mat", {"train": [
        image_record("f/images", "a.jpg", (64, 48), [
            train_person([1, 1, 10, 10], ["Peace"]),
            train_person([1, 1, 10, 10], ["Peace", "Bliss"]),
            train_person([1, 1, 10, 10], []),
            train_person([1, 1, 10], ["Peace"]),
        ]),
        image_record("f/images", "b.jpg", (64, 48), [no_box]),
        image_record("../outside", "c.jpg", (64, 48), [train_person([1, 1, 10, 10], ["Peace"])]),
    ]})
    result = read_emotic_mat(path)
    assert [c.sample_id for c in result.candidates] == ["train/f/images/a.jpg#0"]
    got = {(q["source_ref"], q["reason"]) for q in result.quarantine.rows}
    assert got == {
        ("Annotations.mat:train[0]/person[1]", "unknown_label"),
        ("Annotations.mat:train[0]/person[2]", "no_labels"),
        ("Annotations.mat:train[0]/person[3]", "malformed_row"),
        ("Annotations.mat:train[1]/person[0]", "malformed_row"),
        ("Annotations.mat:train[2]", "malformed_row"),
    }
    raw = next(q["raw"] for q in result.quarantine.rows if q["reason"] == "unknown_label")
    assert "Bliss" in raw


def test_mat_that_is_not_a_mat_file_is_a_user_error(tmp_path):
    bad = tmp_path / "Annotations.mat"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(UserError, match="cannot read .*Annotations.mat as a MATLAB"):
        read_emotic_mat(bad)
    good = write_emotic_mat(tmp_path / "good.mat", {"train": [
        image_record("f/images", "a.jpg", (64, 48), [train_person([1, 1, 10, 10], ["Peace"])] * 5)]})
    cut = tmp_path / "cut.mat"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read .*cut.mat as a MATLAB"):
        read_emotic_mat(cut)
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"train_set": np.zeros(3)})
    with pytest.raises(UserError, match=r"no 'train', 'val' or 'test' variable \(found \['train_set'\]\)"):
        read_emotic_mat(other)


# --------------------------------------------------------------------------- CAER-S

def test_real_caers_face_box_rows_parse_with_their_odd_boxes():
    q = Quarantine()
    boxes = read_face_boxes(FACE_BOX_EXCERPT, q)
    assert len(boxes) == 30 and len(q) == 0
    per_class = Counter(CAERS_CLASSES[fb.label] for fb in boxes.values())
    assert per_class == {"Anger": 4, "Disgust": 6, "Fear": 4, "Happy": 3, "Neutral": 5, "Sad": 4, "Surprise": 4}
    assert all(fb.label == caers_class_index(rel.split("/")[1]) for rel, fb in boxes.items())
    assert boxes["test/Sad/0157.png"].box == (191, 109, 293, 211)
    assert boxes["test/Sad/0157.png"].ref == "caers_test_face_boxes_excerpt.txt:row 0"
    # the reader keeps boxes that leave the frame (ingest clamps them once the image size is known)
    assert boxes["test/Disgust/2539.png"].box == (-27, 76, 58, 161)
    assert boxes["test/Sad/1449.png"].box == (114, -90, 552, 348)
    assert boxes["test/Neutral/2033.png"].box == (341, 100, 361, 120)   # the smallest, 20 x 20
    assert boxes["test/Surprise/2241.png"].box == (136, 43, 575, 481)   # the largest, 439 x 438
    assert boxes["test/Disgust/1923.png"].ref == "caers_test_face_boxes_excerpt.txt:row 29"


def test_caers_tree_of_the_real_face_box_rows_reads_completely(tmp_path):
    relpaths = [line.split(",")[0] for line in FACE_BOX_EXCERPT.read_text().splitlines()]
    make_caers_tree(tmp_path, relpaths)
    (tmp_path / FACE_BOX_EXCERPT.name).write_bytes(FACE_BOX_EXCERPT.read_bytes())
    result = read_caers(tmp_path, tmp_path / FACE_BOX_EXCERPT.name)
    assert len(result.candidates) == 30 and len(result.quarantine) == 0
    assert result.has_val is False and sorted(result.sources) == sorted([FACE_BOX_EXCERPT.name, "test/"])
    got = {c.sample_id: c for c in result.candidates}
    assert set(got) == set(relpaths) and {c.split for c in got.values()} == {"test"}
    assert (got["test/Fear/2734.png"].labels, got["test/Fear/2734.png"].box) == ((2,), (218, 172, 296, 372))
    assert (got["test/Neutral/1980.png"].labels, got["test/Neutral/1980.png"].box) == ((4,), (658, 85, 710, 257))


def test_real_caers_face_box_file_labels_agree_with_its_folders():
    """Needs the whole face-box file (skips without ../shared/fixtures)."""
    q = Quarantine()
    path = shared_fixture(CAERS_FACE_BOXES)
    boxes = read_face_boxes(path, q)
    assert len(boxes) == 20868 and len(q) == 0
    per_class = Counter(CAERS_CLASSES[fb.label] for fb in boxes.values())
    assert per_class["Anger"] == 2988 and per_class["Surprise"] == 2970
    assert all(fb.label == caers_class_index(rel.split("/")[1]) for rel, fb in boxes.items())
    assert boxes["test/Sad/0157.png"].box == (191, 109, 293, 211)
    lines = set(path.read_text().splitlines())
    assert all(line in lines for line in FACE_BOX_EXCERPT.read_text().splitlines())  # the excerpt is verbatim


def make_caers_tree(root: Path, files: list[str]) -> None:
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not decoded by the reader")


def test_caers_tree_with_face_boxes_alias_and_bad_rows(tmp_path):
    make_caers_tree(tmp_path, ["train/Angry/a.png", "train/Happy/b.png", "test/Anger/c.png",
                               "test/Fear/d.png", "train/Bored/e.png", "train/loose.png",
                               "train/Happy/.DS_Store"])
    (tmp_path / "caers_test_face_boxes.txt").write_text(
        "test/Anger/c.png,0,1,2,30,40\n"
        "test/Fear/d.png,3,1,2,30,40\n"          # label disagrees with the folder
        "test/Sad/zzz.png,5,1,2,30,40\n"         # no such image
        "test/Anger/c.png,0,1,2,30,40\n"         # second box for c.png
        "test/Anger/q.png,9,1,2,30,40\n"         # label outside 0..6
        "test/Anger/r.png,x,1,2,30,40\n")        # not a number
    (tmp_path / "caers_train_face_boxes.txt").write_text(
        "relpath,label,x1,y1,x2,y2\ntrain/Angry/a.png,0,3,4,13,14\n")
    result = read_caers(tmp_path, tmp_path / "caers_test_face_boxes.txt")
    assert result.has_val is False
    got = {c.sample_id: (c.split, c.labels, c.box) for c in result.candidates}
    assert got == {"train/Angry/a.png": ("train", (0,), (3, 4, 13, 14)),
                   "train/Happy/b.png": ("train", (3,), None),
                   "test/Anger/c.png": ("test", (0,), (1, 2, 30, 40))}
    reasons = sorted((q["reason"], q["source_ref"]) for q in result.quarantine.rows)
    assert reasons == [
        ("duplicate_row", "caers_test_face_boxes.txt:row 3"),
        ("label_mismatch", "test/Fear/d.png; caers_test_face_boxes.txt:row 1"),
        ("malformed_row", "caers_test_face_boxes.txt:row 5"),
        ("missing_image", "caers_test_face_boxes.txt:row 2"),
        ("unknown_label", "caers_test_face_boxes.txt:row 4"),
        ("unknown_label", "train/Bored/e.png"),
        ("unknown_label", "train/loose.png"),
    ]
    assert sorted(result.sources) == sorted(["caers_train_face_boxes.txt", "caers_test_face_boxes.txt",
                                             "train/", "test/"])


def test_read_dataset_names_the_wrong_path(tmp_path):
    with pytest.raises(UserError, match="dataset root not found: .*nowhere"):
        read_dataset("emotic", tmp_path / "nowhere", "Annotations.mat")
    with pytest.raises(UserError, match="annotations file not found: .*Annotations.mat"):
        read_dataset("emotic", tmp_path, "Annotations.mat")
    with pytest.raises(UserError, match="data.kind is 'coco'"):
        read_dataset("coco", tmp_path, None)
    with pytest.raises(UserError, match="EMOTIC needs"):
        read_dataset("emotic", tmp_path, None)
    (tmp_path / "ann.json").write_text("{}")
    with pytest.raises(UserError, match="unknown annotation format '.json'"):
        read_dataset("emotic", tmp_path, "ann.json")
    with pytest.raises(UserError, match="not a CAER-S tree"):
        read_dataset("caers", tmp_path, None)


def test_mat_image_listed_twice_in_a_split_keeps_sample_ids_unique(tmp_path):
    path = write_emotic_mat(tmp_path / "Annotations.mat", {"train": [
        image_record("f/images", "a.jpg", (64, 48), [train_person([1, 1, 10, 10], ["Peace"])]),
        image_record("f/images", "a.jpg", (64, 48), [train_person([1, 1, 10, 10], ["Peace"]),
                                                     train_person([2, 2, 20, 20], ["Fear"])]),
    ]})
    got = [(c.sample_id, c.source_ref) for c in read_emotic_mat(path).candidates]
    assert got == [("train/f/images/a.jpg#0", "Annotations.mat:train[0]/person[0]"),
                   ("train/f/images/a.jpg#1", "Annotations.mat:train[1]/person[0]"),
                   ("train/f/images/a.jpg#2", "Annotations.mat:train[1]/person[1]")]
