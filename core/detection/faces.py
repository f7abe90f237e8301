"""Face of every target person in the manifest: the logic of the DVC stage `detect`.

    python -m stages.detect                  # reads data/manifest/{train,val,test}.parquet, params.yaml

For each manifest row (one target person):
  EMOTIC  crop the person (body) box, detect faces in the crop, map them back to image
          coordinates (clipped to the body box) and keep the highest-scoring face;
  CAER-S  the person box is already the face box or the whole frame, so detect in the whole
          frame and keep the face lying most inside the person box (ties: highest score).
Detectors (params `detect.face_detector`):
  mtcnn   facenet-pytorch's MTCNN; its weights ship inside the package (no download).
          `face_threshold` is applied to its final-stage face probability.
  haar    OpenCV's frontal-face Haar cascade; the score is the cascade's final-stage level
          weight (not a probability), so `face_threshold` does not apply; `haar_min_neighbors`
          is its acceptance rule.
A person without a face is recorded as `no_face`, an image that cannot be decoded as
`unreadable_image` (with the error in `detail`); no row is ever dropped. Images are decoded by
core/data/images.py, as in every other stage. People in new photos (inference, no annotated
boxes) are found by core/detection/people.py.

A split runs through Ray Data `map_batches` over an actor pool (one CPU per actor, each holding
its own detector) where `detect.engine` says so; `auto` picks Ray Data on a cluster or with
`detect.ray_min_cpus` CPUs, for splits of at least `detect.ray_min_images` images, and the same
batch function in-process elsewhere (core/ray_utils.py choose_engine). Detection runs on CPU
(MTCNN takes ~0.03 s per image on one thread).

Writes data/detections/<split>.parquet: sample_id, face_box (nullable [x1,y1,x2,y2] float32),
face_score (nullable float32), detector, status (ok | no_face | unreadable_image), detail.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pyarrow as pa

from core import env
from core.data.images import ImageReadError, as_rgb_array, load_rgb
from core.data.manifest import SPLITS, read_manifest, write_table
from core.errors import UserError
from core.params import DetectConfig
from core.ray_utils import choose_engine
from core.workspace import DEFAULT_WORKSPACE
from models.config import from_dict, to_dict

FACE_DETECTORS = ("mtcnn", "haar")
STATUS_OK, STATUS_NO_FACE, STATUS_UNREADABLE = "ok", "no_face", "unreadable_image"
STATUSES = (STATUS_OK, STATUS_NO_FACE, STATUS_UNREADABLE)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# Datasets whose person box is a face box or the whole frame: search the whole frame.
WHOLE_FRAME_DATASETS = frozenset({"caers"})

DETECTIONS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        # Always 4 values when present. A variable-length list because pyarrow 25 cannot read
        # back a fixed-size list column holding nulls from parquet.
        ("face_box", pa.list_(pa.float32())),
        ("face_score", pa.float32()),
        ("detector", pa.string()),
        ("status", pa.string()),
        ("detail", pa.string()),
    ]
)


# ----------------------------------------------------------------------------- face detectors
class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [k, 4] float32 [x1, y1, x2, y2] in `rgb` pixels, scores [k] float32)."""


def _no_faces() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


class MtcnnFaceDetector:
    name = "mtcnn"

    def __init__(self, min_face_size: int, face_threshold: float):
        from facenet_pytorch import MTCNN

        self.min_face_size = int(min_face_size)
        self.face_threshold = float(face_threshold)
        self.model = MTCNN(keep_all=True, min_face_size=self.min_face_size, select_largest=False,
                           post_process=False, device="cpu")

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # MTCNN's image pyramid is empty (and it fails) below its minimum face size.
        if min(rgb.shape[:2]) < self.min_face_size:
            return _no_faces()
        boxes, probs = self.model.detect(rgb[None])
        if boxes[0] is None:
            return _no_faces()
        boxes = np.asarray(boxes[0], dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(probs[0], dtype=np.float32).reshape(-1)
        keep = scores >= self.face_threshold
        return boxes[keep], scores[keep]


class HaarFaceDetector:
    name = "haar"

    def __init__(self, min_face_size: int, min_neighbors: int):
        import cv2

        path = Path(cv2.data.haarcascades) / HAAR_CASCADE
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise UserError(f"OpenCV Haar cascade not found or unreadable: {path} "
                            "(opencv-python 5.x ships none; use 4.x or detect.face_detector: mtcnn)")
        self.min_face_size = int(min_face_size)
        self.min_neighbors = int(min_neighbors)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        if min(rgb.shape[:2]) < self.min_face_size:
            return _no_faces()
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rects, _levels, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size), outputRejectLevels=True)
        if len(rects) == 0:
            return _no_faces()
        rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        return boxes, np.asarray(weights, dtype=np.float32).reshape(-1)


