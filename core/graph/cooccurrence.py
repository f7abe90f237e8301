"""Label co-occurrence on the training split: the prior the ELD graph is built from.

    python -m stages.cooccurrence            # reads data/manifest/train.parquet, data/labels.json

P[i, j] = (#training persons carrying labels i and j) / (#training persons carrying label i),
i.e. the conditional probability P(label j | label i); P[i, i] = 0. A class no training person
carries has a row of zeros and is listed under `zero_count_classes` in counts.json and in the
printed summary. Only the training split is used, so val/test labels never leak into the model.

Writes (under data/graph/):
  cooccurrence.npy   float32 C x C
  counts.json        class names, per-class counts, pair counts (C x C, diagonal = class count),
                     n_persons, zero_count_classes
  cooccurrence.png   heatmap of P with class names on both axes (the paper's Fig. 6)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.manifest import read_labels, read_manifest
from core.errors import UserError

COOCCURRENCE_NPY = "cooccurrence.npy"
COUNTS_JSON = "counts.json"
HEATMAP_PNG = "cooccurrence.png"


def multi_hot(label_lists: Sequence[Sequence[int]], num_classes: int,
              row_names: Sequence[str] | None = None) -> np.ndarray:
    """N x C matrix with X[n, c] = 1 when person n carries class c (repeats count once).

    A label outside [0, num_classes) raises ValueError naming the row (by its `row_names` entry,
    e.g. the sample_id, when given, else by its position).
    """
    lengths = np.fromiter((len(labels) for labels in label_lists), dtype=np.int64,
                          count=len(label_lists))
    flat = np.fromiter((int(c) for labels in label_lists for c in labels), dtype=np.int64,
                       count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(label_lists)), lengths)
    bad = (flat < 0) | (flat >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        row = int(rows[first])
        where = f"sample {row_names[row]}" if row_names is not None else f"row {row}"
        raise ValueError(f"{where}: label {int(flat[first])} outside [0, {num_classes})")
    matrix = np.zeros((len(label_lists), num_classes), dtype=np.float64)
    matrix[rows, flat] = 1.0
    return matrix


def cooccurrence(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, class_counts, pair_counts) from an N x C multi-hot matrix.

    pair_counts = X^T X (its diagonal is the class counts); P = pair_counts / class_counts
    row-wise with the diagonal set to 0 and all-zero rows for classes nobody carries.
    """
    x = np.asarray(matrix, dtype=np.float64)
    # float64 BLAS products of 0/1 entries are exact integers far beyond any dataset size.
    pair_counts = np.rint(x.T @ x).astype(np.int64)
    class_counts = np.diagonal(pair_counts).copy()
    probabilities = np.zeros(pair_counts.shape, dtype=np.float64)
    carried = class_counts > 0
    probabilities[carried] = pair_counts[carried] / class_counts[carried, None]
    np.fill_diagonal(probabilities, 0.0)
    return probabilities.astype(np.float32), class_counts, pair_counts


def plot_cooccurrence(probabilities: np.ndarray, class_names: Sequence[str], path: Path,
                      title: str = "") -> None:
    """Heatmap of P (rows: given label i, columns: label j) saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    side = max(4.0, 0.32 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(probabilities, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=8)
    ax.set_xlabel("label j")
    ax.set_ylabel("given label i")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="P(j | i)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(manifest_dir: Path, labels_path: Path, out_dir: Path, split: str = "train") -> dict[str, Any]:
    """Compute P and the counts on `split`, write the three artifacts, return a summary."""
    manifest_dir, labels_path, out_dir = Path(manifest_dir), Path(labels_path), Path(out_dir)
    manifest_file = manifest_dir / f"{split}.parquet"
    if not manifest_file.is_file():
        raise UserError(f"manifest not found: {manifest_file} (run the ingest stage first)")
    if not labels_path.is_file():
        raise UserError(f"class list not found: {labels_path} (run the ingest stage first)")
    class_names = read_labels(labels_path)
    manifest = read_manifest(split, manifest_dir)
    if len(manifest) == 0:
        raise UserError(f"{manifest_file} has no rows: nothing to count co-occurrences on")

    missing = manifest["labels"].isna()
    if missing.any():
        raise UserError(f"{manifest_file}: sample {manifest['sample_id'][missing].iloc[0]} has no "
                        f"label list ({int(missing.sum())} such rows); re-run the ingest stage")
    try:
        matrix = multi_hot(list(manifest["labels"]), len(class_names),
                           row_names=list(manifest["sample_id"]))
    except ValueError as exc:
        raise UserError(f"{manifest_file}: {exc} ({len(class_names)} classes in {labels_path})") from None
    probabilities, class_counts, pair_counts = cooccurrence(matrix)
    zero_count = [class_names[i] for i in np.flatnonzero(class_counts == 0)]

    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / COOCCURRENCE_NPY, probabilities)
    counts = {
        "split": split,
        "n_persons": int(len(manifest)),
        "classes": list(class_names),
        "class_counts": {name: int(c) for name, c in zip(class_names, class_counts)},
        "pair_counts": pair_counts.tolist(),
        "pair_counts_note": "pair_counts[i][j] = #persons with labels i and j; diagonal = class count",
        "zero_count_classes": zero_count,
    }
    (out_dir / COUNTS_JSON).write_text(json.dumps(counts, indent=2) + "\n")
    plot_cooccurrence(probabilities, class_names, out_dir / HEATMAP_PNG,
                      title=f"P(label j | label i), {split} split, {len(manifest)} persons")

    return {
        "split": split,
        "n_persons": int(len(manifest)),
        "n_classes": len(class_names),
        "zero_count_classes": zero_count,
        "nonzero_pairs": int(np.count_nonzero(probabilities)),
        "outputs": [str(out_dir / name) for name in (COOCCURRENCE_NPY, COUNTS_JSON, HEATMAP_PNG)],
    }
