"""What the objects stage works on: the data set's boxes, the split manifests, the shard plans.

Boxes come from the data set (`objects.boxes: dataset`, a CSV `image_path,x1,y1,x2,y2,label,score`
under `data.root`, e.g. the generated demo's object_boxes.csv) or from the detector (nothing to
read here). Images are cut into shards of `objects.shard_size`; each shard's fingerprint covers
its inputs and every setting that changes the numbers, so a resumed run reuses only shards that
would come out the same.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.data.manifest import read_manifest
from core.errors import UserError
from core.features.roi_model import FEATURE_VERSION
from core.features.weights import WeightsChoice
from core.params import ObjectsConfig

BOXES_COLUMNS = ("image_path", "x1", "y1", "x2", "y2", "label", "score")


@dataclass
class DatasetBoxes:
    by_image: dict[str, np.ndarray]      # image_path -> [K,6] x1,y1,x2,y2,class_id,score (clamped)
    classes: list[str]
    rejected: list[dict[str, Any]]
    clamped: int
    path: Path


def load_dataset_boxes(path: Path, image_sizes: dict[str, tuple[int, int]]) -> DatasetBoxes:
    """Read the boxes CSV; clamp to the image, report rows that cannot be used.

    `image_sizes` maps image_path -> (w, h) for the images of the splits being processed. The class
    vocabulary is every non-empty label of the whole file, sorted, so ids agree across splits.
    An empty score means a ground-truth box and reads as 1.0.
    """
    if not path.is_file():
        raise UserError(f"objects.boxes_file: {path} does not exist (objects.boxes: dataset needs a CSV "
                        f"{','.join(BOXES_COLUMNS)}; use objects.boxes: detector for a data set without one)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in BOXES_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; expected header {','.join(BOXES_COLUMNS)}")
    labels = table["label"].str.strip().tolist()
    classes = sorted(set(labels) - {""})
    if len(classes) > np.iinfo(np.int16).max:
        raise UserError(f"{path}: {len(classes)} distinct labels; at most {np.iinfo(np.int16).max} fit int16 class ids")
    class_id = {name: i for i, name in enumerate(classes)}
    coords = table[["x1", "y1", "x2", "y2"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    score_text = table["score"].str.strip()
    scores = pd.to_numeric(score_text.where(score_text != "", "1.0"), errors="coerce").to_numpy(np.float64)
    image_paths = table["image_path"].str.strip().tolist()

    grouped: dict[str, list[list[float]]] = defaultdict(list)
    rejected: list[dict[str, Any]] = []
    clamped = 0
    for i, image_path in enumerate(image_paths):
        line = i + 2

        def reject(reason: str, detail: str) -> None:
            rejected.append({"line": line, "image_path": image_path, "reason": reason, "detail": detail})

        if not np.all(np.isfinite(coords[i])) or not np.isfinite(scores[i]):
            reject("bad_number", f"x1,y1,x2,y2,score = {table.iloc[i][['x1', 'y1', 'x2', 'y2', 'score']].tolist()}")
            continue
        if labels[i] == "":
            reject("empty_label", "label is empty")
            continue
        if image_path not in image_sizes:
            reject("image_not_in_processed_splits", "no manifest row of the processed splits uses this image")
            continue
        width, height = image_sizes[image_path]
        x1, y1, x2, y2 = coords[i]
        box = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            reject("empty_after_clamp", f"box {coords[i].tolist()} has no area inside the {width}x{height} image")
            continue
        clamped += box != [x1, y1, x2, y2]
        grouped[image_path].append([*box, class_id[labels[i]], scores[i]])
    by_image = {k: np.asarray(v, dtype=np.float64) for k, v in grouped.items()}
    return DatasetBoxes(by_image, classes, rejected, int(clamped), path)


def read_split_manifest(split: str, manifest_dir: Path) -> pd.DataFrame:
    path = Path(manifest_dir) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"{path} does not exist: run the ingest stage first (python -m stages.ingest)")
    manifest = read_manifest(split, manifest_dir)
    duplicated = manifest["sample_id"][manifest["sample_id"].duplicated()]
    if len(duplicated):
        raise UserError(f"{path}: sample_id {duplicated.iloc[0]!r} appears more than once")
    return manifest


@dataclass
class ShardPlan:
    split: str
    index: int
    frame: pd.DataFrame        # one row per image: shard_key, image_path, persons (json), objects (json)
    n_persons: int
    fingerprint: str

    @property
    def key(self) -> str:
        return f"{self.split}/{self.index:05d}"


def plan_split(split: str, manifest: pd.DataFrame, boxes: DatasetBoxes | None, shard_size: int,
               settings_fingerprint: str) -> list[ShardPlan]:
    """Images in order of first appearance in the manifest, cut into shards of shard_size images."""
    persons: dict[str, list[list]] = {}
    for sample_id, image_path, box in zip(manifest["sample_id"], manifest["image_path"], manifest["person_box"]):
        persons.setdefault(image_path, []).append([str(sample_id), *(float(v) for v in box)])
    image_paths = list(persons)
    plans = []
    for index, start in enumerate(range(0, len(image_paths), shard_size)):
        chunk = image_paths[start:start + shard_size]
        key = f"{split}/{index:05d}"
        objects = [json.dumps(boxes.by_image[p].tolist() if boxes is not None and p in boxes.by_image else [])
                   for p in chunk]
        frame = pd.DataFrame({
            "shard_key": [key] * len(chunk),
            "image_path": chunk,
            "persons": [json.dumps(persons[p]) for p in chunk],
            "objects": objects,
        })
        digest = hashlib.sha256(settings_fingerprint.encode())
        for row in frame[["image_path", "persons", "objects"]].itertuples(index=False):
            digest.update("\x1f".join(row).encode() + b"\x1e")
        plans.append(ShardPlan(split, index, frame, sum(len(persons[p]) for p in chunk), digest.hexdigest()))
    return plans


def settings_fingerprint(cfg: ObjectsConfig, choice: WeightsChoice, data_root: Path, classes: list[str]) -> str:
    """Everything that changes the computed numbers (not batch_size, num_actors: they only schedule)."""
    relevant = {
        "version": FEATURE_VERSION,
        "boxes": cfg.boxes,
        "detector": cfg.detector if cfg.boxes == "detector" else None,
        "weights": choice.as_dict(),
        "score_threshold": cfg.score_threshold,
        "top_n": cfg.top_n,
        "image_size": cfg.image_size,
        "exclude_iou": cfg.exclude_iou,
        "data_root": str(data_root.resolve()),
        "classes": classes,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
