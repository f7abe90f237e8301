"""Ingest: raw data set -> the manifest contract (see ../shared/DESIGN.md, core/data/manifest.py).

Run from the repository root (reads params.yaml `seed` and `data:`):

    python -m stages.ingest [--params params.yaml] [--out data] [--metrics reports/ingest.json]

Writes
  data/manifest/{train,val,test}.parquet   one row per valid target person
  data/manifest/quarantine.parquet         every rejected row, with reason and source_ref
  data/manifest/summary.json               counts per split, quarantine per reason, label
                                           frequencies, boxes clamped, size mismatches,
                                           persons in more than one split
  data/manifest/caers_val_split.json       CAER-S only: the carved val sample_ids and seed
  data/labels.json                         {"dataset": kind, "classes": [...]}
  reports/ingest.json                      (main only) the counts as DVC metrics, and the
                                           list of persons in more than one split

What happens to each candidate person the readers (core/data/readers) produce, in
this order; the first failing check names its quarantine reason:
  1. conflicting_labels: same split, same image and same box as another row, with other
     labels. Every row of such a person is quarantined and none is kept: nothing tells
     which annotation is right, keeping the first would make the manifest depend on row
     order, and keeping both would train (or score) one input against contradicting targets.
  2. duplicate_row: same image, same box and same labels as an earlier row (train, val,
     test order; the first one is kept).
  3. symlink_outside_root: the image path passes through a symlink that resolves outside
     `data.root` (detail "symlink outside the data root: <target>"); such a file is not
     opened. Symlinks that stay inside the root are followed. The data set is what lies
     under its root: the manifest's paths are relative to it and DVC tracks it as the
     stage's input, so a file elsewhere could change without either noticing.
  4. missing_image / unreadable_image / truncated_image: every distinct image is opened
     once (a thread pool) and, with `data.verify_images`, fully decoded; JPEGs decode in
     draft (DCT-scaled) mode, which still reads and entropy-decodes the whole stream, so a
     cut file is caught. Without verify_images only the header is read (missing and
     non-image files are still caught, truncation is not).
  5. box_outside_image: the box is clamped to the decoded image; empty after clamping is
     rejected. Clamped boxes are counted in summary.json (`boxes_clamped`).
Image size: the decoded image wins. When the annotations claim another size the row is
kept (the size in the manifest is the real one, boxes are clamped to it) and counted in
summary.json (`image_size_mismatch`), because real EMOTIC has images whose stored size is
transposed; quarantining them would lose good persons.
Same person (image and annotated box) in two splits with different labels: kept in both
and reported, not quarantined: EMOTIC's train/val/test are fixed by the data set and
published results are measured on them, so ingest must not move or drop a person between
them. `cross_split_persons` (summary.json and reports/ingest.json) holds the count per
pair of splits and the list (image_path, box, splits, sample_ids); the stage prints a
warning. (Copies with the same labels are duplicate_row above.)
CAER-S without a val folder: a val split is carved from the valid train rows, per class,
round(n * data.val_fraction) of each class (at least one row per class stays in train),
chosen by a generator seeded with (seed, class index); those rows get split "val".
Stops with one line (UserError, exit 2) and writes nothing: zero valid rows, a wrong path
or setting, or an empty train, val or test split (training and evaluation cannot run on
one); the line names the split and why it is empty (not in the input, all its rows
quarantined, or too few CAER-S images for data.val_fraction to carve one) and what fixes it.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from core.data.labels import class_names
from core.data.manifest import SPLITS, Quarantine, manifest_table, write_table
from core.data.readers import Candidate, ReadResult, read_dataset
from core.data.readers.common import (
    SPLIT_WORD,
    Box,
    outside_root,
    symlink_outside_detail,
)
from core.errors import UserError
from core.params import DataConfig
from core.progress import Progress
from core.workspace import DEFAULT_WORKSPACE

MANIFEST_SUBDIR = "manifest"
SUMMARY_NAME = "summary.json"
CAERS_VAL_SPLIT_NAME = "caers_val_split.json"


@dataclass(frozen=True)
class ImageCheck:
    """What opening one image file found: its real size, or why it is unusable."""

    size: tuple[int, int] | None
    reason: str | None = None
    detail: str = ""


def check_image(path: Path, decode: bool, root_real: Path | None = None) -> ImageCheck:
    """`root_real`: the resolved data root; an image whose symlink leads out of it is not opened."""
    if root_real is not None:
        target = outside_root(path, root_real)
        if target is not None:
            return ImageCheck(None, "symlink_outside_root", symlink_outside_detail(target))
    if not path.exists():
        if path.is_symlink():
            return ImageCheck(None, "missing_image", f"{path} is a symlink to {os.readlink(path)}, which does not exist")
        return ImageCheck(None, "missing_image", f"no file at {path}")
    try:
        img = Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # incl. UnidentifiedImageError
        return ImageCheck(None, "unreadable_image", f"{type(exc).__name__}: {exc}")
    with img:
        size = (int(img.size[0]), int(img.size[1]))
        if size[0] <= 0 or size[1] <= 0:
            return ImageCheck(None, "unreadable_image", f"image has size {size}")
        if decode:
            try:
                if img.format == "JPEG":
                    img.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
                img.load()
            except OSError as exc:
                reason = "truncated_image" if "truncat" in str(exc).lower() else "unreadable_image"
                return ImageCheck(None, reason, f"{type(exc).__name__}: {exc}")
            except (SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as exc:
                return ImageCheck(None, "unreadable_image", f"{type(exc).__name__}: {exc}")
    return ImageCheck(size)


def check_images(root: Path, image_paths: list[str], decode: bool) -> dict[str, ImageCheck]:
    """Open each distinct image once; PIL releases the GIL while decoding, so threads help."""
    if decode and ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on by some import in this "
                           "process; ingest could not tell truncated images from good ones")
    unique = sorted(set(image_paths))
    workers = max(1, min(8, os.cpu_count() or 1))
    root_real = Path(root).resolve()
    checks = []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            Progress(len(unique), "ingest: checking images", unit="images") as progress:
        for check in pool.map(lambda rel: check_image(root / rel, decode, root_real), unique):
            checks.append(check)
            progress.update()
    return dict(zip(unique, checks))


def _quarantine_candidate(q: Quarantine, c: Candidate, reason: str, detail: str) -> None:
    q.add(reason, c.source_ref, detail, image_path=c.image_path, split=c.split, raw=c.raw)


def drop_conflicting_labels(candidates: list[Candidate], q: Quarantine, classes: list[str]) -> list[Candidate]:
    """Quarantine every row of a person (same split, image and box) annotated with different
    labels. None is kept: nothing tells which annotation is right, keeping the first would make
    the manifest depend on row order, and keeping all would give one input contradicting targets."""
    groups: dict[tuple, list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[(c.split, c.image_path, c.box)].append(c)
    conflicting: set[int] = set()
    for members in groups.values():
        if len({m.labels for m in members}) < 2:
            continue
        for m in members:
            others = ", ".join(f"{[classes[i] for i in o.labels]} at {o.source_ref}" for o in members if o is not m)
            _quarantine_candidate(q, m, "conflicting_labels", "same image and box with different labels: "
                                  f"{[classes[i] for i in m.labels]} here, {others}; none of them is kept")
        conflicting.update(id(m) for m in members)
    return [c for c in candidates if id(c) not in conflicting]


def cross_split_persons(rows: list[dict[str, Any]], boxes: dict[str, Box | None]) -> dict[str, Any]:
    """Persons (same image, same annotated box `boxes[sample_id]`) kept in more than one split.
    Copies with the same labels were already quarantined as duplicate_row, so these differ in
    their labels."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["image_path"], boxes[r["sample_id"]])].append(r)
    persons = []
    for (image_path, box), members in groups.items():
        splits = sorted({m["split"] for m in members}, key=SPLITS.index)
        if len(splits) > 1 and len({tuple(m["labels"]) for m in members}) > 1:
            persons.append({"image_path": image_path, "box": None if box is None else list(box), "splits": splits,
                            "sample_ids": [m["sample_id"] for m in members]})
    by_splits = Counter("+".join(p["splits"]) for p in persons)
    return {"total": len(persons), "by_splits": dict(sorted(by_splits.items())), "persons": persons}


