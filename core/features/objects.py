"""Object context per target person: top-N object boxes and 2048-d RoI appearance features.

    python -m stages.objects                       # all splits, Ray Data actor pool
    python -m stages.objects --splits val --engine local   # one split, plain in-process loop

Boxes come from the data set (`objects.boxes: dataset`, a CSV `image_path,x1,y1,x2,y2,label,score`
under `data.root`, e.g. the generated demo's object_boxes.csv) or from a torchvision Faster R-CNN
ResNet-50 FPN (`objects.boxes: detector`). Features follow the bottom-up-attention "C4" recipe:
the image is resized so its shorter side is `objects.image_size`, ResNet-50 conv1..layer3 give the
C4 map (stride 16), each box is RoIAligned to 14x14 on it, layer4 (res5) brings that to 7x7 and an
average pool gives the 2048-d vector. With detector boxes the detector's own ResNet-50 body is the
feature extractor (one set of weights).

Work is per image (the C4 map and RoI features are computed once however many people share the
image); output is per person: boxes overlapping the target's own person_box with IoU >=
`objects.exclude_iou` are removed (other people stay as context), boxes scoring below
`objects.score_threshold` are dropped, then the `objects.top_n` highest scores are kept.

Weights, in this order: `objects.weights` (a local state_dict file: ResNet-50 or Faster R-CNN for
dataset boxes, Faster R-CNN for the detector); the torchvision enum (ResNet50 IMAGENET1K_V1 or
Faster R-CNN COCO_V1) when its file is already in the torch hub cache; a seeded random init when
`objects.allow_random_weights` is true (demo data only); otherwise the enum is downloaded, and a
failure says how to supply the file.

Writes data/objects/<split>/ (S persons in manifest order, N = top_n; padding rows are zero):
  features.npy [S,N,2048] float16   boxes.npy [S,N,4] float32 (original image pixels)
  scores.npy   [S,N] float32        classes.npy [S,N] int16 (-1 = padding)   counts.npy [S] int32
  index.parquet  sample_id, row, image_path, count, status (ok | unreadable_image), reason
  meta.json      top_n, weights used, extractor, class vocabulary, counts, unreadable images
and data/objects/rejected_boxes.parquet (dataset boxes only: rows of the boxes file not used, why).

Resuming: images are grouped into shards of `objects.shard_size`; each finished shard is written
to data/objects.shards/<split>/part-XXXXX.npz plus a .done.json marker holding a fingerprint of
its inputs and of every setting that changes the numbers. A rerun reuses matching shards and
computes the rest; after a split is assembled its shards are deleted. The shard folder sits
outside data/objects on purpose: `dvc repro` deletes a stage's outputs before running it, which
would throw away the work an interrupted run had finished.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from models.config import ConfigError
from stages.data.images import ImageReadError, load_rgb
from stages.data.manifest import MANIFEST_DIR, SPLITS, read_manifest
from stages.errors import UserError
from stages.params import DEFAULT_PARAMS, ObjectsConfig, Params, load_params

OBJECTS_DIR = Path("data/objects")
FEATURE_DIM = 2048
C4_STRIDE = 16
ROI_OUTPUT = 14            # res5 halves it to 7x7, as in the bottom-up-attention C4 head
ROI_SAMPLING_RATIO = 2
# Part of every shard fingerprint: bump it when the numbers this file computes change, so that
# shards written by older code are recomputed instead of mixed in.
FEATURE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLOAT16_MAX = float(np.finfo(np.float16).max)
SUPPORTED_DETECTORS = ("fasterrcnn_resnet50_fpn",)
BOXES_COLUMNS = ("image_path", "x1", "y1", "x2", "y2", "label", "score")
STATUS_OK = "ok"
STATUS_UNREADABLE = "unreadable_image"
ARRAY_NAMES = ("features", "boxes", "scores", "classes", "counts")

REJECTED_SCHEMA = pa.schema([
    ("line", pa.int64()),          # line in the CSV file, header = line 1
    ("image_path", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])


# --------------------------------------------------------------------------- weights

@dataclass(frozen=True)
class WeightsChoice:
    """Which weights the extractor runs with; recorded in meta.json and in every fingerprint."""

    source: str                  # file | torchvision | random
    name: str                    # file path, enum name, or "random"
    sha256: str | None = None
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torchvision_enum(cfg: ObjectsConfig):
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    if cfg.boxes == "detector":
        return FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    return ResNet50_Weights.IMAGENET1K_V1


def _enum_name(weights) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def cached_checkpoint(weights) -> Path:
    """Where torch.hub keeps the file of a torchvision weights enum (it may not exist)."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise UserError(f"objects.weights: cannot read {path} as a torch state_dict "
                        f"({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"objects.weights: {path} holds no state_dict (a mapping of parameter names to tensors)")
    return obj


