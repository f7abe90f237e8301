"""The objects stage: compute (or resume) every split's shards, then assemble its arrays.

    python -m stages.objects                       # all splits, Ray Data actor pool
    python -m stages.objects --splits val --engine local   # one split, plain in-process loop

`run` reads the manifests and the boxes file, resolves the weights, plans the shards, computes the
ones not already done (core/features/execution.py) and assembles each complete split
(core/features/assembly.py). The recipe, the weights order and resuming are explained in
core/features/__init__.py.

Writes data/objects/<split>/ (S persons in manifest order, N = top_n; padding rows are zero):
  features.npy [S,N,2048] float16   boxes.npy [S,N,4] float32 (original image pixels)
  scores.npy   [S,N] float32        classes.npy [S,N] int16 (-1 = padding)   counts.npy [S] int32
  index.parquet  sample_id, row, image_path, count, status (ok | unreadable_image), reason
  meta.json      top_n, weights used, extractor, class vocabulary, counts, unreadable images
and data/objects/rejected_boxes.parquet (dataset boxes only: rows of the boxes file not used, why).
"""
from __future__ import annotations

import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from core.data.manifest import SPLITS
from core.errors import UserError
from core.features.assembly import assemble_split
from core.features.execution import compute_shards, resolve_engine
from core.features.inputs import (
    DatasetBoxes,
    ShardPlan,
    load_dataset_boxes,
    plan_split,
    read_split_manifest,
    settings_fingerprint,
)
from core.features.roi_model import (
    FEATURE_DIM,
    build_model,
    coco_categories,
    describe_extractor,
)
from core.features.shards import shard_is_done
from core.features.weights import WeightsChoice, resolve_weights
from core.params import ObjectsConfig, Params
from core.progress import Progress
from core.workspace import DEFAULT_WORKSPACE

SUPPORTED_DETECTORS = ("fasterrcnn_resnet50_fpn",)
UNREADABLE_LOGGED = 20     # per split; meta.json lists them all

