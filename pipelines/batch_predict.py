"""Batch inference with Ray Data: every image of a folder or an S3 prefix -> a folder of Parquet files.

    ctxemo predict-batch photos/ --out predictions/
    ctxemo predict-batch photos/ --boxes boxes.csv --out predictions/   # known person boxes
    ctxemo predict-batch s3://bucket/prefix/in --out s3://bucket/prefix/out/run-7
    ctxemo predict-batch            # CTXEMO_BATCH_INPUT_URI -> CTXEMO_BATCH_OUTPUT_URI/predictions-<UTC time>

Images are spread over a Ray Data actor pool (one CPU per actor; the model is loaded once by the
driver, a registered one through MLflow as `ctxemo predict` loads it, and shared through the object
store); each actor runs `pipelines.predict.Predictor`, so a row holds exactly what `ctxemo predict` prints for that
person. S3 locations go through `core.storage` (endpoint, region; credentials from the AWS
chain on every node). `--boxes` is a CSV `image,x1,y1,x2,y2` (image relative to SRC, one row per
person); images it does not list get people detection.

Output: the actors write their rows themselves (`Dataset.write_parquet`), a Parquet file per
block, into OUT (a folder, local or on S3; an existing one that holds files is refused unless
`overwrite`); read it whole with `pyarrow.parquet.read_table(OUT)` or `pandas.read_parquet(OUT)`.
One row per person (`person` null and `status` no_person / error for an image without one):
image, person, box, box_source, detection_score, predicted, scores (in class order), top_objects
(a list of {label, weight, box, detector_score}), objects_source, status, error. The class names,
task and model are in every file's schema metadata (`ctxemo.classes`, `ctxemo.task`,
`ctxemo.model`). Rows are in no particular order across files.
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
    ("top_objects", pa.list_(pa.struct([("label", pa.string()), ("weight", pa.float64()),
                                        ("box", pa.list_(pa.float64())), ("detector_score", pa.float64())]))),
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
    """Ray Data actor: one loaded model; a batch of images in, a typed Arrow table of person rows out."""

    def __init__(self, loaded, workspace: str, boxes: dict[str, list[list[float]]] | None,
                 schema: pa.Schema = SCHEMA, torch_threads: int | None = 1):
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
        self.schema = schema

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
                             scores=[float(v) for v in person.scores], top_objects=person.top_objects,
                             objects_source=prediction.objects_source, status="ok"))
        return rows

    def __call__(self, batch) -> pa.Table:
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
        return pa.Table.from_pylist(rows, schema=self.schema)


def _row(image: str, **values: Any) -> dict[str, Any]:
    row = {name: None for name in SCHEMA.names}
    row.update(image=image, **values)
    return row


def output_schema(loaded) -> pa.Schema:
    """SCHEMA with the model's class names, task and source in its metadata."""
    return SCHEMA.with_metadata({
        "ctxemo.classes": json.dumps(loaded.package.classes), "ctxemo.task": loaded.package.task,
        "ctxemo.model": loaded.source, "ctxemo.model_version": str(loaded.version)})


def output_location(out: str, settings) -> tuple[Any, str]:
    """(pyarrow filesystem or None, path): a local folder made absolute, since Ray workers have their own cwd."""
    filesystem, path = settings.filesystem_and_path(out)
    return (filesystem, path) if filesystem is not None else (None, str(Path(path).resolve()))


def check_output(out: str, settings, overwrite: bool) -> None:
    """A clear error before any work when OUT is a file or a folder already holding files."""
    from pyarrow import fs

    filesystem, path = output_location(out, settings)
    filesystem = filesystem or fs.LocalFileSystem()
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        raise UserError(f"--out {out} is a file; predict-batch writes a folder of Parquet files")
    if info.type == fs.FileType.Directory and not overwrite and filesystem.get_file_info(
            fs.FileSelector(path, recursive=True)):
        raise UserError(f"--out {out} already holds files: choose a new folder, or pass --overwrite to replace them")


def run(src: str, out: str, model: str, *, workspace: Path = Path("."), boxes_file: Path | None = None,
        batch_size: int = 4, overwrite: bool = False, settings=None) -> dict[str, Any]:
    """Predict every image under `src`; the actors write the rows to the folder `out` (local or s3://)."""
    import pyarrow.parquet as pq
    import ray

    from core.ray_utils import autoscaling_pool, cluster_cpus, ray_session
    from core.storage import StorageSettings
    from pipelines.predict import load_model

    started = time.perf_counter()
    settings = settings or StorageSettings.from_env()
    filesystem, files, root = list_images(src, settings)
    if not files:
        raise UserError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)})")
    check_output(out, settings, overwrite)
    boxes = read_boxes(boxes_file) if boxes_file is not None else None
    # Loaded once, here (a bad --model fails before any work), and shared with the actors through
    # the object store: they need no access to the MLflow store.
    loaded = load_model(model, workspace)
    images = [_relative(f, root) for f in files]
    out_filesystem, out_path = output_location(out, settings)
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
                                                   "boxes": boxes, "schema": output_schema(loaded)},
            batch_size=batch_size, batch_format="numpy", compute=autoscaling_pool(actors),
            num_cpus=1, udf_modifying_row_count=True)
        predicted.write_parquet(out_path, filesystem=out_filesystem,
                                mode=ray.data.SaveMode.OVERWRITE if overwrite else ray.data.SaveMode.APPEND)
    # What the workers wrote, counted from the files themselves (one column read back).
    statuses = pq.read_table(out_path, columns=["status"], filesystem=out_filesystem).column("status").to_pylist()
    return {"images": len(files), "people": statuses.count("ok"), "no_person": statuses.count("no_person"),
            "errors": statuses.count("error"), "out": out, "actors": actors,
            "seconds": round(time.perf_counter() - started, 1)}


def default_locations(settings) -> tuple[str, str]:
    """(input, output folder) from CTXEMO_BATCH_INPUT_URI / CTXEMO_BATCH_OUTPUT_URI or the bucket layout;
    each run gets a folder of its own, named by its UTC start time."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return settings.batch_input_uri(), f"{settings.batch_output_uri().rstrip('/')}/predictions-{stamp}"