def resolve_weights(cfg: ObjectsConfig, seed: int) -> tuple[WeightsChoice, dict[str, torch.Tensor] | None]:
    """Pick the weights (see the module docstring for the order); None state_dict = random init."""
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise UserError(f"objects.weights: {path} does not exist (expected a local state_dict file of "
                            f"{'fasterrcnn_resnet50_fpn' if cfg.boxes == 'detector' else 'resnet50'})")
        return WeightsChoice("file", str(path), _sha256(path)), _read_state_dict(path)
    weights = _torchvision_enum(cfg)
    cached = cached_checkpoint(weights)
    if cached.is_file():
        return (WeightsChoice("torchvision", _enum_name(weights), _sha256(cached)),
                weights.get_state_dict(progress=False))
    if cfg.allow_random_weights:
        return WeightsChoice("random", "random", seed=seed), None
    try:
        state_dict = weights.get_state_dict(progress=True)
    except Exception as exc:  # URLError offline, HTTPError, hash mismatch...
        raise UserError(
            f"objects: no weights for the feature extractor: downloading {_enum_name(weights)} failed "
            f"({type(exc).__name__}: {exc}). Put {cached.name} into {cached.parent}, or set objects.weights "
            f"to a local state_dict file, or (generated demo data only) set objects.allow_random_weights: true"
        ) from None
    return WeightsChoice("torchvision", _enum_name(weights), _sha256(cached) if cached.is_file() else None), state_dict


def _load_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str,
                  ignorable_missing: tuple[str, ...] = ()) -> None:
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"objects.weights: not a {what} state_dict: {str(exc).splitlines()[0]}") from None
    # Torchvision's pretrained detectors use FrozenBatchNorm2d (no num_batches_tracked buffer);
    # the module built here uses BatchNorm2d in eval mode, which computes the same thing.
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith(ignorable_missing)]
    if missing or unexpected:
        raise UserError(f"objects.weights: not a {what} state_dict: missing {missing[:4]}"
                        f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                        f"{'...' if len(unexpected) > 4 else ''}")


# --------------------------------------------------------------------------- model

def coco_categories() -> list[str]:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