def build_face_detector(cfg: DetectConfig) -> FaceDetector:
    if cfg.face_detector == "mtcnn":
        return MtcnnFaceDetector(cfg.min_face_size, cfg.face_threshold)
    if cfg.face_detector == "haar":
        return HaarFaceDetector(cfg.min_face_size, cfg.haar_min_neighbors)
    raise UserError(f"detect.face_detector {cfg.face_detector!r} is unknown; "
                    f"expected one of {list(FACE_DETECTORS)}")


# ----------------------------------------------------------------------------- one image
@dataclass(frozen=True)
class FaceResult:
    face_box: tuple[float, float, float, float] | None
    face_score: float | None
    status: str
    detail: str | None = None


def _pixel_region(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The integer pixel window covering `box`, clamped to the image."""
    x1 = min(max(int(math.floor(box[0])), 0), width)
    y1 = min(max(int(math.floor(box[1])), 0), height)
    x2 = min(max(int(math.ceil(box[2])), 0), width)
    y2 = min(max(int(math.ceil(box[3])), 0), height)
    return x1, y1, x2, y2


def _fraction_inside(boxes: np.ndarray, region: Sequence[float]) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], region[2]) - np.maximum(boxes[:, 0], region[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], region[3]) - np.maximum(boxes[:, 1], region[1]), 0, None)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 1e-6, None) * np.clip(boxes[:, 3] - boxes[:, 1], 1e-6, None)
    return ix * iy / area


def faces_for_people(image: Any, person_boxes: Sequence[Sequence[float]], detector: FaceDetector,
                     whole_frame: bool | Sequence[bool] = False) -> list[FaceResult]:
    """The best face of each person box, in image coordinates.

    `image` is an RGB array / PIL image, or None when it could not be read (every person is then
    `unreadable_image`). With `whole_frame` False the face is searched inside the person box and
    clipped to it; with True the whole frame is searched once and each person gets the face
    lying most inside its box (ties broken by score).
    """
    n = len(person_boxes)
    flags = [bool(whole_frame)] * n if isinstance(whole_frame, (bool, np.bool_)) else list(whole_frame)
    if image is None:
        return [FaceResult(None, None, STATUS_UNREADABLE)] * n
    rgb = as_rgb_array(image)
    height, width = rgb.shape[:2]
    frame_faces: tuple[np.ndarray, np.ndarray] | None = None
    results: list[FaceResult] = []
    for box, in_frame in zip(person_boxes, flags):
        box = [float(v) for v in box]
        if in_frame:
            if frame_faces is None:
                frame_faces = detector.detect(rgb)
            boxes, scores = frame_faces
            boxes = np.clip(boxes, 0, [width, height, width, height])
            if len(boxes):
                inside = np.round(_fraction_inside(boxes, box), 3)
                best = int(np.lexsort((scores, inside))[-1])  # most inside first, then score
                results.append(FaceResult(tuple(float(v) for v in boxes[best]), float(scores[best]),
                                          STATUS_OK))
            else:
                results.append(FaceResult(None, None, STATUS_NO_FACE))
            continue
        x1, y1, x2, y2 = _pixel_region(box, width, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            results.append(FaceResult(None, None, STATUS_NO_FACE, "person box is empty inside the image"))
            continue
        boxes, scores = detector.detect(np.ascontiguousarray(rgb[y1:y2, x1:x2]))
        boxes = boxes + np.array([x1, y1, x1, y1], dtype=np.float32)
        # Detector boxes may overhang the crop; the face must lie inside the person box.
        low = [max(box[0], 0.0), max(box[1], 0.0)] * 2
        high = [min(box[2], width), min(box[3], height)] * 2
        boxes = np.minimum(np.maximum(boxes, low), high)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not valid.any():
            results.append(FaceResult(None, None, STATUS_NO_FACE))
            continue
        best = int(np.flatnonzero(valid)[np.argmax(scores[valid])])
        results.append(FaceResult(tuple(float(v) for v in boxes[best]), float(scores[best]), STATUS_OK))
    return results


# ----------------------------------------------------------------------------- batches
def detect_batch(batch: dict[str, np.ndarray], detector: FaceDetector,
                 data_root: Path) -> dict[str, np.ndarray]:
    """Face results for a batch of persons (columns sample_id, image_path, x1, y1, x2, y2,
    whole_frame); each distinct image in the batch is decoded once."""
    n = len(batch["sample_id"])
    face_box = np.full((n, 4), np.nan, dtype=np.float32)
    face_score = np.full((n,), np.nan, dtype=np.float32)
    status = np.empty((n,), dtype=object)
    detail = np.full((n,), None, dtype=object)
    boxes = np.stack([batch[k] for k in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
    image_paths = np.asarray(batch["image_path"], dtype=object)
    for image_path in dict.fromkeys(image_paths.tolist()):
        rows = np.flatnonzero(image_paths == image_path)
        full_path = Path(data_root) / image_path
        try:
            rgb, error = load_rgb(full_path), None
        except ImageReadError as exc:
            # The same message wherever the dataset root lives (the file is a DVC output).
            rgb, error = None, str(exc).replace(str(full_path), image_path)
        found = faces_for_people(rgb, boxes[rows], detector,
                                 [bool(v) for v in np.asarray(batch["whole_frame"])[rows]])
        for row, result in zip(rows, found):
            status[row] = result.status
            detail[row] = error if error is not None else result.detail
            if result.face_box is not None:
                face_box[row] = result.face_box
                face_score[row] = result.face_score
    return {"sample_id": np.asarray(batch["sample_id"], dtype=object), "face_box": face_box,
            "face_score": face_score, "status": status, "detail": detail}


class FaceBatchDetector:
    """Ray Data callable class: one detector per actor, reused for every batch it gets."""

    def __init__(self, detect_cfg: dict[str, Any], data_root: str):
        import cv2

        cfg = from_dict(DetectConfig, detect_cfg)
        # One CPU per actor: intra-op threads beyond it only contend with the other actors.
        cv2.setNumThreads(1)
        if cfg.face_detector == "mtcnn":
            import torch

            torch.set_num_threads(1)
        self.detector = build_face_detector(cfg)
        self.data_root = Path(data_root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return detect_batch(batch, self.detector, self.data_root)


def _persons_frame(manifest):
    import pandas as pd

    boxes = np.stack(manifest["person_box"].to_numpy()).astype(np.float64) if len(manifest) \
        else np.zeros((0, 4))
    frame = pd.DataFrame({
        "sample_id": manifest["sample_id"].astype(str).to_numpy(dtype=object),
        "image_path": manifest["image_path"].astype(str).to_numpy(dtype=object),
        "x1": boxes[:, 0], "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3],
        "whole_frame": manifest["dataset"].isin(WHOLE_FRAME_DATASETS).to_numpy(dtype=bool),
    })
    # Persons of one image sit next to each other, so a batch decodes each image once.
    return frame.sort_values("image_path", kind="stable").reset_index(drop=True)


def _batch_dict(frame) -> dict[str, np.ndarray]:
    return {column: frame[column].to_numpy() for column in frame.columns}


def _detect_in_process(frame, cfg: DetectConfig, data_root: Path) -> list[dict[str, np.ndarray]]:
    detector = build_face_detector(cfg)

    def batches() -> list[dict[str, np.ndarray]]:
        return [detect_batch(_batch_dict(frame.iloc[start:start + cfg.batch_size]), detector, data_root)
                for start in range(0, len(frame), cfg.batch_size)]

    if cfg.face_detector != "mtcnn":
        return batches()
    import torch

    # MTCNN's small convolutions lose to thread overhead: one thread took 0.18 s per body crop
    # where two took 0.68 s on a busy 2-core machine. Parallelism comes from Ray actors instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return batches()
    finally:
        torch.set_num_threads(threads)


def _detect_with_ray(frame, cfg: DetectConfig, data_root: Path) -> list[dict[str, np.ndarray]]:
    import ray.data

    from core.ray_utils import autoscaling_pool, cluster_cpus

    n_batches = math.ceil(len(frame) / cfg.batch_size)
    n_actors = max(1, min(cluster_cpus(), n_batches))
    n_blocks = min(n_batches, 4 * n_actors)
    chunks = [frame.iloc[rows] for rows in np.array_split(np.arange(len(frame)), n_blocks) if len(rows)]
    dataset = ray.data.from_pandas(chunks).map_batches(
        FaceBatchDetector,
        fn_constructor_kwargs={"detect_cfg": to_dict(cfg), "data_root": str(Path(data_root).resolve())},
        batch_size=cfg.batch_size, batch_format="numpy",
        compute=autoscaling_pool(n_actors), num_cpus=1,
        udf_modifying_row_count=False)
    return list(dataset.iter_batches(batch_format="numpy", batch_size=None))


def _results_table(manifest, batches: list[dict[str, np.ndarray]], detector_name: str) -> pa.Table:
    """The detections of `batches` as a table in manifest row order."""
    by_id: dict[str, int] = {}
    columns = {k: np.concatenate([b[k] for b in batches]) if batches else np.zeros((0,))
               for k in ("sample_id", "face_score", "status", "detail")}
    face_box = np.concatenate([b["face_box"] for b in batches]).reshape(-1, 4) if batches \
        else np.zeros((0, 4), np.float32)
    for i, sample_id in enumerate(columns["sample_id"].tolist()):
        by_id[sample_id] = i
    order = [by_id[str(s)] for s in manifest["sample_id"]]
    rows = []
    for i in order:
        has_face = columns["status"][i] == STATUS_OK
        rows.append({
            "sample_id": columns["sample_id"][i],
            "face_box": [float(v) for v in face_box[i]] if has_face else None,
            "face_score": float(columns["face_score"][i]) if has_face else None,
            "detector": detector_name,
            "status": columns["status"][i],
            # Ray's arrow round trip turns a batch's all-None detail column into NaN floats.
            "detail": columns["detail"][i] if isinstance(columns["detail"][i], str) else None,
        })
    return pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA)


def detect_split(manifest, cfg: DetectConfig, data_root: Path, use_ray: bool) -> pa.Table:
    """Detections for one split's manifest DataFrame, one row per manifest row, same order."""
    duplicated = manifest["sample_id"].duplicated()
    if duplicated.any():
        raise UserError(f"manifest has duplicate sample_id {manifest['sample_id'][duplicated].iloc[0]!r}")
    frame = _persons_frame(manifest)
    batches = _detect_with_ray(frame, cfg, data_root) if use_ray and len(frame) \
        else _detect_in_process(frame, cfg, data_root)
    return _results_table(manifest, batches, cfg.face_detector)


def run(cfg: DetectConfig, data_root: Path, manifest_dir: Path = DEFAULT_WORKSPACE.manifest_dir,
        out_dir: Path = DEFAULT_WORKSPACE.detections_dir, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """Detect the faces of every split, write data/detections/<split>.parquet, return counts."""
    data_root, manifest_dir, out_dir = Path(data_root), Path(manifest_dir), Path(out_dir)
    if cfg.face_detector not in FACE_DETECTORS:
        raise UserError(f"detect.face_detector {cfg.face_detector!r} is unknown; "
                        f"expected one of {list(FACE_DETECTORS)}")
    if not data_root.is_dir():
        raise UserError(f"dataset root not found: {data_root} (params data.root)")
    manifests = {}
    for split in splits:
        path = manifest_dir / f"{split}.parquet"
        if not path.is_file():
            raise UserError(f"manifest not found: {path} (run the ingest stage first)")
        manifests[split] = read_manifest(split, manifest_dir)
    engines = {split: choose_engine("detect", cfg.engine, int(manifest["image_path"].nunique()),
                                    min_images=cfg.ray_min_images, min_cpus=cfg.ray_min_cpus,
                                    cluster_address=env.ray_address(), cpus=os.cpu_count() or 1)
               for split, manifest in manifests.items()}
    ray_splits = {split for split, (engine, _) in engines.items() if engine == "ray"}

    summary: dict[str, Any] = {"detector": cfg.face_detector, "splits": {}}
    session = _ray_session_if(bool(ray_splits))
    with session:
        for split, manifest in manifests.items():
            started = time.perf_counter()
            table = detect_split(manifest, cfg, data_root, use_ray=split in ray_splits)
            write_table(table, out_dir / f"{split}.parquet")
            statuses = table.column("status").to_pylist()
            details = table.column("detail").to_pylist()
            unreadable = sorted({f"{p}: {d}" for p, s, d in zip(manifest["image_path"], statuses, details)
                                 if s == STATUS_UNREADABLE})
            summary["splits"][split] = {
                "persons": len(statuses),
                "images": int(manifest["image_path"].nunique()),
                **{status: statuses.count(status) for status in STATUSES},
                "unreadable_images": unreadable,
                "ray": split in ray_splits,
                "engine_reason": engines[split][1],
                "seconds": round(time.perf_counter() - started, 2),
            }
    return summary


def _ray_session_if(needed: bool):
    import contextlib

    if not needed:
        return contextlib.nullcontext()
    from core.ray_utils import ray_session

    return ray_session()