REJECTED_SCHEMA = pa.schema([
    ("line", pa.int64()),          # line in the CSV file, header = line 1
    ("image_path", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])


def check_config(cfg: ObjectsConfig) -> None:
    if cfg.boxes not in ("dataset", "detector"):
        raise UserError(f"objects.boxes must be 'dataset' or 'detector', got {cfg.boxes!r}")
    if cfg.boxes == "detector" and cfg.detector not in SUPPORTED_DETECTORS:
        raise UserError(f"objects.detector {cfg.detector!r} is not supported; use one of {list(SUPPORTED_DETECTORS)}")
    if cfg.boxes == "dataset" and not cfg.boxes_file:
        raise UserError("objects.boxes: dataset needs objects.boxes_file (a CSV under data.root)")
    for name in ("top_n", "image_size", "shard_size"):
        if int(getattr(cfg, name)) < 1:
            raise UserError(f"objects.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_actors is not None and cfg.num_actors < 1:
        raise UserError(f"objects.num_actors must be >= 1 or null (auto), got {cfg.num_actors}")
    if not 0.0 < cfg.exclude_iou <= 1.0:
        raise UserError(f"objects.exclude_iou must be in (0, 1], got {cfg.exclude_iou}")


@dataclass
class SplitWork:
    """One split's manifest, its shard plans, where they live and which are already done."""

    manifest: pd.DataFrame
    plans: list[ShardPlan]
    shard_dir: Path
    reused: list[int]


def read_boxes(cfg: ObjectsConfig, manifests: dict[str, pd.DataFrame], data_root: Path) -> DatasetBoxes | None:
    """The boxes file clamped to the images of the splits processed (None: the detector makes them)."""
    if cfg.boxes != "dataset":
        return None
    sizes = {}
    for manifest in manifests.values():
        sizes.update(zip(manifest["image_path"], zip(manifest["image_w"].astype(int), manifest["image_h"].astype(int))))
    return load_dataset_boxes(data_root / cfg.boxes_file, sizes)


def checked_weights(cfg: ObjectsConfig, seed: int) -> tuple[WeightsChoice, dict[str, torch.Tensor] | None]:
    choice, state_dict = resolve_weights(cfg, seed)
    if state_dict is not None:
        build_model(cfg, choice, state_dict, seed)  # a mismatched file fails here, before any work
    return choice, state_dict


def plan_work(manifests: dict[str, pd.DataFrame], boxes: DatasetBoxes | None, shard_size: int, fingerprint: str,
              shard_root: Path) -> dict[str, SplitWork]:
    work = {}
    for split, manifest in manifests.items():
        plans = plan_split(split, manifest, boxes, shard_size, fingerprint)
        shard_dir = shard_root / split
        work[split] = SplitWork(manifest, plans, shard_dir, [p.index for p in plans if shard_is_done(shard_dir, p)])
    return work


def pending_plans(work: dict[str, SplitWork], limit_shards: int | None) -> list[ShardPlan]:
    pending = [p for w in work.values() for p in w.plans if p.index not in w.reused]
    return pending if limit_shards is None else pending[:max(0, limit_shards)]


def common_meta(cfg: ObjectsConfig, boxes: DatasetBoxes | None, choice: WeightsChoice, classes: list[str],
                fingerprint: str) -> dict[str, Any]:
    """The meta.json fields every split shares."""
    return {
        "top_n": cfg.top_n,
        "feature_dim": FEATURE_DIM,
        "boxes_source": cfg.boxes,
        "boxes_file": str(boxes.path) if boxes is not None else None,
        "detector": cfg.detector if cfg.boxes == "detector" else None,
        "weights": choice.as_dict(),
        "extractor": describe_extractor(cfg),
        "score_threshold": cfg.score_threshold,
        "exclude_iou": cfg.exclude_iou,
        "classes": classes,
        "fingerprint": fingerprint,
    }


def finish_split(split: str, work: SplitWork, computed: list[int], split_out: Path, top_n: int,
                 meta_common: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Assemble the split if all its shards are done (then drop them); its summary entry either way."""
    done = [p for p in work.plans if shard_is_done(work.shard_dir, p)]
    entry = {"persons": len(work.manifest), "shards": len(work.plans), "computed": computed,
             "reused": work.reused, "complete": len(done) == len(work.plans)}
    if not entry["complete"]:
        return entry
    meta = assemble_split(split, work.manifest, work.plans, work.shard_dir, split_out, top_n, meta_common)
    shutil.rmtree(work.shard_dir, ignore_errors=True)
    entry.update(unreadable_images=len(meta["unreadable"]), mean_count=meta["counts"]["mean"],
                 objects=meta["counts"]["objects"])
    for item in meta["unreadable"][:UNREADABLE_LOGGED]:
        log(f"objects: {split}: unreadable image {item['image_path']}: {item['reason']} "
            f"({len(item['sample_ids'])} persons get no objects)")
    if len(meta["unreadable"]) > UNREADABLE_LOGGED:
        log(f"objects: {split}: ... and {len(meta['unreadable']) - UNREADABLE_LOGGED} more unreadable images "
            f"(see meta.json)")
    return entry


def write_rejected(boxes: DatasetBoxes, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """rejected_boxes.parquet: the rows of the boxes file not used, and why."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(boxes.rejected, schema=REJECTED_SCHEMA), out_dir / "rejected_boxes.parquet")
    if boxes.rejected:
        reasons = pd.Series([r["reason"] for r in boxes.rejected]).value_counts().to_dict()
        log(f"objects: {len(boxes.rejected)} rows of {boxes.path} not used {reasons} "
            f"(listed in {out_dir / 'rejected_boxes.parquet'})")
    return {"rejected_boxes": len(boxes.rejected), "clamped_boxes": boxes.clamped}


def shard_logger(totals: dict[str, int], started: float, log: Callable[[str], None]):
    """(a callback that logs each written shard, {split: shard indices written so far})."""
    computed: dict[str, list[int]] = defaultdict(list)

    def on_shard(summary: dict) -> None:
        split, index = str(summary["split"]), int(summary["index"])
        computed[split].append(index)
        unreadable = int(summary["unreadable"])
        log(f"objects: {split} shard {index + 1}/{totals[split]} done: {summary['images']} images, "
            f"{summary['persons']} persons{f', {unreadable} persons on unreadable images' if unreadable else ''} "
            f"({time.perf_counter() - started:.1f}s since start)")

    return on_shard, computed


def run(params: Params, splits: Sequence[str] = SPLITS, out_dir: Path = DEFAULT_WORKSPACE.objects_dir,
        limit_shards: int | None = None, *, manifest_dir: Path = DEFAULT_WORKSPACE.manifest_dir, shard_root: Path | None = None,
        engine: str = "auto", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compute (or resume) the object arrays of `splits`; returns a summary.

    `limit_shards` stops after computing that many shards (the rest stay for a later run; splits
    with missing shards are not assembled). `engine`: "ray" (Ray Data actor pool), "local"
    (the same worker in this process) or "auto" (`objects.engine`; core/features/execution.py
    choose_engine decides by the resources). Shards live in `shard_root` (default: <out_dir>.shards).
    """
    started = time.perf_counter()
    cfg = params.objects
    check_config(cfg)
    if engine not in ("auto", "ray", "local"):
        raise UserError(f"engine must be 'auto', 'ray' or 'local', got {engine!r}")
    out_dir = Path(out_dir)
    shard_root = Path(shard_root) if shard_root is not None else out_dir.with_name(out_dir.name + ".shards")
    data_root = Path(params.data.root)
    manifests = {split: read_split_manifest(split, manifest_dir) for split in splits}
    boxes = read_boxes(cfg, manifests, data_root)
    classes = boxes.classes if boxes is not None else coco_categories()
    choice, state_dict = checked_weights(cfg, params.seed)
    fingerprint = settings_fingerprint(cfg, choice, data_root, classes)

    work = plan_work(manifests, boxes, cfg.shard_size, fingerprint, shard_root)
    pending = pending_plans(work, limit_shards)
    for split, w in work.items():
        log(f"objects: {split}: {len(w.manifest)} persons on {sum(len(p.frame) for p in w.plans)} images, "
            f"{len(w.plans)} shards ({len(w.reused)} already done)")
    log(f"objects: weights {choice.source} ({choice.name}); boxes from {cfg.boxes}; top_n {cfg.top_n}")

    worker_kwargs = {"cfg": cfg, "choice": choice, "state_dict": state_dict,
                     "data_root": str(data_root.resolve()), "seed": params.seed}
    if pending:
        engine, why = resolve_engine(cfg, engine, sum(len(plan.frame) for plan in pending))
        log(f"objects: engine {engine} ({why})")
    with Progress(sum(p.n_persons for p in pending), "objects: features", unit="persons") as progress:
        logged, computed = shard_logger({s: len(w.plans) for s, w in work.items()}, time.perf_counter(),
                                        progress.around(log))

        def on_shard(summary: dict) -> None:
            logged(summary)
            if engine == "ray":  # in-process, persons are counted as they are done
                progress.update(int(summary["persons"]))

        execution = compute_shards(pending, worker_kwargs, shard_root, cfg, engine, on_shard, progress.update)
    missing = sorted({p.key for p in pending} - {f"{s}/{i:05d}" for s, done in computed.items() for i in done})
    if missing:
        raise RuntimeError(f"objects: shards {missing[:5]} were not written")
    compute_seconds = time.perf_counter() - started

    meta_common = common_meta(cfg, boxes, choice, classes, fingerprint)
    summary: dict[str, Any] = {"splits": {}, "weights": choice.as_dict(), "execution": execution,
                               "out_dir": str(out_dir), "shard_dir": str(shard_root)}
    for split, w in work.items():
        summary["splits"][split] = finish_split(split, w, sorted(computed[split]), out_dir / split, cfg.top_n, meta_common, log)
    if boxes is not None:
        summary.update(write_rejected(boxes, out_dir, log))
    summary["compute_seconds"] = round(compute_seconds, 3)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