class RoIFeatureModel(nn.Module):
    """ResNet-50 C4 map + res5 RoI head, optionally with the Faster R-CNN that owns the body."""

    def __init__(self, resnet_body: nn.Module, detector: nn.Module | None = None):
        super().__init__()
        self.stem = nn.Sequential(resnet_body.conv1, resnet_body.bn1, resnet_body.relu, resnet_body.maxpool)
        self.layer1, self.layer2, self.layer3 = resnet_body.layer1, resnet_body.layer2, resnet_body.layer3
        self.layer4 = resnet_body.layer4
        self.detector = detector

    def c4_map(self, image: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(image))))

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(C4 map, boxes in `image` pixels, scores, class ids) from one normalised image [1,3,H,W].

        Runs the GeneralizedRCNN pieces by hand instead of `detector(images)`: its transform would
        resize and normalise again, and the C4 map it computes would be lost.
        """
        from torchvision.models.detection.image_list import ImageList

        assert self.detector is not None
        pyramid_inputs = self.detector.backbone.body(image)
        c4 = pyramid_inputs["2"]   # layer3 output (IntermediateLayerGetter names layers 1..4 as '0'..'3')
        pyramid = self.detector.backbone.fpn(pyramid_inputs)
        images = ImageList(image, [tuple(image.shape[-2:])])
        proposals, _ = self.detector.rpn(images, pyramid)
        detections, _ = self.detector.roi_heads(pyramid, proposals, images.image_sizes)
        return c4, detections[0]["boxes"], detections[0]["scores"], detections[0]["labels"]

    def roi_features(self, c4: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """[K,2048] for boxes [K,4] given in the pixels of the image the C4 map was computed on."""
        from torchvision.ops import roi_align

        if boxes.shape[0] == 0:
            return c4.new_zeros((0, FEATURE_DIM))
        rois = roi_align(c4, [boxes.to(c4.dtype)], output_size=ROI_OUTPUT, spatial_scale=1.0 / C4_STRIDE,
                         sampling_ratio=ROI_SAMPLING_RATIO, aligned=True)
        return self.layer4(rois).mean(dim=(2, 3))


def detections_per_image(cfg: ObjectsConfig) -> int:
    # Room for the top_n context objects plus the people that get excluded as targets.
    return max(100, 2 * cfg.top_n)


def build_model(cfg: ObjectsConfig, choice: WeightsChoice, state_dict: dict[str, torch.Tensor] | None,
                seed: int) -> RoIFeatureModel:
    """The extractor in eval mode. Random init (state_dict None) is seeded: every actor gets the same."""
    from torchvision.models import resnet50
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if choice.seed is None else choice.seed)
        if cfg.boxes == "detector":
            detector = fasterrcnn_resnet50_fpn(
                weights=None, weights_backbone=None, num_classes=len(coco_categories()),
                box_score_thresh=cfg.score_threshold, box_detections_per_img=detections_per_image(cfg))
            if state_dict is not None:
                _load_checked(detector, state_dict, "fasterrcnn_resnet50_fpn")
            model = RoIFeatureModel(detector.backbone.body, detector)
        else:
            resnet = resnet50(weights=None)
            if state_dict is not None:
                prefix = "backbone.body."
                from_detector = any(k.startswith(prefix) for k in state_dict)
                if from_detector:  # a Faster R-CNN file: its ResNet-50 body is the extractor
                    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
                _load_checked(resnet, state_dict, "resnet50 (or fasterrcnn_resnet50_fpn)",
                              ignorable_missing=("fc.",) if from_detector else ())
            model = RoIFeatureModel(resnet)
    return model.eval()


def prepare_image(rgb: np.ndarray, image_size: int, device: torch.device | str = "cpu"
                  ) -> tuple[torch.Tensor, tuple[float, float]]:
    """Normalised [1,3,h,w] tensor whose shorter side is `image_size`, and the (x, y) scale factors."""
    height, width = rgb.shape[:2]
    short = min(height, width)
    new_h = max(1, round(height * image_size / short))
    new_w = max(1, round(width * image_size / short))
    image = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    if (new_h, new_w) != (height, width):
        image = nn.functional.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                          antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std, (new_w / width, new_h / height)


# --------------------------------------------------------------------------- selection

def iou_with(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [4] box with each of [K,4] boxes (x1,y1,x2,y2)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def select_for_person(boxes: np.ndarray, scores: np.ndarray, person_box: Sequence[float], top_n: int,
                      exclude_iou: float) -> np.ndarray:
    """Indices of the top_n highest-scoring boxes that are not the person itself (ties: file order)."""
    candidates = np.flatnonzero(iou_with(np.asarray(person_box), boxes) < exclude_iou)
    order = np.argsort(-np.asarray(scores, dtype=np.float32)[candidates], kind="stable")
    return candidates[order[:top_n]]


# --------------------------------------------------------------------------- the per-image worker

@dataclass
class PersonObjects:
    sample_id: str
    features: np.ndarray     # [N,2048] float16
    boxes: np.ndarray        # [N,4] float32
    scores: np.ndarray       # [N] float32
    classes: np.ndarray      # [N] int16
    count: int
    status: str = STATUS_OK
    reason: str = ""


def empty_person(sample_id: str, top_n: int, status: str = STATUS_OK, reason: str = "") -> PersonObjects:
    return PersonObjects(sample_id, np.zeros((top_n, FEATURE_DIM), np.float16), np.zeros((top_n, 4), np.float32),
                         np.zeros(top_n, np.float32), np.full(top_n, -1, np.int16), 0, status, reason)


class ObjectFeatureWorker:
    """Callable on a batch of images (numpy dict); returns one row per person.

    This is the Ray Data `map_batches` class (one instance per actor, the model built once) and
    the in-process loop of `--engine local`; both compute every image alone, so the numbers do
    not depend on how images were batched or which actor got them.
    """

    def __init__(self, cfg: ObjectsConfig, choice: WeightsChoice, state_dict: Any, data_root: str,
                 seed: int, torch_threads: int | None = None, device: str | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        if state_dict is not None and not isinstance(state_dict, dict):
            import ray  # an ObjectRef put by the driver: one copy in the object store, not one per actor

            state_dict = ray.get(state_dict)
        self.cfg = cfg
        self.data_root = Path(data_root)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build_model(cfg, choice, state_dict, seed).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results: list[PersonObjects] = []
        shard_keys: list[str] = []
        for key, image_path, persons, objects in zip(batch["shard_key"], batch["image_path"],
                                                     batch["persons"], batch["objects"]):
            people = self.process_image(str(image_path), json.loads(str(persons)), json.loads(str(objects)))
            results.extend(people)
            shard_keys.extend([str(key)] * len(people))
        return stack_people(results, shard_keys, self.cfg.top_n)

    @torch.inference_mode()
    def process_image(self, image_path: str, persons: list[list], objects: list[list]) -> list[PersonObjects]:
        cfg = self.cfg
        try:
            rgb = load_rgb(self.data_root / image_path)
        except ImageReadError as exc:
            # The message minus its absolute path: index.parquet already names the image, and the
            # outputs should not depend on where the workspace lives.
            cause = str(exc).split(": ", 1)[-1]
            return [empty_person(p[0], cfg.top_n, STATUS_UNREADABLE, cause) for p in persons]
        height, width = rgb.shape[:2]
        image, (scale_x, scale_y) = prepare_image(rgb, cfg.image_size, self.device)
        scale = torch.tensor([scale_x, scale_y, scale_x, scale_y], device=self.device)
        if cfg.boxes == "detector":
            c4, boxes_resized, det_scores, det_labels = self.model.detect(image)
            boxes_t = boxes_resized / scale
            boxes_t[:, 0::2] = boxes_t[:, 0::2].clamp(0, width)
            boxes_t[:, 1::2] = boxes_t[:, 1::2].clamp(0, height)
            boxes = boxes_t.float().cpu().numpy()
            scores = det_scores.float().cpu().numpy()
            classes = det_labels.cpu().numpy().astype(np.int16)
        else:
            c4 = None  # computed below only when some box is selected
            table = np.asarray(objects, dtype=np.float64).reshape(-1, 6)
            boxes = table[:, :4].astype(np.float32)
            classes = table[:, 4].astype(np.int16)
            scores = table[:, 5].astype(np.float32)
        keep = np.flatnonzero(scores >= cfg.score_threshold)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        chosen = [select_for_person(boxes, scores, p[1:5], cfg.top_n, cfg.exclude_iou) for p in persons]
        union = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        union_feats = np.zeros((len(boxes), FEATURE_DIM), np.float16)
        if len(union):
            roi_boxes = torch.from_numpy(boxes[union]).to(self.device) * scale
            c4 = self.model.c4_map(image) if c4 is None else c4
            feats = self.model.roi_features(c4, roi_boxes).float().cpu().numpy()
            # Random-init demo weights can reach large activations; inf would poison training.
            union_feats[union] = np.clip(feats, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        people = []
        for person, idx in zip(persons, chosen):
            row = empty_person(person[0], cfg.top_n)
            k = len(idx)
            row.features[:k], row.boxes[:k] = union_feats[idx], boxes[idx]
            row.scores[:k], row.classes[:k], row.count = scores[idx], classes[idx], k
            people.append(row)
        return people


def stack_people(people: Sequence[PersonObjects], shard_keys: Sequence[str], top_n: int) -> dict[str, np.ndarray]:
    def stacked(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if not people:
            return np.zeros((0, *shape), dtype)
        return np.stack([getattr(p, name) for p in people]).astype(dtype, copy=False)

    return {
        "shard_key": np.array(list(shard_keys), dtype=object),
        "sample_id": np.array([p.sample_id for p in people], dtype=object),
        "features": stacked("features", (top_n, FEATURE_DIM), np.float16),
        "boxes": stacked("boxes", (top_n, 4), np.float32),
        "scores": stacked("scores", (top_n,), np.float32),
        "classes": stacked("classes", (top_n,), np.int16),
        "counts": np.array([p.count for p in people], dtype=np.int32),
        "status": np.array([p.status for p in people], dtype=object),
        "reason": np.array([p.reason for p in people], dtype=object),
    }


# --------------------------------------------------------------------------- inputs

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


# --------------------------------------------------------------------------- shards

def shard_paths(shard_dir: Path, index: int) -> tuple[Path, Path]:
    return shard_dir / f"part-{index:05d}.npz", shard_dir / f"part-{index:05d}.done.json"


def shard_is_done(shard_dir: Path, plan: ShardPlan) -> bool:
    data_path, marker = shard_paths(shard_dir, plan.index)
    if not (data_path.is_file() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == plan.fingerprint
    except (json.JSONDecodeError, OSError):
        return False


def write_shard(shard_dir: Path, plan: ShardPlan, rows: dict[str, np.ndarray], seconds: float) -> None:
    """Data first (atomic rename), then the marker: a marker always means a complete shard."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    data_path, marker = shard_paths(shard_dir, plan.index)
    tmp = data_path.with_name(data_path.name + ".tmp")
    arrays = {name: rows[name] for name in ARRAY_NAMES}
    with tmp.open("wb") as fh:
        np.savez(fh, sample_id=rows["sample_id"].astype(str), status=rows["status"].astype(str),
                 reason=rows["reason"].astype(str), **arrays)
    tmp.replace(data_path)
    marker_tmp = marker.with_name(marker.name + ".tmp")
    marker_tmp.write_text(json.dumps({"fingerprint": plan.fingerprint, "images": len(plan.frame),
                                      "persons": plan.n_persons, "seconds": round(seconds, 3)}))
    marker_tmp.replace(marker)


