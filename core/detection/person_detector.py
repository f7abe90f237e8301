"""Person boxes for the detection-aware evaluation (issue #15): the logic of the DVC stage `people`.

    python -m stages.people                  # reads data/manifest/{train,val,test}.parquet, params.yaml

Every model but BENet needs a person box; evaluating them on annotated boxes hides what a real
detector would miss. This stage trains a torchvision Faster R-CNN (params `people.detector`) on the
train split's annotated person boxes, detects people in every val and test image, and scores the
detector with COCO AP (core/evaluation/detection_protocol.py `person_detector_ap`) next to random
boxes, so a broken detector cannot pass for a working one.

Starting weights (`people.weights`), never downloaded (a silent download would change which model
runs, and the pipeline must run offline):
  a local file   a torch state_dict: COCO's 91 classes (torchvision or its reference scripts), or a
                 2-class detector such as data/people/detector.pt (to fine-tune further);
  null           the torchvision COCO enum when its file is already in the torch hub cache
                 (core/detection/coco_weights.py), else a seeded random init
                 (the offline demo; `weights_backbone` is always None: no ImageNet download).
COCO weights are cut to two classes: the box predictor keeps COCO's background and person rows
(class 1), so the detector starts out as COCO's person detector and is fine-tuned, not relearned.
Pretrained BatchNorm statistics stay frozen while training (as in torchvision's pretrained detectors:
batches of a few images cannot estimate them); from random weights BatchNorm trains.

Writes data/people/<split>.parquet (PEOPLE_SCHEMA: one row per image of the split's manifest, even
with no detection; boxes [x1,y1,x2,y2] in original pixels, clipped to the frame, best score first),
data/people/detector.pt (state_dict + detector name + starting weights + config; `load_trained_detector`),
its metadata alone in detector.json (`read_people_detector`) and reports/people.json (per split: COCO
stats of the detector and of random boxes, seconds, images/s).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.data.images import ImageReadError, load_rgb
from core.data.manifest import read_manifest, write_table
from core.errors import UserError
from core.evaluation.detection_protocol import person_detector_ap
from core.params import PeopleConfig
from core.workspace import DEFAULT_WORKSPACE
from models.config import from_dict, to_dict

PERSON_DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")
COCO_CLASSES, COCO_PERSON = 91, 1  # torchvision's COCO numbering: 0 background, 1 person
PERSON_LABEL = 1  # in the 2-class detector trained here
DETECT_SPLITS = ("val", "test")
STATUS_OK, STATUS_UNREADABLE = "ok", "unreadable_image"
DETECTOR_FILE = "detector.pt"
DETECTOR_META = "detector.json"  # the same metadata without the weights: cheap to read for a report
WARMUP_FRACTION = 0.1  # of all training steps: from random weights the first AdamW steps must be small

PEOPLE_SCHEMA = pa.schema([
    ("image_path", pa.string()),          # exactly as in the manifest (relative to data.root)
    ("image_w", pa.int32()),
    ("image_h", pa.int32()),
    ("boxes", pa.list_(pa.list_(pa.float32()))),   # [D][4] x1, y1, x2, y2 pixels, best score first
    ("scores", pa.list_(pa.float32())),            # [D]
    ("status", pa.string()),              # ok | unreadable_image (then no boxes)
    ("detail", pa.string()),              # the decode error of an unreadable image
])


# ----------------------------------------------------------------------------- the detector
def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise UserError(f"people.weights: cannot read {path} as a torch state_dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):  # detector.pt / torchvision reference-script checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"people.weights: {path} holds no state_dict (a mapping of parameter names to tensors)")
    return obj


def _file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def starting_weights(cfg: PeopleConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(a description for the report and detector.pt, the state_dict or None for a random init)."""
    from core.detection import coco_weights

    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise UserError(f"people.weights: file not found: {path.resolve()} (a local state_dict of "
                            f"{cfg.detector}, or null for the cached COCO enum / random weights)")
        return {"source": "file", "name": str(path), "sha256": _file_sha256(path)}, _read_state_dict(path)
    enum = coco_weights.cached_enum_weights(cfg.detector)  # never downloads; UserError for an unknown detector
    if enum is not None:
        return ({"source": "torchvision", "name": f"{type(enum).__name__}.{enum.name}"},
                enum.get_state_dict(progress=False))  # the file is in the cache: read, not fetched
    return {"source": "random", "name": "random"}, None


