"""CAER-S reader: the folder tree and its optional face-box file.

CAER-S folder tree ``<split>/<Class>/<file>`` with split in train/val/test (the real
data set has train and test only; `Angry` and `Anger` are both class 0) and an optional
face-box file ``relpath,label,x1,y1,x2,y2`` (one face per image; an optional header
line). When its name holds a split word, its siblings are read too, as for the CSV.
A face-box row whose label disagrees with the folder quarantines the image
(`label_mismatch`); a row for a file that is not in the tree is `missing_image`.
Images without a face box get the whole frame (box None here). sample_id = relpath.

Symlinks, one rule for files and folders: one that resolves inside the data root is
followed (the sample_id keeps the link's own path); one that resolves outside it is not,
and is quarantined as `symlink_outside_root` with the target ("symlink outside the data
root: <target>"), because the manifest, DVC and every later stage describe the data set as
what lies under `data.root`. A folder link (a class or split folder) is one quarantine row
(source_ref ``<relpath>/``) and is not entered, so its files are not counted; a file link is
one row per image, written by ingest's image check. A folder link back to a folder being
walked is `symlink_loop`; a folder that cannot be listed is `unreadable_folder`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from core.data.labels import CAERS_CLASSES, CAERS_FOLDER_ALIASES
from core.data.manifest import SPLITS, Quarantine
from core.data.readers.common import (
    SPLIT_WORD,
    Box,
    Candidate,
    ReadResult,
    Rejected,
    outside_root,
    parse_box,
    safe_relpath,
    split_siblings,
    symlink_outside_detail,
)
from core.errors import UserError

CAERS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CAERS_CLASSES)}


@dataclass
class FaceBox:
    label: int
    box: Box
    ref: str


def read_face_boxes(path: Path, quarantine: Quarantine) -> dict[str, FaceBox]:
    """relpath -> face box of one `relpath,label,x1,y1,x2,y2` file; bad rows to quarantine."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    boxes: dict[str, FaceBox] = {}
    n = -1
    for row in rows:
        if not any(c.strip() for c in row):
            continue
        if n == -1 and row[0].strip().lower() == "relpath":
            continue  # header
        n += 1
        ref = f"{path.name}:row {n}"
        try:
            if len(row) != 6:
                raise Rejected("malformed_row", f"{len(row)} fields, expected 6 (relpath,label,x1,y1,x2,y2)")
            relpath = safe_relpath(row[0])
            try:
                label = int(row[1].strip())
                coords = [float(v) for v in row[2:]]
            except ValueError:
                raise Rejected("malformed_row", "label or box value is not a number") from None
            if not 0 <= label < len(CAERS_CLASSES):
                raise Rejected("unknown_label", f"label {label} is outside 0..{len(CAERS_CLASSES) - 1}")
            box = parse_box(coords, "face box")
            if relpath in boxes:
                raise Rejected("duplicate_row", f"a second face box for {relpath}; the first ({boxes[relpath].ref}) is kept")
        except Rejected as rej:
            quarantine.add(rej.reason, ref, rej.detail, image_path=row[0] if row else None, raw=row)
            continue
        boxes[relpath] = FaceBox(label=label, box=box, ref=ref)
    return boxes


def caers_class_index(folder: str) -> int | None:
    return CAERS_INDEX.get(CAERS_FOLDER_ALIASES.get(folder, folder))


def _tree_files(root: Path, split_dir: Path, split: str, q: Quarantine) -> list[Path]:
    """The files under `split_dir`, dot-names skipped (.DS_Store and the like). Folder symlinks
    are followed when they resolve inside the data root; one leaving it, or leading back to a
    folder being walked, becomes one quarantine row and is not entered (a link to / would
    otherwise walk the whole disk). File symlinks are listed here and judged by ingest."""
    root_real = root.resolve()
    files: list[Path] = []

    def refuse(folder: Path, reason: str, detail: str) -> None:
        rel = folder.relative_to(root).as_posix()
        q.add(reason, f"{rel}/", detail, image_path=rel, split=split)

    def walk(folder: Path, walking: frozenset[Path]) -> None:
        real = folder.resolve()
        target = outside_root(folder, root_real)
        if target is not None:
            refuse(folder, "symlink_outside_root", f"{symlink_outside_detail(target)} "
                                                   "(a directory: not entered, so its files are neither read nor counted)")
            return
        if real in walking:
            refuse(folder, "symlink_loop", f"symlink back to {real}, a folder it is inside of (not entered again)")
            return
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            refuse(folder, "unreadable_folder", f"cannot list the folder: {exc.strerror or exc}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(entry, walking | {real})
            elif entry.is_file() or entry.is_symlink():  # a dangling link too: ingest reports it
                files.append(entry)

    walk(split_dir, frozenset())
    return sorted(files)


def read_caers(root: Path, face_box_file: Path | None = None) -> ReadResult:
    root = Path(root)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in split_dirs and "test" not in split_dirs:
        raise UserError(f"{root} is not a CAER-S tree: expected train/<Class>/*.png and test/<Class>/*.png")
    result = ReadResult(has_val="val" in split_dirs)
    q = result.quarantine
    face_boxes: dict[str, FaceBox] = {}
    if face_box_file is not None:
        siblings = split_siblings(face_box_file) if SPLIT_WORD.search(face_box_file.name) else {"": face_box_file}
        for p in siblings.values():
            result.sources.append(p.name)
            for relpath, fb in read_face_boxes(p, q).items():
                if relpath in face_boxes:
                    q.add("duplicate_row", fb.ref, f"{relpath} already has a face box in {face_boxes[relpath].ref}",
                          image_path=relpath, raw=[relpath, fb.label, *fb.box])
                else:
                    face_boxes[relpath] = fb
    seen: set[str] = set()
    for split, split_dir in split_dirs.items():
        result.sources.append(f"{split}/")
        for file in _tree_files(root, split_dir, split, q):
            relpath = file.relative_to(root).as_posix()
            seen.add(relpath)
            parts = file.relative_to(split_dir).parts
            cls = caers_class_index(parts[0]) if len(parts) > 1 else None
            fb = face_boxes.get(relpath)
            ref = relpath if fb is None else f"{relpath}; {fb.ref}"
            if cls is None:
                why = (f"class folder {parts[0]!r} is not one of {list(CAERS_CLASSES)} (or {list(CAERS_FOLDER_ALIASES)})"
                       if len(parts) > 1 else "file is not inside a class folder")
                q.add("unknown_label", ref, why, image_path=relpath, split=split)
                continue
            if fb is not None and fb.label != cls:
                q.add("label_mismatch", ref,
                      f"folder says {CAERS_CLASSES[cls]} ({cls}), face-box file says {CAERS_CLASSES[fb.label]} ({fb.label})",
                      image_path=relpath, split=split, raw=[relpath, fb.label, *fb.box])
                continue
            result.candidates.append(Candidate(
                sample_id=relpath, image_path=relpath, split=split, labels=(cls,),
                box=None if fb is None else fb.box, vad=None, annotated_size=None, source_ref=ref,
                raw=None if fb is None else [relpath, fb.label, *fb.box]))
    for relpath, fb in face_boxes.items():
        if relpath not in seen:
            q.add("missing_image", fb.ref, f"face-box row for {relpath}, which is not in the tree under {root}",
                  image_path=relpath, raw=[relpath, fb.label, *fb.box])
    return result
