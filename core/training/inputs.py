"""What a training worker needs besides the params: the label graph, label frequencies, object
feature statistics, and `worker_config`, which gathers them into one picklable config.

Read once by the driver (core/training/trainer.py, the sweep driver, benchmarks) and shipped
to every Ray worker in the config, so workers never re-read or re-derive them; missing stage
outputs are reported here, before any worker starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.params import Params
from core.workspace import Workspace


def load_graph(paths: Workspace, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    cooc_path = paths.graph_dir / "cooccurrence.npy"
    emb_path = paths.graph_dir / "label_embeddings.npy"
    for path, stage in ((cooc_path, "cooccurrence"), (emb_path, "embeddings")):
        if not path.is_file():
            raise UserError(f"{path} is missing: run `dvc repro {stage}` (or python -m stages.{stage}) first")
    cooccurrence, embeddings = np.load(cooc_path), np.load(emb_path)
    if cooccurrence.shape != (num_classes, num_classes) or embeddings.shape[0] != num_classes:
        raise UserError(f"label graph in {paths.graph_dir} does not match the {num_classes} classes of "
                        "data/labels.json: rerun the cooccurrence and embeddings stages")
    return cooccurrence.astype(np.float32), embeddings.astype(np.float32)


def label_frequencies(manifest_dir: Path, num_classes: int) -> np.ndarray:
    from core.data.manifest import read_manifest

    labels = read_manifest("train", manifest_dir)["labels"]
    counts = np.zeros(num_classes, dtype=np.float64)
    for row in labels:
        counts[np.asarray(list(row), dtype=np.int64)] += 1
    return counts / max(len(labels), 1)


def object_feature_stats(split_dir: Path, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of the valid object features of one split, streamed in chunks."""
    features = np.load(Path(split_dir) / "features.npy", mmap_mode="r")
    counts = np.load(Path(split_dir) / "counts.npy")
    total, total_sq, n = np.zeros(features.shape[-1]), np.zeros(features.shape[-1]), 0
    for start in range(0, len(counts), chunk):
        block = np.asarray(features[start:start + chunk], dtype=np.float64)
        valid = np.arange(block.shape[1])[None, :] < counts[start:start + chunk, None]
        rows = block[valid]
        total += rows.sum(axis=0)
        total_sq += np.square(rows).sum(axis=0)
        n += len(rows)
    if n == 0:
        return np.zeros(features.shape[-1], np.float32), np.ones(features.shape[-1], np.float32)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)



def worker_config(params: Params, paths: Workspace) -> dict[str, Any]:
    """Everything a worker needs, as plain picklable values (paths absolute)."""
    from core.data.labels import task_of
    from core.data.manifest import read_labels

    paths = paths.resolved()
    for split in ("train", "val"):
        if not (paths.manifest_dir / f"{split}.parquet").is_file():
            raise UserError(f"{paths.manifest_dir / (split + '.parquet')} is missing: run the ingest stage first")
    classes = read_labels(paths.labels_json)
    task = task_of(params.data.kind)
    config: dict[str, Any] = {
        "params": params,
        "workspace": paths,
        "task": task,
        "num_classes": len(classes),
        "classes": classes,
        "label_freq": label_frequencies(paths.manifest_dir, len(classes)).tolist(),
        # for models reading the objects view (the loop says so when they are missing)
        "object_feature_stats": (object_feature_stats(paths.objects_dir / "train")
                                 if (paths.objects_dir / "train" / "features.npy").is_file() else None),
    }
    if task == "multilabel" and reads_label_graph(params.model.config):
        config["cooccurrence"], config["label_embeddings"] = load_graph(paths, len(classes))
    return config


def reads_label_graph(model_config) -> bool:
    """Whether a family's config turns on ELD's label graph (the flagship's `eld` section)."""
    eld = getattr(model_config, "eld", None)
    return bool(eld is not None and eld.enabled)