def drop_duplicates(candidates: list[Candidate], q: Quarantine) -> list[Candidate]:
    first: dict[tuple, str] = {}
    kept = []
    for c in candidates:
        key = (c.image_path, c.box, c.labels)
        if key in first:
            _quarantine_candidate(q, c, "duplicate_row",
                                  f"same image, box and labels as {first[key]} (kept)")
            continue
        first[key] = c.sample_id
        kept.append(c)
    return kept


def clamp_box(box: tuple[float, float, float, float], size: tuple[int, int]):
    w, h = size
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


ROW_NOTES = ("boxes_clamped", "image_size_mismatch", "whole_frame_boxes")


def to_manifest_rows(candidates: list[Candidate], checks: dict[str, ImageCheck], kind: str,
                     q: Quarantine, notes: dict[str, set[str]]) -> list[dict[str, Any]]:
    """Manifest rows of the candidates whose image and box pass; `notes[sample_id]` gets
    the ROW_NOTES that apply (counted per split once the val carve is done)."""
    rows = []
    for c in candidates:
        check = checks[c.image_path]
        if check.reason is not None:
            _quarantine_candidate(q, c, check.reason, check.detail)
            continue
        size = check.size
        note = notes[c.sample_id]
        if c.annotated_size is not None and c.annotated_size != size:
            note.add("image_size_mismatch")
        if c.box is None:
            box = (0.0, 0.0, float(size[0]), float(size[1]))
            note.add("whole_frame_boxes")
        else:
            box = clamp_box(c.box, size)
            if box[2] <= box[0] or box[3] <= box[1]:
                _quarantine_candidate(q, c, "box_outside_image",
                                      f"box {list(c.box)} has no area inside the {size[0]}x{size[1]} image")
                continue
            if box != c.box:
                note.add("boxes_clamped")
        rows.append({
            "sample_id": c.sample_id, "image_path": c.image_path,
            "image_w": size[0], "image_h": size[1], "person_box": list(box),
            "labels": list(c.labels), "vad": None if c.vad is None else list(c.vad),
            "dataset": kind, "split": c.split, "source_ref": c.source_ref,
        })
    return rows


