"""cooccurrence stage: P against a hand computation, real EMOTIC val labels, artifacts, CLI.

The real labels come from the 44-row excerpt in tests/fixtures; the test over the whole val
file skips when ../shared/fixtures is absent (conftest.shared_fixture).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, shared_fixture
from support import REPO  # noqa: E402

from core.data.labels import EMOTIC_CATEGORIES
from core.data.manifest import manifest_table, write_table
from core.errors import UserError
from core.graph.cooccurrence import cooccurrence, multi_hot, run

VAL_EXCERPT = FIXTURES / "emotic_val_excerpt.csv"
CLASSES = ["A", "B", "C", "D"]
# Four persons; nobody carries D.
LABELS = [[0, 1], [0, 2], [0, 1, 2], [1]]
# counts A=3, B=3, C=2, D=0; pairs AB=2, AC=2, BC=1; P[i, j] = pairs / count(i).
EXPECTED_P = np.array([
    [0.0, 2 / 3, 2 / 3, 0.0],
    [2 / 3, 0.0, 1 / 3, 0.0],
    [1.0, 1 / 2, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0],
], dtype=np.float32)
EXPECTED_PAIRS = [[3, 2, 2, 0], [2, 3, 1, 0], [2, 1, 2, 0], [0, 0, 0, 0]]


def test_hand_computed_matrix():
    probabilities, class_counts, pair_counts = cooccurrence(multi_hot(LABELS, 4))
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 4)
    np.testing.assert_allclose(probabilities, EXPECTED_P, rtol=0, atol=1e-7)
    assert class_counts.tolist() == [3, 3, 2, 0]
    assert pair_counts.tolist() == EXPECTED_PAIRS


def test_repeated_label_counts_once_and_bad_label_names_the_row():
    np.testing.assert_array_equal(multi_hot([[1, 1, 0]], 3), [[1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="sample p7: label 5 outside"):
        multi_hot([[0], [5]], 3, row_names=["p6", "p7"])


def emotic_val_labels(path: Path) -> list[list[int]]:
    frame = pd.read_csv(path)
    index = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}
    return [sorted(index[name] for name in ast.literal_eval(cell)) for cell in frame["Categorical_Labels"]]


def check_against_pandas(labels: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matrix of `labels`, its counts checked against counts made with pandas instead."""
    probabilities, class_counts, pair_counts = cooccurrence(multi_hot(labels, len(EMOTIC_CATEGORIES)))
    assert probabilities.shape == (26, 26)
    assert np.all(np.diagonal(probabilities) == 0)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0

    persons = pd.Series([set(EMOTIC_CATEGORIES[c] for c in row) for row in labels])
    has = {name: persons.map(lambda s, n=name: n in s) for name in EMOTIC_CATEGORIES}
    per_class = pd.Series(labels).explode().map(lambda c: EMOTIC_CATEGORIES[c]).value_counts()
    assert {EMOTIC_CATEGORIES[i]: int(c) for i, c in enumerate(class_counts)} == \
        {name: int(per_class.get(name, 0)) for name in EMOTIC_CATEGORIES}
    for given, other in [("Anger", "Annoyance"), ("Happiness", "Pleasure"), ("Fear", "Surprise"),
                         ("Engagement", "Anticipation")]:
        i, j = EMOTIC_CATEGORIES.index(given), EMOTIC_CATEGORIES.index(other)
        both = int((has[given] & has[other]).sum())
        assert pair_counts[i, j] == both
        assert probabilities[i, j] == pytest.approx(both / int(has[given].sum()), abs=1e-6)
    return probabilities, class_counts, pair_counts