class ShardCollector:
    """Gathers per-person rows (arriving in any order) and writes each shard once it is complete."""

    def __init__(self, plans: Sequence[ShardPlan], shard_dirs: dict[str, Path], totals: dict[str, int],
                 log: Callable[[str], None]):
        self.plans = {p.key: p for p in plans}
        self.shard_dirs = shard_dirs
        self.totals = totals
        self.log = log
        self.parts: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
        self.received: dict[str, int] = defaultdict(int)
        self.written: list[str] = []
        self.started = time.perf_counter()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        keys = np.asarray(batch["shard_key"]).astype(str)
        for key in np.unique(keys):
            take = keys == key
            self.parts[key].append({name: np.asarray(values)[take] for name, values in batch.items()})
            self.received[key] += int(take.sum())
            plan = self.plans[key]
            if self.received[key] > plan.n_persons:
                raise RuntimeError(f"shard {key}: got {self.received[key]} person rows, expected {plan.n_persons}")
            if self.received[key] == plan.n_persons:
                self._write(plan)

    def _write(self, plan: ShardPlan) -> None:
        parts = self.parts.pop(plan.key)
        rows = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        elapsed = time.perf_counter() - self.started
        write_shard(self.shard_dirs[plan.split], plan, rows, elapsed)
        self.written.append(plan.key)
        unreadable = int((rows["status"].astype(str) == STATUS_UNREADABLE).sum())
        self.log(f"objects: {plan.split} shard {plan.index + 1}/{self.totals[plan.split]} done: "
                 f"{len(plan.frame)} images, {plan.n_persons} persons"
                 f"{f', {unreadable} persons on unreadable images' if unreadable else ''} "
                 f"({elapsed:.1f}s since start)")

    def missing(self) -> list[str]:
        return [key for key in self.plans if key not in self.written]