def carved_count(n: int, fraction: float) -> int:
    """How many of a class's n train rows the carve moves to val (at least one stays)."""
    return max(min(math.floor(n * fraction + 0.5), n - 1), 0)


def carve_val(rows: list[dict[str, Any]], fraction: float, seed: int) -> list[str]:
    """Move a seeded, per-class share of the train rows to split "val"; returns their ids."""
    by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["split"] == "train":
            by_class[r["labels"][0]].append(r)
    val_ids: list[str] = []
    for cls in sorted(by_class):
        members = sorted(by_class[cls], key=lambda r: r["sample_id"])
        n_val = carved_count(len(members), fraction)
        # One generator per class: adding images of one class leaves the others' picks alone.
        rng = np.random.default_rng([seed, cls])
        for i in sorted(rng.permutation(len(members))[:n_val]):
            r = members[i]
            r["split"] = "val"
            r["source_ref"] = f"{r['source_ref']} (carved from train into val, seed {seed})"
            val_ids.append(r["sample_id"])
    return sorted(val_ids)


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _no_valid_rows(source: str, q: Quarantine) -> UserError:
    if not len(q):
        return UserError(f"no rows found in {source}")
    first = q.rows[0]
    return UserError(
        f"no valid rows in {source}: all {len(q)} quarantined ({_format_counts(q.counts())}); "
        f"first: {first['reason']} at {first['source_ref']}: {first['detail']}")


EVERY_SPLIT = "training and evaluation need at least one valid person in each of train, val and test"


def _empty_carve(train_rows: list[dict[str, Any]], fraction: float, classes: list[str]) -> str:
    """Why carving gave no val row, and the smallest change that gives one."""
    head = "the val split is empty: there is no val/ folder, and "
    sizes = Counter(r["labels"][0] for r in train_rows)
    if not sizes:
        return head + "no valid train image to carve one from"
    if fraction <= 0:
        return head + "data.val_fraction is 0, so none is carved: set it above 0 (e.g. 0.1) or add a val/<Class>/ folder"
    cls, largest = max(sizes.items(), key=lambda kv: (kv[1], -kv[0]))
    if largest < 2:
        return head + ("every class has at most one valid train image, which always stays in train: "
                       "add images (two or more in a class) or a val/<Class>/ folder")
    n_needed = max(2, math.floor(0.5 / fraction) - 1)
    while carved_count(n_needed, fraction) < 1:
        n_needed += 1
    percent = math.floor(50 / largest)
    while carved_count(largest, percent / 100) < 1:
        percent += 1
    return head + (
        f"data.val_fraction {fraction:g} carves round(n x {fraction:g}) of the n valid train images of each class "
        f"(one always stays in train), which is 0 for every class here (the largest, {classes[cls]}, has {largest}); "
        f"at this fraction a class needs at least {n_needed}: add images, raise data.val_fraction to at least "
        f"{percent / 100:g}, or add a val/<Class>/ folder")