def test_real_emotic_val_excerpt_labels():
    probabilities, class_counts, pair_counts = check_against_pandas(emotic_val_labels(VAL_EXCERPT))
    # counted from the file with csv + ast, independently of both the matrix code and pandas
    assert dict(zip(EMOTIC_CATEGORIES, class_counts.tolist())) == {
        "Affection": 10, "Anger": 5, "Annoyance": 10, "Anticipation": 29, "Aversion": 6, "Confidence": 16,
        "Disapproval": 11, "Disconnection": 12, "Disquietment": 9, "Doubt/Confusion": 7, "Embarrassment": 7,
        "Engagement": 36, "Esteem": 10, "Excitement": 26, "Fatigue": 2, "Fear": 6, "Happiness": 23, "Pain": 4,
        "Peace": 9, "Pleasure": 16, "Sadness": 5, "Sensitivity": 6, "Suffering": 5, "Surprise": 8,
        "Sympathy": 15, "Yearning": 5}
    c = EMOTIC_CATEGORIES.index
    for given, other, both, count in [("Anger", "Annoyance", 5, 5), ("Happiness", "Pleasure", 16, 23),
                                      ("Fear", "Surprise", 3, 6), ("Engagement", "Anticipation", 27, 36),
                                      ("Suffering", "Pain", 4, 5), ("Pain", "Suffering", 4, 4)]:
        assert pair_counts[c(given), c(other)] == both
        assert probabilities[c(given), c(other)] == pytest.approx(both / count, abs=1e-6)


def test_real_emotic_val_labels():
    """Needs the whole val file (skips without ../shared/fixtures)."""
    check_against_pandas(emotic_val_labels(shared_fixture("emotic_val_annotations.csv")))


def write_dataset(base: Path, labels: list[list[int]], classes: list[str]) -> tuple[Path, Path]:
    rows = [{"sample_id": f"p{i}", "image_path": f"img{i}.jpg", "image_w": 64, "image_h": 64,
             "person_box": [0, 0, 32, 32], "labels": row, "vad": [5.0, 5.0, 5.0], "dataset": "emotic",
             "split": "train", "source_ref": f"test:{i}"} for i, row in enumerate(labels)]
    write_table(manifest_table(rows), base / "manifest" / "train.parquet")
    labels_path = base / "labels.json"
    labels_path.write_text(json.dumps({"classes": classes}))
    return base / "manifest", labels_path


def test_stage_writes_matrix_counts_and_heatmap(tmp_path):
    manifest_dir, labels_path = write_dataset(tmp_path, LABELS, CLASSES)
    summary = run(manifest_dir, labels_path, tmp_path / "graph")
    saved = np.load(tmp_path / "graph" / "cooccurrence.npy")
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, EXPECTED_P, rtol=0, atol=1e-7)
    counts = json.loads((tmp_path / "graph" / "counts.json").read_text())
    assert counts["n_persons"] == 4 and counts["classes"] == CLASSES
    assert counts["class_counts"] == {"A": 3, "B": 3, "C": 2, "D": 0}
    assert counts["pair_counts"] == EXPECTED_PAIRS
    assert counts["zero_count_classes"] == ["D"] and summary["zero_count_classes"] == ["D"]
    png = (tmp_path / "graph" / "cooccurrence.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_label_outside_the_class_list_is_a_user_error(tmp_path):
    manifest_dir, labels_path = write_dataset(tmp_path, [[0], [7]], CLASSES)
    with pytest.raises(UserError, match="sample p1: label 7 outside"):
        run(manifest_dir, labels_path, tmp_path / "graph")
    with pytest.raises(UserError, match="manifest not found"):
        run(tmp_path / "nowhere", labels_path, tmp_path / "graph")


def test_cli(tmp_path):
    manifest_dir, labels_path = write_dataset(tmp_path, LABELS, CLASSES)
    done = subprocess.run(
        [sys.executable, "-m", "stages.cooccurrence", "--manifest-dir", str(manifest_dir),
         "--labels", str(labels_path), "--out-dir", str(tmp_path / "graph")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 training persons, 4 classes, 6 non-zero pairs" in done.stdout
    assert "rows of zeros): D" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "graph" / "cooccurrence.npy"), EXPECTED_P, atol=1e-7)
