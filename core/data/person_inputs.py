"""The dataset of one split for one model: its views, its face boxes, its caches.

Training, the sweep, evaluation and the frozen-backbone cache all build their datasets here,
from the model's declared views (`model.views`, `model.view_specs`): nothing model-specific is
written in the training or evaluation code.

Face boxes (for the `face` and `image_face_masked` views) come from the detect stage's
`data/detections/<split>.parquet`. On CAER-S a person box smaller than the frame came from the
data set's face-box file (core/data/readers/caers.py) and is the face, as the data set says;
otherwise the detected face, else the fallback of core/data/views.py (counted by the dataset).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.data.dataset import FACE_VIEWS, PersonDataset
from core.errors import UserError
from core.workspace import Workspace


def read_face_boxes(detections_dir: Path, split: str, manifest: pd.DataFrame, kind: str) -> list[Any]:
    """One face box (or None) per manifest row, from the detect stage (and CAER-S's face boxes)."""
    import pyarrow.parquet as pq

    path = Path(detections_dir) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"{path} is missing: the model reads a face view; run the detect stage "
                        "(`dvc repro detect` or python -m stages.detect) first")
    table = pq.read_table(path, columns=["sample_id", "face_box"]).to_pandas()
    by_id = dict(zip(table["sample_id"], table["face_box"]))
    missing = [s for s in manifest["sample_id"] if s not in by_id]
    if missing:
        raise UserError(f"{path} has no row for {len(missing)} manifest person(s) (first: {missing[0]}): "
                        "the manifest changed since detection; rerun the detect stage")
    boxes: list[Any] = []
    for row in manifest.itertuples(index=False):
        if kind == "caers" and _smaller_than_frame(row.person_box, row.image_w, row.image_h):
            boxes.append([float(v) for v in row.person_box])
            continue
        box = by_id[row.sample_id]
        boxes.append(None if box is None else [float(v) for v in box])
    return boxes


def _smaller_than_frame(box: Sequence[float], width: int, height: int) -> bool:
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 > 0.5 or y1 > 0.5 or x2 < width - 0.5 or y2 < height - 0.5


def split_dataset(model, split: str, paths: Workspace, *, kind: str,
                  cached: Mapping[str, str | Path] | None = None,
                  manifest: pd.DataFrame | None = None) -> PersonDataset:
    """The PersonDataset of `split` holding exactly the inputs `model` reads."""
    from core.data.manifest import read_manifest

    model = model.module if hasattr(model, "module") else model
    manifest = read_manifest(split, paths.manifest_dir) if manifest is None else manifest
    face_boxes = None
    if FACE_VIEWS & set(model.views):
        face_boxes = read_face_boxes(paths.detections_dir, split, manifest, kind)
    return PersonDataset(
        manifest, paths.data_root, num_classes=model.num_classes, task=model.task, views=model.views,
        view_specs=model.view_specs,
        objects_dir=Path(paths.objects_dir) / split if "objects" in model.views else None,
        face_boxes=face_boxes, cached=cached, with_vad=bool(getattr(model, "predicts_vad", False)),
        box_view=getattr(model, "box_view", None),
    )


def fallback_counts(datasets: Mapping[str, PersonDataset]) -> dict[str, int]:
    """{split: persons whose face view is the fallback box} for the splits that read a face."""
    return {split: ds.face_fallbacks for split, ds in datasets.items() if FACE_VIEWS & set(ds.pixel_views)}