def _empty_split(split: str, kind: str, result: ReadResult, q: Quarantine, annotations: str | None) -> str:
    lost = [r for r in q.rows if r["split"] == split]
    if lost:
        first = lost[0]
        return (f"the {split} split is empty: all {len(lost)} {split} rows were quarantined "
                f"({_format_counts(Counter(r['reason'] for r in lost))}; first: {first['reason']} at "
                f"{first['source_ref']}: {first['detail']})")
    if kind == "caers":
        hint = f"add images under {split}/<Class>/"
    elif Path(annotations or "").suffix.lower() == ".mat":
        hint = f"add a '{split}' variable to it"
    else:
        hint = f"add {SPLIT_WORD.sub(split, Path(annotations or '').name, count=1)} next to it"
    return f"the {split} split is empty: no {split} rows in {', '.join(result.sources)} ({hint})"


def check_every_split(per_split: dict[str, list], kind: str, result: ReadResult, data_cfg: DataConfig,
                      carved: bool, classes: list[str]) -> None:
    """An empty split stops ingest: the loaders of train and evaluate cannot stack zero rows,
    and a stage three steps later failing on it says nothing about the data set."""
    problems = []
    for split in SPLITS:
        if per_split[split]:
            continue
        if split == "val" and carved:
            problems.append(_empty_carve(per_split["train"], data_cfg.val_fraction, classes))
        else:
            problems.append(_empty_split(split, kind, result, result.quarantine, data_cfg.annotations))
    if problems:
        raise UserError("; ".join(problems + [EVERY_SPLIT]))


