"""Batch inference with Ray Data: every image of a folder or an S3 prefix -> one Parquet file.

    ctxemo predict-batch photos/ --out predictions.parquet
    ctxemo predict-batch photos/ --boxes boxes.csv --out predictions.parquet   # known person boxes
    ctxemo predict-batch s3://bucket/prefix/in --out s3://bucket/prefix/out/predictions.parquet
    ctxemo predict-batch            # CTXEMO_BATCH_INPUT_URI -> CTXEMO_BATCH_OUTPUT_URI/predictions.parquet

Images are spread over a Ray Data actor pool (one CPU per actor; the model is loaded once by the
driver, a registered one through MLflow as `ctxemo predict` loads it, and shared through the object
store); each actor runs `pipelines.predict.Predictor`, so a row holds exactly what `ctxemo predict` prints for that
person. S3 locations go through `core.storage` (endpoint, region; credentials from the AWS
chain on every node). `--boxes` is a CSV `image,x1,y1,x2,y2` (image relative to SRC, one row per
person); images it does not list get people detection.

Output: one row per person (`person` null and `status` no_person / error for an image without one):
image, person, box, box_source, detection_score, predicted, scores (in class order), top_objects
(JSON), objects_source, status, error. The class names, task and model are in the file's schema
metadata (`ctxemo.classes`, `ctxemo.task`, `ctxemo.model`).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import UserError
from pipelines.predict import IMAGE_SUFFIXES

SCHEMA = pa.schema([
    ("image", pa.string()),
    ("person", pa.int32()),
    ("box", pa.list_(pa.float32())),
    ("box_source", pa.string()),
    ("detection_score", pa.float32()),
    ("predicted", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("top_objects", pa.string()),
    ("objects_source", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
])


def list_images(src: str, settings) -> tuple[Any, list[str], str]:
    """(pyarrow filesystem or None, image paths, root the `image` column is relative to)."""
    filesystem, path = settings.filesystem_and_path(src)
    if filesystem is None:
        root = Path(src)
        if root.is_file():
            return None, [str(root.resolve())], str(root.resolve().parent)
        if not root.is_dir():
            raise UserError(f"{src}: no such folder or image")
        files = sorted(str(p.resolve()) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return None, files, str(root.resolve())
    from pyarrow import fs

    selector = fs.FileSelector(path, recursive=True, allow_not_found=True)
    files = sorted(info.path for info in filesystem.get_file_info(selector)
                   if info.type == fs.FileType.File and Path(info.path).suffix.lower() in IMAGE_SUFFIXES)
    return filesystem, files, path


def read_boxes(path: Path) -> dict[str, list[list[float]]]:
    """{image relative to SRC: [[x1,y1,x2,y2], ...]} from a CSV image,x1,y1,x2,y2."""
    import pandas as pd

    if not Path(path).is_file():
        raise UserError(f"--boxes {path}: no such file")
    table = pd.read_csv(path, dtype={"image": str})
    missing = [c for c in ("image", "x1", "y1", "x2", "y2") if c not in table.columns]
    if missing:
        raise UserError(f"--boxes {path}: missing column(s) {missing}; expected image,x1,y1,x2,y2")
    boxes: dict[str, list[list[float]]] = {}
    for line, row in enumerate(table.itertuples(index=False), start=2):
        box = [float(row.x1), float(row.y1), float(row.x2), float(row.y2)]
        if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            raise UserError(f"--boxes {path} line {line}: box {box} is not x1<x2, y1<y2 numbers")
        boxes.setdefault(str(row.image), []).append(box)
    return boxes


def _relative(path: str, root: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


class BatchPredictor:
    """Ray Data actor: one loaded model; a batch of images in, a DataFrame of person rows out."""

    def __init__(self, loaded, workspace: str, boxes: dict[str, list[list[float]]] | None,
                 torch_threads: int | None = 1):
        import torch

        from pipelines.predict import Predictor

        if torch_threads:
            torch.set_num_threads(torch_threads)
        if not hasattr(loaded, "package"):
            import ray  # an ObjectRef put by the driver: one copy of the model in the object store

            loaded = ray.get(loaded)
        self.loaded = loaded
        self.predictor = Predictor(loaded, Path(workspace))
        self.boxes = boxes or {}

    def _predict(self, image: str, path: str) -> list[dict[str, Any]]:
        try:
            prediction = self.predictor.predict(path, self.boxes.get(image))
        except UserError as exc:
            return [_row(image, status="error", error=str(exc))]
        if not prediction.people:
            return [_row(image, status="no_person", objects_source=prediction.objects_source,
                         box_source=prediction.people_source)]
        rows = []
        for number, person in enumerate(prediction.people):
            rows.append(_row(image, person=number, box=[float(v) for v in person.box], box_source=person.box_source,
                             detection_score=person.detection_score, predicted=person.predicted,
                             scores=[float(v) for v in person.scores], top_objects=json.dumps(person.top_objects),
                             objects_source=prediction.objects_source, status="ok"))
        return rows

    def __call__(self, batch):
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for i, image in enumerate(batch["image"]):
            if "bytes" in batch:
                # Remote objects: the decoders read files, so each is staged in a temporary file.
                with tempfile.NamedTemporaryFile(suffix=Path(str(image)).suffix) as staged:
                    staged.write(batch["bytes"][i])
                    staged.flush()
                    rows.extend(self._predict(str(image), staged.name))
            else:
                rows.extend(self._predict(str(image), str(batch["path"][i])))
        return pd.DataFrame({"record": [json.dumps(r) for r in rows]})


def _row(image: str, **values: Any) -> dict[str, Any]:
    row = {name: None for name in SCHEMA.names}
    row.update(image=image, **values)
    return row


def run(src: str, out: str, model: str, *, workspace: Path = Path("."), boxes_file: Path | None = None,
        batch_size: int = 4, settings=None) -> dict[str, Any]:
    """Predict every image under `src`, write `out` (a .parquet path, local or s3://); returns a summary."""
    import ray

    from core.ray_utils import autoscaling_pool, cluster_cpus, ray_session
    from core.storage import StorageSettings
    from pipelines.predict import load_model

    started = time.perf_counter()
    settings = settings or StorageSettings.from_env()
    filesystem, files, root = list_images(src, settings)
    if not files:
        raise UserError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)})")
    boxes = read_boxes(boxes_file) if boxes_file is not None else None
    # Loaded once, here (a bad --model fails before any work), and shared with the actors through
    # the object store: they need no access to the MLflow store.
    loaded = load_model(model, workspace)
    images = [_relative(f, root) for f in files]
    with ray_session():
        loaded_ref = ray.put(loaded)
        if filesystem is None:
            dataset = ray.data.from_items([{"image": i, "path": f} for i, f in zip(images, files)])
        else:
            dataset = ray.data.read_binary_files(files, filesystem=filesystem, include_paths=True)
            dataset = dataset.map(lambda r: {"image": _relative(r["path"], root), "bytes": r["bytes"]})
        batches = -(-len(files) // batch_size)
        actors = max(1, min(cluster_cpus(), batches))
        predicted = dataset.map_batches(
            BatchPredictor, fn_constructor_kwargs={"loaded": loaded_ref, "workspace": str(Path(workspace).resolve()),
                                                   "boxes": boxes},
            batch_size=batch_size, batch_format="numpy", compute=autoscaling_pool(actors),
            num_cpus=1, udf_modifying_row_count=True)
        records = [json.loads(r) for batch in predicted.iter_batches(batch_format="numpy", batch_size=None)
                   for r in batch["record"]]
    records.sort(key=lambda r: (r["image"], -1 if r["person"] is None else r["person"]))
    table = pa.Table.from_pylist(records, schema=SCHEMA).replace_schema_metadata({
        "ctxemo.classes": json.dumps(loaded.package.classes), "ctxemo.task": loaded.package.task,
        "ctxemo.model": loaded.source, "ctxemo.model_version": str(loaded.version)})
    write_parquet(table, out, settings)
    statuses = [r["status"] for r in records]
    return {"images": len(files), "people": statuses.count("ok"), "no_person": statuses.count("no_person"),
            "errors": statuses.count("error"), "out": out, "actors": actors,
            "seconds": round(time.perf_counter() - started, 1)}


def write_parquet(table: pa.Table, out: str, settings) -> None:
    import pyarrow.parquet as pq

    filesystem, path = settings.filesystem_and_path(out)
    if filesystem is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, filesystem=filesystem)


def default_locations(settings) -> tuple[str, str]:
    """(input, output .parquet) from CTXEMO_BATCH_INPUT_URI / CTXEMO_BATCH_OUTPUT_URI or the bucket layout."""
    return settings.batch_input_uri(), settings.batch_output_uri().rstrip("/") + "/predictions.parquet"