def _person_rows(state: dict[str, Any], source: str) -> dict[str, Any]:
    """`state` with a COCO box predictor cut to (background, person); a 2-class one as it is."""
    classes = state.get("roi_heads.box_predictor.cls_score.weight")
    if classes is None:
        raise UserError(f"people.weights: {source} has no roi_heads.box_predictor (not a torchvision Faster R-CNN)")
    if classes.shape[0] == 2:
        return state
    if classes.shape[0] != COCO_CLASSES:
        raise UserError(f"people.weights: {source} predicts {classes.shape[0]} classes; expected COCO's "
                        f"{COCO_CLASSES} or 2 (background, person)")
    out = dict(state)
    keep = [0, COCO_PERSON]
    for name in ("cls_score.weight", "cls_score.bias"):
        out[f"roi_heads.box_predictor.{name}"] = state[f"roi_heads.box_predictor.{name}"][keep]
    box_rows = [4 * c + k for c in keep for k in range(4)]  # 4 regression rows per class
    for name in ("bbox_pred.weight", "bbox_pred.bias"):
        out[f"roi_heads.box_predictor.{name}"] = state[f"roi_heads.box_predictor.{name}"][box_rows]
    return out


def _new_detector(cfg: PeopleConfig):
    from torchvision.models import get_model

    try:
        return get_model(cfg.detector, weights=None, weights_backbone=None, num_classes=2,
                         min_size=cfg.min_size, max_size=cfg.max_size,
                         box_score_thresh=cfg.score_threshold, box_detections_per_img=cfg.max_detections,
                         rpn_pre_nms_top_n_train=2 * cfg.rpn_proposals, rpn_post_nms_top_n_train=cfg.rpn_proposals,
                         box_batch_size_per_image=cfg.rois_per_image)
    except ValueError:
        raise UserError(f"people.detector {cfg.detector!r} is not a torchvision detector") from None


def build_detector(cfg: PeopleConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """(2-class Faster R-CNN from the starting weights, their description). Seeded: the random
    init and the predictor layers are the same on every run."""
    import torch

    if cfg.detector not in PERSON_DETECTORS:
        raise UserError(f"people.detector {cfg.detector!r} is unknown; expected one of {list(PERSON_DETECTORS)}")
    described, state = starting_weights(cfg)
    torch.manual_seed(seed)
    model = _new_detector(cfg)
    described["frozen_batchnorm"] = state is not None
    if state is None:
        return model, described
    state = _person_rows(state, described["name"])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another architecture
        raise UserError(f"people.weights: {described['name']} is not a {cfg.detector} state_dict: "
                        f"{str(exc).splitlines()[0]}") from None
    # torchvision's pretrained detectors use FrozenBatchNorm2d (no num_batches_tracked buffer)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"people.weights: {described['name']} is not a {cfg.detector} state_dict: "
                        f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model, described


def _freeze_batchnorm(model) -> None:
    """BatchNorm layers in eval mode with fixed affine parameters (call after `model.train()`)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def load_trained_detector(path: str | Path):
    """(model in eval mode, the metadata saved with it) from a detector.pt this stage wrote."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"trained person detector not found: {path} (run `dvc repro people`)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(PeopleConfig, saved["config"])
    model = _new_detector(cfg)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), {k: v for k, v in saved.items() if k != "state_dict"}


