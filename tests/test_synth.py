"""The generated demo data set (core/synth): layout, reproducibility and the claim that
its labels follow the body and context cues the relational model uses."""
from __future__ import annotations

import ast
import csv
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from core.data.labels import CAERS_CLASSES, EMOTIC_CATEGORIES
from core.data.readers import read_caers, read_emotic_csv_splits, read_emotic_mat
from core.errors import UserError
from core.synth import caers, generate, rules
from core.synth.rules import (
    BodyCues,
    category_probabilities,
    influence,
    proximity_weight,
)
from core.synth.scenes import IMAGE_SIZE

W, H = IMAGE_SIZE
TEST_IMAGES = 240  # the data set size the statistical checks below are calibrated on
CSV_HEADER = "Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age"
NEUTRAL = BodyCues("neutral", "relaxed", "down", "upright")


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_truth(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "synth_truth.jsonl").read_text().splitlines()]


def read_object_rows(root: Path) -> list[dict]:
    with (root / "object_boxes.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "demo"
    return out, generate(out, TEST_IMAGES, 0)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("small")
    return {name: (base / name, generate(base / name, 12, seed))
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}


# ------------------------------------------------------------------------ reproducibility


def test_same_seed_gives_identical_files_and_pixels(small_sets):
    (a, _), (b, _) = small_sets["a"], small_sets["b"]
    digest_a, digest_b = tree_digest(a), tree_digest(b)
    assert digest_a == digest_b
    assert len([p for p in digest_a if p.startswith("images/")]) == 12
    for name in ("synth_00000.jpg", "synth_00011.jpg"):
        pixels_a = np.asarray(Image.open(a / "images" / name))
        pixels_b = np.asarray(Image.open(b / "images" / name))
        assert pixels_a.shape == (H, W, 3)
        np.testing.assert_array_equal(pixels_a, pixels_b)


def test_different_seed_differs(small_sets):
    (a, _), (c, _) = small_sets["a"], small_sets["c"]
    digest_a, digest_c = tree_digest(a), tree_digest(c)
    for name in ("Annotations.mat", "annotations_train.csv", "object_boxes.csv", "synth_truth.jsonl"):
        assert digest_a[name] != digest_c[name], name
    pixels_a = np.asarray(Image.open(a / "images" / "synth_00000.jpg"), dtype=np.int16)
    pixels_c = np.asarray(Image.open(c / "images" / "synth_00000.jpg"), dtype=np.int16)
    assert np.abs(pixels_a - pixels_c).mean() > 10


def test_image_content_depends_on_seed_and_index_only(small_sets):
    """Image i is the same in a 12-image and a 240-image set of one seed (only splits move)."""
    small, _ = small_sets["a"]
    other = generate(small.parent / "bigger", 20, 7)
    assert other["images"] == {"train": 14, "val": 3, "test": 3}
    for i in (0, 5, 11):
        name = f"synth_{i:05d}.jpg"
        assert (small / "images" / name).read_bytes() == (small.parent / "bigger" / "images" / name).read_bytes()


# ------------------------------------------------------------------------ counts and layout


def test_counts_as_requested(default_set):
    root, summary = default_set
    n_val = round(TEST_IMAGES * 0.15)
    assert summary["images"] == {"train": TEST_IMAGES - 2 * n_val, "val": n_val, "test": n_val}
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"synth_{i:05d}.jpg" for i in range(TEST_IMAGES)]
    persons_per_image: Counter = Counter()
    for split in ("train", "val", "test"):
        with (root / f"annotations_{split}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == summary["persons"][split]
        assert [int(r["Index"]) for r in rows] == list(range(len(rows)))
        assert len({r["Filename"] for r in rows}) == summary["images"][split]
        persons_per_image.update(r["Filename"] for r in rows)
    assert set(persons_per_image.values()) == {1, 2, 3}
    assert len(persons_per_image) == TEST_IMAGES
    total = sum(summary["persons"].values())
    assert 1.8 * TEST_IMAGES <= total <= 2.2 * TEST_IMAGES
    meta = json.loads((root / "synth_meta.json").read_text())
    assert meta["seed"] == 0 and meta["summary"]["persons"] == summary["persons"]
    assert set(meta["rules"]["clusters"]) == set(rules.CLUSTERS)
    assert len(read_truth(root)) == total
    with Image.open(root / "images" / "synth_00003.jpg") as img:
        assert img.format == "JPEG" and img.size == (W, H)


def test_mat_has_the_official_layout(default_set):
    root, summary = default_set
    mat = scipy.io.loadmat(root / "Annotations.mat", struct_as_record=False, squeeze_me=True)
    assert {k for k in mat if not k.startswith("__")} == {"train", "val", "test"}
    squeezed_single_person = single_category_string = 0
    for split in ("train", "val", "test"):
        images = mat[split]
        assert images.shape == (summary["images"][split],)
        for image in images:
            assert image._fieldnames == ["filename", "folder", "image_size", "original_database", "person"]
            assert image.folder == "images" and (root / image.folder / image.filename).is_file()
            assert (image.image_size.n_col, image.image_size.n_row) == (W, H)
            assert image.original_database.name == "synthetic"
            persons = image.person
            if not isinstance(persons, np.ndarray):  # squeeze_me: a lone person is the struct itself
                squeezed_single_person += 1
                persons = [persons]
            for person in persons:
                assert person.body_bbox.shape == (4,) and person.body_bbox.dtype == np.float64
                if split == "train":
                    assert person._fieldnames == ["body_bbox", "annotations_categories", "annotations_continuous",
                                                  "gender", "age"]
                    cats = person.annotations_categories.categories  # one annotator: a single struct
                    vad = person.annotations_continuous
                else:
                    assert person._fieldnames == ["body_bbox", "annotations_categories", "combined_categories",
                                                  "annotations_continuous", "combined_continuous", "gender", "age"]
                    assert len(person.annotations_categories) == 3 and len(person.annotations_continuous) == 3
                    assert all(hasattr(a, "categories") for a in person.annotations_categories)
                    cats = person.combined_categories  # bare names, no `.categories`
                    vad = person.combined_continuous
                if isinstance(cats, str):
                    single_category_string += 1
                    cats = [cats]
                assert len(cats) >= 1 and set(cats) <= set(EMOTIC_CATEGORIES)
                assert all(1 <= getattr(vad, k) <= 10 for k in ("valence", "arousal", "dominance"))
                assert person.gender in ("Male", "Female") and person.age in ("Adult", "Teenager", "Kid")
    assert squeezed_single_person > 0 and single_category_string > 0  # the quirks really occur

    # without squeeze_me: 1xN struct arrays all the way down, as index-based loaders expect
    raw = scipy.io.loadmat(root / "Annotations.mat")
    assert raw["train"].shape == (1, summary["images"]["train"])
    first = raw["val"][0, 0]
    assert first["person"].shape[0] == 1 and first["person"].shape[1] >= 1
    person = first["person"][0, 0]
    assert person["annotations_categories"].shape == (1, 3)
    assert person["annotations_categories"][0, 0]["categories"].shape[0] == 1
    assert person["combined_continuous"].shape == (1, 1)
    assert (root / "Annotations.mat").read_bytes()[:116].decode("ascii").startswith("MATLAB 5.0 MAT-file")


def test_project_readers_round_trip_mat_and_csv_identically(default_set):
    root, summary = default_set
    from_mat = read_emotic_mat(root / "Annotations.mat")
    from_csv = read_emotic_csv_splits(root / "annotations_train.csv")
    assert len(from_mat.quarantine) == 0 and len(from_csv.quarantine) == 0
    assert len(from_mat.candidates) == sum(summary["persons"].values())

    def key(c):
        return (c.sample_id, c.image_path, c.split, c.labels, c.box, c.vad, c.annotated_size)

    assert [key(c) for c in from_mat.candidates] == [key(c) for c in from_csv.candidates]
    truth = {(t["split"], t["filename"], t["person"]): t for t in read_truth(root)}
    for c in from_mat.candidates:
        t = truth[(c.split, c.image_path.split("/")[1], int(c.sample_id.rsplit("#", 1)[1]))]
        assert list(c.box) == t["body_bbox"]
        assert [EMOTIC_CATEGORIES[i] for i in c.labels] == t["labels"]


def test_csv_layout_matches_the_public_export(default_set):
    root, _ = default_set
    raw = (root / "annotations_val.csv").read_bytes()
    assert raw.startswith((CSV_HEADER + "\r\n").encode())
    with (root / "annotations_val.csv").open(newline="") as fh:
        row = next(iter(csv.DictReader(fh)))
    assert ast.literal_eval(row["Image Size"]) == [W, H]  # [width, height], as in the real file
    assert all(isinstance(v, int) for v in ast.literal_eval(row["BBox"]) + ast.literal_eval(row["Continuous_Labels"]))
    labels = ast.literal_eval(row["Categorical_Labels"])
    assert labels == [c for c in EMOTIC_CATEGORIES if c in labels]  # canonical order


def test_boxes_inside_images_and_object_file_lists_people(default_set):
    root, _ = default_set
    rows = read_object_rows(root)
    assert set(rows[0]) == {"image_path", "x1", "y1", "x2", "y2", "label", "score"}
    by_image = defaultdict(list)
    for r in rows:
        x1, y1, x2, y2 = (int(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        assert 0 < float(r["score"]) <= 1 and r["label"] in set(rules.OBJECT_KINDS) | {"person"}
        by_image[r["image_path"]].append((r["label"], (x1, y1, x2, y2)))
    assert set(by_image) == {f"images/synth_{i:05d}.jpg" for i in range(TEST_IMAGES)}
    people = defaultdict(list)
    for t in read_truth(root):
        people[f"images/{t['filename']}"].append(tuple(t["body_bbox"]))
    for image, boxes in by_image.items():
        assert [b for kind, b in boxes if kind == "person"] == people[image]
    kinds = Counter(kind for boxes in by_image.values() for kind, _ in boxes if kind != "person")
    assert set(kinds) == set(rules.OBJECT_KINDS)
    assert 2.0 <= sum(kinds.values()) / TEST_IMAGES <= 5.0


# ------------------------------------------------------------------------ label statistics


def label_matrix(truth: list[dict]) -> np.ndarray:
    return np.array([[c in t["labels"] for c in EMOTIC_CATEGORIES] for t in truth], dtype=float)


def test_every_category_appears_with_varied_frequencies(default_set):
    root, summary = default_set
    counts = summary["label_counts"]
    assert list(counts) == list(EMOTIC_CATEGORIES)
    assert min(counts.values()) >= 5
    assert max(counts.values()) >= 4 * min(counts.values())
    train = [t for t in read_truth(root) if t["split"] == "train"]
    assert label_matrix(train).sum(axis=0).min() >= 1  # every class is trainable
    assert 2.5 <= summary["mean_labels_per_person"] <= 5.0


def test_cooccurrence_follows_the_clusters(default_set):
    root, _ = default_set
    y = label_matrix(read_truth(root))
    idx = {c: i for i, c in enumerate(EMOTIC_CATEGORIES)}

    def cond(b, a):  # P(b | a)
        return y[:, idx[a]] @ y[:, idx[b]] / y[:, idx[a]].sum()

    assert cond("Pleasure", "Happiness") > 0.6
    assert cond("Pain", "Suffering") > 0.7 and cond("Sadness", "Suffering") > 0.4
    assert cond("Annoyance", "Anger") > 0.6 and cond("Disquietment", "Fear") > 0.6
    assert cond("Pain", "Happiness") < 0.1 and cond("Anger", "Peace") < 0.15
    p = (y.T @ y) / np.maximum(y.sum(axis=0)[:, None], 1)
    np.fill_diagonal(p, 0)
    assert 0.1 < (p >= 0.2).mean() < 0.4  # a structured, not a complete, label graph at the paper's t


def test_truth_file_agrees_with_rules_and_written_geometry(default_set):
    """The stored cluster logits are the rules applied to the boxes in object_boxes.csv."""
    root, _ = default_set
    objects, persons = defaultdict(list), defaultdict(list)
    for r in read_object_rows(root):
        box = tuple(int(r[k]) for k in ("x1", "y1", "x2", "y2"))
        (persons if r["label"] == "person" else objects)[r["image_path"]].append((r["label"], box))
    for t in read_truth(root)[:120]:
        image = f"images/{t['filename']}"
        context = rules.person_context(t["person"], [b for _, b in persons[image]], objects[image])
        logits = rules.cluster_logits(BodyCues(**t["cues"]), context)
        for cluster, value in logits.items():
            assert t["cluster_logits"][cluster] == pytest.approx(value, abs=1e-4)


def mean_ap(scores: np.ndarray, y: np.ndarray) -> float:
    keep = y.sum(axis=0) > 0
    return float(np.mean([average_precision_score(y[:, j], scores[:, j]) for j in np.flatnonzero(keep)]))


def cue_features(t: dict, body: bool, context: bool) -> list[float]:
    out: list[float] = []
    if body:
        out += [float(t["cues"][cue] == v) for cue, values in rules.BODY_CUE_PROBS.items() for v in values]
    if context:
        weights = dict.fromkeys(rules.OBJECT_KINDS + (rules.PERSON_KIND,), 0.0)
        for c in t["context"]:
            weights[c["kind"]] += c["influence"]
        out += list(weights.values())
    return out


def test_labels_are_learnable_from_body_and_context_together(default_set):
    """A logistic regression on the ground-truth cues beats the frequency baseline by far, and
    needs both the body cues and the nearby objects (neither alone comes close)."""
    root, _ = default_set
    truth = read_truth(root)
    y = label_matrix(truth)
    train = np.array([t["split"] == "train" for t in truth])
    baseline = mean_ap(np.tile(y[train].mean(axis=0), (int((~train).sum()), 1)), y[~train])
    result = {}
    for name, body, context in (("full", True, True), ("body", True, False), ("context", False, True)):
        x = np.array([cue_features(t, body, context) for t in truth])
        scores = np.zeros((int((~train).sum()), y.shape[1]))
        for j in range(y.shape[1]):
            if y[train, j].min() == y[train, j].max():
                scores[:, j] = y[train, j].mean()
                continue
            model = LogisticRegression(max_iter=2000).fit(x[train], y[train, j])
            scores[:, j] = model.predict_proba(x[~train])[:, 1]
        result[name] = mean_ap(scores, y[~train])
    assert baseline < 0.25
    assert result["full"] > baseline + 0.3, result
    assert result["full"] > result["body"] + 0.15, result
    assert result["full"] > result["context"] + 0.05, result


# ------------------------------------------------------------------------ the rule functions


def test_proximity_weight_is_near_one_touching_half_at_quarter_height_and_vanishes_far():
    person = (100, 40, 160, 200)  # 160 px tall
    assert proximity_weight(person, (160, 120, 200, 160)) > 0.95
    assert proximity_weight(person, (120, 100, 140, 120)) > 0.95  # overlapping counts as touching
    assert proximity_weight(person, (200, 120, 240, 160)) == pytest.approx(0.5)  # gap 40 = 0.25 * 160
    assert proximity_weight(person, (240, 120, 280, 160)) < 0.02  # gap 80 = half the height
    assert rules.size_factor(person, (0, 0, 2, 2)) == rules.SIZE_FACTOR_RANGE[0]
    assert rules.size_factor(person, (0, 0, 100, 160)) == rules.SIZE_FACTOR_RANGE[1]


def test_a_near_object_kind_changes_the_persons_labels():
    person = (100, 40, 160, 200)
    touching, far = (160, 120, 220, 180), (400, 120, 460, 180)
    with_medkit = category_probabilities(NEUTRAL, [("medkit", influence(person, touching))])
    with_cake = category_probabilities(NEUTRAL, [("cake", influence(person, touching))])
    medkit_far = category_probabilities(NEUTRAL, [("medkit", influence(person, far))])
    alone = category_probabilities(NEUTRAL, [])
    assert with_medkit["Suffering"] > 0.7 and with_medkit["Pain"] > 0.6
    assert with_cake["Suffering"] < 0.01 and alone["Suffering"] < 0.01
    assert with_cake["Happiness"] > 0.7 and with_medkit["Happiness"] < 0.05
    assert medkit_far["Suffering"] == pytest.approx(alone["Suffering"], abs=0.005)
    # a neutral kind changes nothing, however close
    assert category_probabilities(NEUTRAL, [("chair", influence(person, touching))]) == alone


def test_two_people_with_different_nearby_objects_get_different_labels():
    people = [(20, 40, 80, 200), (220, 40, 280, 200)]
    objects = [("cake", (80, 150, 130, 200)), ("medkit", (170, 150, 220, 200))]
    left = category_probabilities(NEUTRAL, rules.person_context(0, people, objects))
    right = category_probabilities(NEUTRAL, rules.person_context(1, people, objects))
    assert left["Happiness"] > 0.6 > 0.05 > right["Happiness"]
    assert right["Suffering"] > 0.6 > 0.05 > left["Suffering"]


def test_body_cues_raise_their_clusters():
    assert category_probabilities(BodyCues("smile", "relaxed", "up", "upright"), [])["Happiness"] > 0.8
    slumped = category_probabilities(BodyCues("neutral", "relaxed", "down", "slumped"), [])
    assert slumped["Fatigue"] > 0.2 and slumped["Fatigue"] > 20 * category_probabilities(NEUTRAL, [])["Fatigue"]
    assert category_probabilities(BodyCues("frown", "furrowed", "crossed", "upright"), [])["Anger"] > 0.8
    with pytest.raises(ValueError, match="mouth"):
        BodyCues("grin", "relaxed", "down", "upright")


def test_annotators_sample_cluster_members_with_their_probabilities():
    rng = np.random.default_rng(0)
    logits = dict.fromkeys(rules.CLUSTER_NAMES, -30.0)
    logits["joy"] = 30.0
    draws = [rules.sample_labels(rng, logits, 3) for _ in range(500)]
    assert all(d.active == ["joy"] for d in draws)
    sets = [s for d in draws for s in d.annotators]
    for cat, q in rules.CLUSTERS["joy"].items():
        assert np.mean([cat in s for s in sets]) == pytest.approx(q, abs=0.04)
    others = np.mean([len(set(s) - set(rules.CLUSTERS["joy"])) for s in sets])
    assert others == pytest.approx(rules.LABEL_NOISE * (len(EMOTIC_CATEGORIES) - 3), abs=0.04)
    for d in draws:
        votes = Counter(c for s in d.annotators for c in s)
        majority = [c for c in EMOTIC_CATEGORIES if votes[c] >= 2]
        assert d.combined == (majority or [c for c in EMOTIC_CATEGORIES if votes[c] == max(votes.values())])
        assert 1 <= min(d.combined_vad) and max(d.combined_vad) <= 10
    logits = dict.fromkeys(rules.CLUSTER_NAMES, -30.0)
    logits["tired"] = -25.0
    assert rules.sample_labels(rng, logits, 1).active == ["tired"]  # none fired: the likeliest one


# ------------------------------------------------------------------------ output directory


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="format"):
        generate(tmp_path / "x", 10, 0, "coco")
    with pytest.raises(UserError, match="at least 3"):
        generate(tmp_path / "x", 2, 0)
    with pytest.raises(UserError, match="at least 14"):
        generate(tmp_path / "x", 13, 0, "caers")
    with pytest.raises(UserError, match="seed"):
        generate(tmp_path / "x", 10, -1)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not empty"):
        generate(foreign, 5, 0)
    assert (foreign / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left behind


def test_regenerating_replaces_an_earlier_generated_set(tmp_path):
    out = tmp_path / "demo"
    generate(out, 8, 1)
    summary = generate(out, 4, 2)
    assert sum(summary["images"].values()) == 4
    assert len(list((out / "images").iterdir())) == 4
    assert json.loads((out / "synth_meta.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


# ------------------------------------------------------------------------ CAER-S


@pytest.fixture(scope="module")
def caers_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("caers") / "caers"
    return out, generate(out, 70, 3, "caers")


def test_caers_tree_uses_angry_for_train_and_anger_for_test(caers_set):
    root, summary = caers_set
    train_folders = {"Angry" if c == "Anger" else c for c in CAERS_CLASSES}
    assert {p.name for p in (root / "train").iterdir()} == train_folders
    assert {p.name for p in (root / "test").iterdir()} == set(CAERS_CLASSES)
    assert summary["images"] == {"train": 56, "test": 14}
    assert summary["label_counts"] == dict.fromkeys(CAERS_CLASSES, 10)
    for folder in list((root / "train").iterdir()) + list((root / "test").iterdir()):
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"{i:04d}.png" for i in range(1, len(names) + 1)]
    with Image.open(root / "test" / "Anger" / "0001.png") as img:
        assert img.format == "PNG" and img.size == (W, H)


def test_caers_face_boxes_are_valid_and_read_back(caers_set):
    root, _ = caers_set
    lines = (root / "face_boxes.txt").read_text().splitlines()
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert sorted(line.split(",")[0] for line in lines) == images
    person_boxes = {r["image_path"]: [int(r[k]) for k in ("x1", "y1", "x2", "y2")]
                    for r in read_object_rows(root) if r["label"] == "person"}
    assert set(person_boxes) == set(images)
    for line in lines:
        relpath, label, *box = line.split(",")
        split, folder, _ = relpath.split("/")
        assert CAERS_CLASSES[int(label)] == ("Anger" if folder == "Angry" else folder)
        x1, y1, x2, y2 = map(int, box)
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H and (x2 - x1) >= 50
        px1, py1, px2, py2 = person_boxes[relpath]
        assert px1 <= x1 and py1 <= y1 and x2 <= px2 and y2 <= py2
    result = read_caers(root, root / "face_boxes.txt")
    assert len(result.quarantine) == 0 and len(result.candidates) == 70
    assert Counter(CAERS_CLASSES[c.labels[0]] for c in result.candidates) == Counter(dict.fromkeys(CAERS_CLASSES, 10))


def test_caers_context_objects_follow_the_class(caers_set):
    root, _ = caers_set
    kinds = defaultdict(set)
    for r in read_object_rows(root):
        kinds[r["image_path"]].add(r["label"])
    own, other = [], []
    for image in {p.relative_to(root).as_posix() for p in root.rglob("*.png")}:
        folder = image.split("/")[1]
        cls = "Anger" if folder == "Angry" else folder
        foreign = [c for c in CAERS_CLASSES if c != cls and not set(caers.CAERS_CONTEXT_KINDS[c])
                   & set(caers.CAERS_CONTEXT_KINDS[cls])]
        own.append(bool(kinds[image] & set(caers.CAERS_CONTEXT_KINDS[cls])))
        other.append(np.mean([bool(kinds[image] & set(caers.CAERS_CONTEXT_KINDS[c])) for c in foreign]))
    assert np.mean(own) > 0.55 and np.mean(own) > np.mean(other) + 0.3


def test_caers_is_deterministic(caers_set, tmp_path):
    root, _ = caers_set
    again = tmp_path / "again"
    generate(again, 70, 3, "caers")
    assert tree_digest(again) == tree_digest(root)


# ------------------------------------------------------------------------ command line
def test_synth_command_reads_the_synth_section_and_options_override_it(tmp_path, monkeypatch):
    import yaml
    from support import REPO
    from typer.testing import CliRunner

    from pipelines.cli import app

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"] = {"out": "made", "images": 5, "seed": 3, "format": "emotic"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    from_params = CliRunner().invoke(app, ["synth"])
    assert from_params.exit_code == 0, from_params.output
    assert len(list((tmp_path / "made" / "images").glob("*.jpg"))) == 5
    assert json.loads((tmp_path / "made" / "synth_meta.json").read_text())["seed"] == 3

    overridden = CliRunner().invoke(app, ["synth", "--out", "other", "--images", "4"])
    assert overridden.exit_code == 0, overridden.output
    assert len(list((tmp_path / "other" / "images").glob("*.jpg"))) == 4


def test_synth_command_outside_a_workspace_needs_every_option(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["synth", "--images", "2"])
    assert result.exit_code != 0
    assert "params.yaml not found" in result.output