def _summary(kind: str, data_cfg: DataConfig, result: ReadResult, per_split: dict[str, list], n_images: int,
             notes: dict[str, set[str]], carved: bool, cross_split: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    q = result.quarantine
    return {
        "dataset": kind,
        "sources": ", ".join(result.sources),
        "verify_images": bool(data_cfg.verify_images),
        "val_split": "carved_from_train" if carved else "official",
        "rows": {s: len(per_split[s]) for s in SPLITS} | {"total": sum(len(v) for v in per_split.values())},
        "images": {s: len({r["image_path"] for r in per_split[s]}) for s in SPLITS},
        "images_opened": n_images,
        "quarantine": {"total": len(q), "by_reason": q.counts()},
        "cross_split_persons": cross_split,
        **{name: {s: sum(name in notes[r["sample_id"]] for r in per_split[s]) for s in SPLITS}
           for name in ROW_NOTES},
        "label_frequency": {
            s: dict(zip(classes, np.bincount([i for r in per_split[s] for i in r["labels"]],
                                             minlength=len(classes)).tolist()))
            for s in SPLITS},
    }


def _write_outputs(out_dir: Path, kind: str, classes: list[str], per_split: dict[str, list], q: Quarantine,
                   val_ids: list[str] | None, data_cfg: DataConfig, seed: int) -> Path:
    manifest_dir = Path(out_dir) / MANIFEST_SUBDIR
    for split, split_rows in per_split.items():
        write_table(manifest_table(split_rows), manifest_dir / f"{split}.parquet")
    write_table(q.table(), manifest_dir / "quarantine.parquet")
    write_json({"dataset": kind, "classes": classes}, Path(out_dir) / "labels.json")
    val_split_file = manifest_dir / CAERS_VAL_SPLIT_NAME
    if val_ids is not None:
        carved_counts = Counter(classes[r["labels"][0]] for r in per_split["val"])
        write_json({"seed": seed, "val_fraction": data_cfg.val_fraction, "carved_from": "train",
                     "per_class": {c: carved_counts.get(c, 0) for c in classes},
                     "sample_ids": val_ids}, val_split_file)
    elif val_split_file.exists():
        val_split_file.unlink()  # stale from an earlier CAER-S run: this manifest has no carve
    return manifest_dir


def run(data_cfg: DataConfig, seed: int, out_dir: Path = DEFAULT_WORKSPACE.manifest_dir.parent) -> dict[str, Any]:
    """Read the data set `data_cfg` names, check it, and write the manifest under `out_dir`."""
    kind = data_cfg.kind
    if kind == "caers" and not 0.0 <= data_cfg.val_fraction < 1.0:
        raise UserError(f"data.val_fraction is {data_cfg.val_fraction}; it must be in [0, 1)")
    root = Path(data_cfg.root)
    source = f"{root}" if not data_cfg.annotations else f"{root / data_cfg.annotations}"
    result: ReadResult = read_dataset(kind, root, data_cfg.annotations)
    q = result.quarantine
    classes = list(class_names(kind))
    candidates = sorted(result.candidates, key=lambda c: SPLITS.index(c.split))  # stable
    candidates = drop_conflicting_labels(candidates, q, classes)
    candidates = drop_duplicates(candidates, q)
    checks = check_images(root, [c.image_path for c in candidates], decode=data_cfg.verify_images)
    notes: dict[str, set[str]] = defaultdict(set)
    rows = to_manifest_rows(candidates, checks, kind, q, notes)
    if not rows:
        raise _no_valid_rows(source, q)
    repeated = [sid for sid, n in Counter(r["sample_id"] for r in rows).items() if n > 1]
    if repeated:  # the readers number persons per image; a repeat here is a bug, not bad input
        raise RuntimeError(f"ingest produced repeated sample_ids, e.g. {repeated[:3]}")

    val_ids: list[str] | None = None
    if kind == "caers" and not result.has_val:
        val_ids = carve_val(rows, data_cfg.val_fraction, seed)
    per_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    check_every_split(per_split, kind, result, data_cfg, val_ids is not None, classes)
    cross_split = cross_split_persons(rows, {c.sample_id: c.box for c in candidates})
    manifest_dir = _write_outputs(Path(out_dir), kind, classes, per_split, q, val_ids, data_cfg, seed)
    summary = _summary(kind, data_cfg, result, per_split, len(checks), notes, val_ids is not None, cross_split,
                       classes)
    write_json(summary, manifest_dir / SUMMARY_NAME)
    return summary


def ingest_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The counts `dvc metrics show` prints (reports/ingest.json), and the list of persons in more
    than one split (DVC shows its counts and skips the list); the full summary, with the quarantine
    per reason and the label frequencies, stays in data/manifest/summary.json."""
    return {
        "persons": summary["rows"],
        "quarantined": summary["quarantine"]["total"],
        "boxes_clamped": sum(summary["boxes_clamped"].values()),
        "conflicting_labels": summary["quarantine"]["by_reason"].get("conflicting_labels", 0),
        "cross_split_persons": summary["cross_split_persons"],
    }


def _box_text(box: list[float] | None) -> str:
    return "whole frame" if box is None else "[" + ", ".join(f"{v:g}" for v in box) + "]"


def report_lines(summary: dict[str, Any]) -> list[str]:
    rows, q, cross = summary["rows"], summary["quarantine"], summary["cross_split_persons"]
    lines = [
        f"ingest {summary['dataset']} ({summary['sources']}): "
        f"train {rows['train']}, val {rows['val']}, test {rows['test']} persons "
        f"({summary['images_opened']} images {'decoded' if summary['verify_images'] else 'opened'}; "
        f"val split {summary['val_split']})",
        f"quarantined {q['total']}: {_format_counts(q['by_reason'])}",
        f"boxes clamped {sum(summary['boxes_clamped'].values())}, "
        f"image size differs from annotation {sum(summary['image_size_mismatch'].values())}, "
        f"whole-frame boxes {sum(summary['whole_frame_boxes'].values())}",
    ]
    if cross["total"]:
        examples = "; ".join(f"{p['image_path']} {_box_text(p['box'])} in {'+'.join(p['splits'])}"
                             for p in cross["persons"][:3])
        lines.append(
            f"warning: {cross['total']} person{'s' if cross['total'] != 1 else ''} (same image and box) "
            f"{'are' if cross['total'] != 1 else 'is'} in more than one split with different labels "
            f"({_format_counts(cross['by_splits'])}); kept, because ingest does not change the data set's own "
            f"splits; listed under cross_split_persons in summary.json and the metrics file, e.g. {examples}")
    return lines