@contextlib.contextmanager
def _torch_threads():
    """Intra-op threads = the CPUs this process may use (OMP_NUM_THREADS wins): torch's default
    counts the machine's cores, which oversubscribes a container or a shared node."""
    import torch

    before = torch.get_num_threads()
    wanted = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(max(1, wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- data
def images_of(manifest) -> list[dict[str, Any]]:
    """One entry per image of a manifest, in first-appearance order: its path, size and every
    annotated person box ([P,4] float64)."""
    images: dict[str, dict[str, Any]] = {}
    for path, width, height, box in zip(manifest["image_path"].astype(str), manifest["image_w"],
                                        manifest["image_h"], manifest["person_box"]):
        entry = images.setdefault(path, {"image_path": path, "image_w": int(width), "image_h": int(height),
                                          "boxes": []})
        entry["boxes"].append([float(v) for v in box])
    for entry in images.values():
        entry["boxes"] = np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4)
    return list(images.values())


def _image_tensor(data_root: Path, image_path: str):
    """(C,H,W float tensor in [0,1], None) or (None, error naming the file relative to data.root)."""
    import torch

    full = Path(data_root) / image_path
    try:
        rgb = load_rgb(full)
    except ImageReadError as exc:
        return None, str(exc).replace(str(full), image_path)  # the same message wherever data.root lives
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0), None


def _training_target(entry: dict[str, Any], width: int, height: int, flip: bool) -> dict[str, Any]:
    """Annotated boxes clipped to the decoded frame; boxes under a pixel wide or high are dropped
    (torchvision refuses empty boxes in training). `flip` mirrors them with the image."""
    import torch

    boxes = np.clip(entry["boxes"], 0, [width, height, width, height])
    boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
    if flip:
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    return {"boxes": torch.as_tensor(boxes.reshape(-1, 4), dtype=torch.float32),
            "labels": torch.full((len(boxes),), PERSON_LABEL, dtype=torch.int64)}


# ----------------------------------------------------------------------------- training
def _schedule(total_steps: int) -> Callable[[int], float]:
    """lr factor: linear warm-up over WARMUP_FRACTION of the steps, cosine decay to 0 after."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def _train_batch(model, optimizer, scheduler, batch: list[dict[str, Any]], data_root: Path, flips,
                 unreadable: dict[str, str]) -> float | None:
    """One optimiser step on the readable images of `batch`; their summed loss (None: none readable)."""
    import torch

    images, targets = [], []
    for entry, flip in zip(batch, flips):
        tensor, error = _image_tensor(data_root, entry["image_path"])
        if tensor is None:
            unreadable[entry["image_path"]] = error
            continue
        if flip:
            tensor = tensor.flip(-1)
        images.append(tensor)
        targets.append(_training_target(entry, tensor.shape[2], tensor.shape[1], flip))
    if not images:
        return None
    loss = sum(model(images, targets).values())
    if not torch.isfinite(loss):
        raise UserError(f"people: the detector's training loss became {loss.item()} (diverged); lower people.lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.item())


def train_detector(model, cfg: PeopleConfig, train_images: list[dict[str, Any]], data_root: Path, seed: int,
                   frozen_batchnorm: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `model` in place on the train images' person boxes (AdamW, seeded order and flips)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    model.train()
    if frozen_batchnorm:
        _freeze_batchnorm(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_images) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.epochs * steps_per_epoch))
    unreadable: dict[str, str] = {}
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_images), generator=generator).tolist()
        flips = (torch.rand(len(order), generator=generator) < 0.5).tolist() if cfg.hflip else [False] * len(order)
        epoch_losses = []
        for start in range(0, len(order), cfg.batch_size):
            picked = [(train_images[i], flip) for i, flip in zip(order[start:start + cfg.batch_size],
                                                                   flips[start:start + cfg.batch_size])
                      if train_images[i]["image_path"] not in unreadable]
            loss = _train_batch(model, optimizer, scheduler, [entry for entry, _ in picked], data_root,
                                [flip for _, flip in picked], unreadable)
            if loss is not None:
                epoch_losses.append(loss)
        if not epoch_losses:
            raise UserError(f"people: no readable training image under {data_root} (first error: "
                            f"{next(iter(unreadable.values()), 'none')})")
        losses.append(float(np.mean(epoch_losses)))
        log(f"people: epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f} "
            f"({time.perf_counter() - started:.0f} s)")
    seconds = time.perf_counter() - started
    used = len(train_images) - len(unreadable)
    return {"images": used, "persons": int(sum(len(e["boxes"]) for e in train_images if e["image_path"] not in unreadable)),
            "epochs": cfg.epochs, "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
            "seconds": round(seconds, 2), "images_per_second": round(used * cfg.epochs / max(seconds, 1e-9), 2),
            "unreadable_images": sorted(f"{p}: {e}" for p, e in unreadable.items())}


# ----------------------------------------------------------------------------- detection
def _clean(boxes: np.ndarray, scores: np.ndarray, width: int, height: int,
           max_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the frame, empty ones dropped, best score first, at most `max_detections`."""
    boxes = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0, [width, height, width, height])
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[valid], scores[valid]
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return boxes[order].astype(np.float32), scores[order].astype(np.float32)