# --------------------------------------------------------------------------- execution

def batch_frames(plans: Sequence[ShardPlan], batch_size: int) -> list[pd.DataFrame]:
    """One frame per map_batches call: Ray Data hands whole small blocks to the actors in turn."""
    frames = []
    for plan in plans:
        for start in range(0, len(plan.frame), batch_size):
            frames.append(plan.frame.iloc[start:start + batch_size].reset_index(drop=True))
    return frames


def run_local(frames: Sequence[pd.DataFrame], worker_kwargs: dict[str, Any], sink: Callable[[dict], None]) -> None:
    worker = ObjectFeatureWorker(**worker_kwargs)
    for frame in frames:
        sink(worker({col: frame[col].to_numpy() for col in frame.columns}))


def run_ray(frames: Sequence[pd.DataFrame], worker_kwargs: dict[str, Any], cfg: ObjectsConfig,
            sink: Callable[[dict], None]) -> dict[str, Any]:
    import ray

    from stages.ray_utils import cluster_cpus, cluster_gpus

    gpus = cluster_gpus()
    if gpus:
        actors, resources = cfg.num_actors or gpus, {"num_gpus": 1}
        worker_kwargs = {**worker_kwargs, "device": "cuda"}
    else:
        # One thread per actor, one actor per CPU: the actors, not torch's thread pool, use the cores.
        actors, resources = cfg.num_actors or cluster_cpus(), {"num_cpus": 1}
        worker_kwargs = {**worker_kwargs, "device": "cpu", "torch_threads": 1}
    actors = max(1, min(actors, len(frames)))
    if worker_kwargs["state_dict"] is not None:
        worker_kwargs["state_dict"] = ray.put(worker_kwargs["state_dict"])
    dataset = ray.data.from_pandas(list(frames))
    dataset = dataset.map_batches(
        ObjectFeatureWorker,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        udf_modifying_row_count=True,
        **resources,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        sink(batch)
    return {"actors": actors, "gpus_per_actor": resources.get("num_gpus", 0)}


# --------------------------------------------------------------------------- assembly

def assemble_split(split: str, manifest: pd.DataFrame, plans: Sequence[ShardPlan], shard_dir: Path,
                   split_out: Path, top_n: int, meta_common: dict[str, Any]) -> dict[str, Any]:
    """Shards -> memory-mappable arrays in manifest order; meta.json last (it marks completeness)."""
    split_out.mkdir(parents=True, exist_ok=True)
    (split_out / "meta.json").unlink(missing_ok=True)
    n = len(manifest)
    row_of = {sid: i for i, sid in enumerate(manifest["sample_id"])}
    shapes = {"features": ((n, top_n, FEATURE_DIM), np.float16), "boxes": ((n, top_n, 4), np.float32),
              "scores": ((n, top_n), np.float32), "classes": ((n, top_n), np.int16), "counts": ((n,), np.int32)}
    arrays = {name: np.lib.format.open_memmap(split_out / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
              for name, (shape, dtype) in shapes.items()}
    status = np.full(n, "", dtype=object)
    reason = np.full(n, "", dtype=object)
    for plan in plans:
        with np.load(shard_paths(shard_dir, plan.index)[0], allow_pickle=False) as part:
            rows = np.array([row_of[s] for s in part["sample_id"]], dtype=np.int64)
            for name in ARRAY_NAMES:
                arrays[name][rows] = part[name]
            status[rows], reason[rows] = part["status"], part["reason"]
    missing = np.flatnonzero(status == "")
    if len(missing):
        raise RuntimeError(f"objects {split}: no result for {len(missing)} persons, e.g. "
                           f"{manifest['sample_id'].iloc[missing[0]]!r}")
    counts = np.array(arrays["counts"])
    for array in arrays.values():
        array.flush()
    del arrays

    pq.write_table(pa.table({
        "sample_id": pa.array(manifest["sample_id"].astype(str).tolist(), pa.string()),
        "row": pa.array(np.arange(n), pa.int64()),
        "image_path": pa.array(manifest["image_path"].astype(str).tolist(), pa.string()),
        "count": pa.array(counts, pa.int32()),
        "status": pa.array(status.astype(str).tolist(), pa.string()),
        "reason": pa.array(reason.astype(str).tolist(), pa.string()),
    }), split_out / "index.parquet")

    unreadable: dict[str, dict[str, Any]] = {}
    for i in np.flatnonzero(status == STATUS_UNREADABLE):
        image_path = str(manifest["image_path"].iloc[i])
        entry = unreadable.setdefault(image_path, {"image_path": image_path, "reason": str(reason[i]),
                                                   "sample_ids": []})
        entry["sample_ids"].append(str(manifest["sample_id"].iloc[i]))
    meta = {
        **meta_common,
        "split": split,
        "samples": n,
        "images": int(manifest["image_path"].nunique()),
        "arrays": {name: {"shape": list(shape), "dtype": np.dtype(dtype).name}
                   for name, (shape, dtype) in shapes.items()},
        "counts": {
            "objects": int(counts.sum()),
            "mean": float(counts.mean()) if n else 0.0,
            "persons_without_objects": int((counts == 0).sum()),
            "histogram": np.bincount(counts, minlength=top_n + 1).tolist(),
        },
        "status": {s: int((status == s).sum()) for s in (STATUS_OK, STATUS_UNREADABLE)},
        "unreadable": list(unreadable.values()),
    }
    tmp = split_out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(split_out / "meta.json")
    return meta


# --------------------------------------------------------------------------- run / main

def check_config(cfg: ObjectsConfig) -> None:
    if cfg.boxes not in ("dataset", "detector"):
        raise UserError(f"objects.boxes must be 'dataset' or 'detector', got {cfg.boxes!r}")
    if cfg.boxes == "detector" and cfg.detector not in SUPPORTED_DETECTORS:
        raise UserError(f"objects.detector {cfg.detector!r} is not supported; use one of {list(SUPPORTED_DETECTORS)}")
    if cfg.boxes == "dataset" and not cfg.boxes_file:
        raise UserError("objects.boxes: dataset needs objects.boxes_file (a CSV under data.root)")
    for name in ("top_n", "image_size", "batch_size", "shard_size"):
        if int(getattr(cfg, name)) < 1:
            raise UserError(f"objects.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_actors is not None and cfg.num_actors < 1:
        raise UserError(f"objects.num_actors must be >= 1 or null (auto), got {cfg.num_actors}")
    if not 0.0 < cfg.exclude_iou <= 1.0:
        raise UserError(f"objects.exclude_iou must be in (0, 1], got {cfg.exclude_iou}")


def run(params: Params, splits: Sequence[str] = SPLITS, out_dir: Path = OBJECTS_DIR,
        limit_shards: int | None = None, *, manifest_dir: Path = MANIFEST_DIR, shard_root: Path | None = None,
        engine: str = "ray", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compute (or resume) the object arrays of `splits`; returns a summary.

    `limit_shards` stops after computing that many shards (the rest stay for a later run; splits
    with missing shards are not assembled). `engine`: "ray" (Ray Data actor pool) or "local"
    (the same worker in this process). Shards live in `shard_root` (default: <out_dir>.shards).
    """
    started = time.perf_counter()
    cfg = params.objects
    check_config(cfg)
    if engine not in ("ray", "local"):
        raise UserError(f"engine must be 'ray' or 'local', got {engine!r}")
    out_dir = Path(out_dir)
    shard_root = Path(shard_root) if shard_root is not None else out_dir.with_name(out_dir.name + ".shards")
    data_root = Path(params.data.root)
    manifests = {split: read_split_manifest(split, manifest_dir) for split in splits}

    boxes = None
    if cfg.boxes == "dataset":
        sizes = {}
        for manifest in manifests.values():
            sizes.update(zip(manifest["image_path"],
                             zip(manifest["image_w"].astype(int), manifest["image_h"].astype(int))))
        boxes = load_dataset_boxes(data_root / cfg.boxes_file, sizes)
    classes = boxes.classes if boxes is not None else coco_categories()

    choice, state_dict = resolve_weights(cfg, params.seed)
    if state_dict is not None:
        build_model(cfg, choice, state_dict, params.seed)  # a mismatched file fails here, before any work
    fingerprint = settings_fingerprint(cfg, choice, data_root, classes)

    plans = {split: plan_split(split, manifests[split], boxes, cfg.shard_size, fingerprint) for split in splits}
    shard_dirs = {split: shard_root / split for split in splits}
    reused = {split: [p.index for p in plans[split] if shard_is_done(shard_dirs[split], p)] for split in splits}
    pending = [p for split in splits for p in plans[split] if p.index not in reused[split]]
    if limit_shards is not None:
        pending = pending[:max(0, limit_shards)]
    for split in splits:
        log(f"objects: {split}: {len(manifests[split])} persons on {sum(len(p.frame) for p in plans[split])} images, "
            f"{len(plans[split])} shards ({len(reused[split])} already done)")
    log(f"objects: weights {choice.source} ({choice.name}); boxes from {cfg.boxes}; top_n {cfg.top_n}")

    execution: dict[str, Any] = {"engine": engine}
    collector = ShardCollector(pending, shard_dirs, {s: len(plans[s]) for s in splits}, log)
    if pending:
        worker_kwargs = {"cfg": cfg, "choice": choice, "state_dict": state_dict,
                         "data_root": str(data_root.resolve()), "seed": params.seed}
        frames = batch_frames(pending, cfg.batch_size)
        if engine == "ray":
            from stages.ray_utils import ray_session

            with ray_session():
                execution.update(run_ray(frames, worker_kwargs, cfg, collector.add))
        else:
            run_local(frames, worker_kwargs, collector.add)
        if collector.missing():
            raise RuntimeError(f"objects: shards {collector.missing()[:5]} got fewer person rows than planned")
    compute_seconds = time.perf_counter() - started

    meta_common = {
        "top_n": cfg.top_n,
        "feature_dim": FEATURE_DIM,
        "boxes_source": cfg.boxes,
        "boxes_file": str(boxes.path) if boxes is not None else None,
        "detector": cfg.detector if cfg.boxes == "detector" else None,
        "weights": choice.as_dict(),
        "extractor": {
            "backbone": "resnet50", "c4": "conv1..layer3 (stride 16)", "res5": "layer4", "pool": "mean over 7x7",
            "roi_align": {"output_size": ROI_OUTPUT, "spatial_scale": 1.0 / C4_STRIDE,
                          "sampling_ratio": ROI_SAMPLING_RATIO, "aligned": True},
            "image_size": cfg.image_size, "resize": "shorter side, bilinear antialiased",
            "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, "version": FEATURE_VERSION,
        },
        "score_threshold": cfg.score_threshold,
        "exclude_iou": cfg.exclude_iou,
        "classes": classes,
        "fingerprint": fingerprint,
    }
    summary: dict[str, Any] = {"splits": {}, "weights": choice.as_dict(), "execution": execution,
                               "out_dir": str(out_dir), "shard_dir": str(shard_root)}
    computed = defaultdict(list)
    for key in collector.written:
        split, index = key.split("/")
        computed[split].append(int(index))
    for split in splits:
        done = [p for p in plans[split] if shard_is_done(shard_dirs[split], p)]
        entry = {"persons": len(manifests[split]), "shards": len(plans[split]), "computed": computed[split],
                 "reused": reused[split], "complete": len(done) == len(plans[split])}
        if entry["complete"]:
            meta = assemble_split(split, manifests[split], plans[split], shard_dirs[split], out_dir / split,
                                  cfg.top_n, meta_common)
            shutil.rmtree(shard_dirs[split], ignore_errors=True)
            entry.update(unreadable_images=len(meta["unreadable"]), mean_count=meta["counts"]["mean"],
                         objects=meta["counts"]["objects"])
            for item in meta["unreadable"][:20]:
                log(f"objects: {split}: unreadable image {item['image_path']}: {item['reason']} "
                    f"({len(item['sample_ids'])} persons get no objects)")
            if len(meta["unreadable"]) > 20:
                log(f"objects: {split}: ... and {len(meta['unreadable']) - 20} more unreadable images (see meta.json)")
        summary["splits"][split] = entry
    if boxes is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(boxes.rejected, schema=REJECTED_SCHEMA), out_dir / "rejected_boxes.parquet")
        summary["rejected_boxes"] = len(boxes.rejected)
        summary["clamped_boxes"] = boxes.clamped
        if boxes.rejected:
            reasons = pd.Series([r["reason"] for r in boxes.rejected]).value_counts().to_dict()
            log(f"objects: {len(boxes.rejected)} rows of {boxes.path} not used {reasons} "
                f"(listed in {out_dir / 'rejected_boxes.parquet'})")
    summary["compute_seconds"] = round(compute_seconds, 3)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.objects", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--manifest-dir", type=Path, default=MANIFEST_DIR)
    parser.add_argument("--out-dir", type=Path, default=OBJECTS_DIR)
    parser.add_argument("--engine", choices=("ray", "local"), default="ray")
    parser.add_argument("--limit-shards", type=int, default=None,
                        help="compute at most this many shards, then stop (a later run resumes)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        summary = run(params, args.splits, args.out_dir, args.limit_shards, manifest_dir=args.manifest_dir,
                      engine=args.engine)
    except (UserError, ConfigError) as exc:
        raise SystemExit(f"objects: {exc}") from None
    for split, entry in summary["splits"].items():
        if entry["complete"]:
            print(f"objects: {split}: {entry['persons']} persons, {entry['objects']} objects "
                  f"(mean {entry['mean_count']:.2f}/person), {entry['unreadable_images']} unreadable images, "
                  f"shards computed {len(entry['computed'])} reused {len(entry['reused'])} -> {args.out_dir / split}")
        else:
            print(f"objects: {split}: incomplete ({len(entry['computed']) + len(entry['reused'])}/{entry['shards']} "
                  f"shards); run again to resume")
    print(f"objects: done in {summary['seconds']:.1f}s")


if __name__ == "__main__":
    # Run from the importable module, not __main__: Ray pickles classes of __main__ by value
    # (dragging torch internals along), classes of stages.objects by reference.
    from stages.objects import main as importable_main

    importable_main()