def detect_images(model, images: list[dict[str, Any]], data_root: Path, cfg: PeopleConfig) -> list[dict[str, Any]]:
    """One PEOPLE_SCHEMA row per entry of `images` (from `images_of`), in the same order; an
    unreadable image gets a row with no boxes, status unreadable_image and the error."""
    import torch

    model.eval()
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), cfg.detect_batch_size):
        batch = images[start:start + cfg.detect_batch_size]
        decoded = [_image_tensor(data_root, entry["image_path"]) for entry in batch]
        readable = [tensor for tensor, _ in decoded if tensor is not None]
        with torch.inference_mode():
            outputs = iter(model(readable) if readable else [])
        for entry, (tensor, error) in zip(batch, decoded):
            row = {"image_path": entry["image_path"], "image_w": entry["image_w"], "image_h": entry["image_h"],
                   "boxes": [], "scores": [], "status": STATUS_UNREADABLE, "detail": error}
            if tensor is not None:
                found = next(outputs)
                person = found["labels"] == PERSON_LABEL
                boxes, scores = _clean(found["boxes"][person].numpy(), found["scores"][person].numpy(),
                                       entry["image_w"], entry["image_h"], cfg.max_detections)
                row.update(boxes=boxes.tolist(), scores=scores.tolist(), status=STATUS_OK, detail=None)
            rows.append(row)
    return rows


def random_boxes(frames: Sequence[tuple[int, int]], counts: Sequence[int],
                 seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The chance baseline: for image i, counts[i] boxes inside frames[i] = (width, height), each
    corner pair two sorted uniform draws per axis (uniform positions and sizes), uniform scores."""
    rng = np.random.default_rng(seed)
    boxes, scores = [], []
    for (width, height), count in zip(frames, counts):
        xs = np.sort(rng.uniform(0, width, (count, 2)), axis=1)
        ys = np.sort(rng.uniform(0, height, (count, 2)), axis=1)
        # a zero-width draw has probability 0, but COCOeval's input check refuses one
        xs[:, 1] = np.maximum(xs[:, 1], np.nextafter(xs[:, 0], np.inf))
        ys[:, 1] = np.maximum(ys[:, 1], np.nextafter(ys[:, 0], np.inf))
        boxes.append(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1))
        scores.append(rng.uniform(0, 1, count))
    return boxes, scores


def coco_stats(gt_boxes: Sequence[np.ndarray], boxes: Sequence[Any], scores: Sequence[Any]) -> dict[str, Any]:
    """`person_detector_ap` without its printed log (the report is DVC metrics: numbers only)."""
    try:
        stats = person_detector_ap(gt_boxes, boxes, scores)
    except ValueError as exc:
        raise UserError(f"people: cannot score the detections: {exc}") from None
    stats.pop("log")
    return stats


def score_split(images: list[dict[str, Any]], rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """COCO stats of the detections in `rows` and of as many random boxes per image."""
    gt = [entry["boxes"] for entry in images]
    boxes = [np.asarray(row["boxes"], dtype=np.float64).reshape(-1, 4) for row in rows]
    scores = [np.asarray(row["scores"], dtype=np.float64) for row in rows]
    chance_boxes, chance_scores = random_boxes([(e["image_w"], e["image_h"]) for e in images],
                                               [len(b) for b in boxes], seed)
    return {"detector": coco_stats(gt, boxes, scores), "random": coco_stats(gt, chance_boxes, chance_scores)}


# ----------------------------------------------------------------------------- the stage
def _save_detector(model, cfg: PeopleConfig, weights: dict[str, Any], out_dir: Path) -> None:
    import torch

    meta = {"detector": cfg.detector, "num_classes": 2, "person_label": PERSON_LABEL,
            "starting_weights": weights, "config": to_dict(cfg)}
    path = out_dir / DETECTOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), **meta}, tmp)
    tmp.replace(path)
    _write_json(meta, out_dir / DETECTOR_META)


def _write_json(data: dict[str, Any], path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _manifests(manifest_dir: Path, splits: Sequence[str]) -> dict[str, Any]:
    manifests = {}
    for split in splits:
        path = Path(manifest_dir) / f"{split}.parquet"
        if not path.is_file():
            raise UserError(f"manifest not found: {path} (run the ingest stage first)")
        manifests[split] = read_manifest(split, manifest_dir)
    if len(manifests.get("train", [])) == 0:
        raise UserError(f"the train manifest in {manifest_dir} holds no person: nothing to train the detector on")
    return manifests


def run(cfg: PeopleConfig, seed: int, data_root: Path, manifest_dir: Path = DEFAULT_WORKSPACE.manifest_dir,
        out_dir: Path = DEFAULT_WORKSPACE.people_dir, report_path: Path = DEFAULT_WORKSPACE.people_report,
        splits: Sequence[str] = DETECT_SPLITS, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the detector on train, detect on `splits`, write data/people and reports/people.json.

    The random boxes of split i of `splits` are drawn with seed `seed + 1 + i`. Returns the report
    plus `unreadable` (split -> ["path: error", ...]) for the stage to print."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    if not data_root.is_dir():
        raise UserError(f"dataset root not found: {data_root} (params data.root)")
    manifests = _manifests(Path(manifest_dir), ["train", *splits])
    report: dict[str, Any] = {"detector": cfg.detector}
    unreadable: dict[str, list[str]] = {}
    with _torch_threads():
        model, weights = build_detector(cfg, seed)
        report["starting_weights"] = weights
        log(f"people: training {cfg.detector} from {weights['name']} weights on "
            f"{manifests['train']['image_path'].nunique()} train images")
        training = train_detector(model, cfg, images_of(manifests["train"]), data_root, seed,
                                  weights["frozen_batchnorm"], log)
        unreadable["train"] = training.pop("unreadable_images")
        report["train"] = {**training, "unreadable_images": len(unreadable["train"])}
        _save_detector(model, cfg, weights, out_dir)
        for index, split in enumerate(splits):
            images = images_of(manifests[split])
            started = time.perf_counter()
            rows = detect_images(model, images, data_root, cfg)
            seconds = time.perf_counter() - started
            write_table(pa.Table.from_pylist(rows, schema=PEOPLE_SCHEMA), out_dir / f"{split}.parquet")
            unreadable[split] = [f"{r['image_path']}: {r['detail']}" for r in rows if r["status"] == STATUS_UNREADABLE]
            report[split] = {**score_split(images, rows, seed + 1 + index), "seconds": round(seconds, 2),
                             "images_per_second": round(len(rows) / max(seconds, 1e-9), 2),
                             "unreadable_images": len(unreadable[split])}
    _write_json(report, Path(report_path))
    return {**report, "unreadable": unreadable}


def read_people(people_dir: str | Path, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """image_path (as in the manifest) -> (boxes [D,4] float64 x1,y1,x2,y2 pixels, scores [D] float64),
    best score first; every image of the split is a key, also those with no detection."""
    path = Path(people_dir) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"detected people not found: {path} (run `dvc repro people`)")
    table = pq.read_table(path, columns=["image_path", "boxes", "scores"]).to_pydict()
    return {image_path: (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64))
            for image_path, boxes, scores in zip(table["image_path"], table["boxes"], table["scores"])}


def read_people_detector(people_dir: str | Path) -> str:
    """Which detector found the people in `people_dir`, in words, for reports (from detector.json)."""
    import json

    path = Path(people_dir) / DETECTOR_META
    if not path.is_file():
        raise UserError(f"person detector metadata not found: {path} (run `dvc repro people`)")
    meta = json.loads(path.read_text())
    return f"{meta['detector']} (trained on the train split from {meta['starting_weights']['name']} weights)"
