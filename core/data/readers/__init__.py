"""Dataset readers: annotations in, candidate person rows (and quarantined rows) out.

Readers parse annotation files and folder trees only; they never open an image. The
image checks (missing, unreadable, truncated, size), box clamping, de-duplication and
the CAER-S val carve happen in `core.data.ingest`, once per image.

Supported inputs (params `data:`; `data.annotations` is relative to `data.root`), one
module each (their docstrings give the rules: sample_id, source_ref, which fields win):

* EMOTIC, official `Annotations.mat` -- emotic_mat.py
* EMOTIC, CSV layout `annotations_{train,val,test}.csv` -- emotic_csv.py
* CAER-S folder tree with an optional face-box file -- caers.py

common.py holds what they share (Candidate, ReadResult, Rejected, parse helpers). This
module picks the reader from `data.kind` and the annotation file's suffix.

Symlinks, one rule for every layout: a link that resolves inside `data.root` is followed,
one that resolves outside it is quarantined as `symlink_outside_root` ("symlink outside the
data root: <target>"), never read and never dropped silently. Image files are judged by
ingest's image check (the readers do not open images); CAER-S folders (class or split) are
judged by caers.py while it walks the tree (one row per folder, not entered).
"""
from __future__ import annotations

from pathlib import Path

from core.data.readers.caers import (
    FaceBox,
    caers_class_index,
    read_caers,
    read_face_boxes,
)
from core.data.readers.common import (
    Candidate,
    ReadResult,
    Rejected,
    merge,
    parse_box,
    safe_relpath,
    split_siblings,
)
from core.data.readers.emotic_csv import (
    parse_literal,
    read_emotic_csv,
    read_emotic_csv_splits,
)
from core.data.readers.emotic_mat import read_emotic_mat
from core.errors import UserError

__all__ = [
    "Candidate", "FaceBox", "ReadResult", "Rejected", "annotations_path", "caers_class_index", "merge",
    "parse_box", "parse_literal", "read_caers", "read_dataset", "read_emotic_csv", "read_emotic_csv_splits",
    "read_emotic_mat", "read_face_boxes", "safe_relpath", "split_siblings",
]


def annotations_path(root: Path, annotations: str | None) -> Path | None:
    """`data.annotations` is relative to `data.root` unless absolute."""
    if annotations is None or str(annotations).strip() == "":
        return None
    p = Path(annotations)
    return p if p.is_absolute() else Path(root) / p


def read_dataset(kind: str, root: Path, annotations: str | None) -> ReadResult:
    """Read the data set the params describe; a wrong path is a UserError naming it."""
    root = Path(root)
    if kind not in ("emotic", "caers"):
        raise UserError(f"data.kind is {kind!r}; expected 'emotic' or 'caers'")
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root} (params data.root, relative to {Path.cwd()})")
    ann = annotations_path(root, annotations)
    if ann is not None and not ann.is_file():
        raise UserError(f"annotations file not found: {ann} (params data.annotations is relative to data.root)")
    if kind == "caers":
        return read_caers(root, ann)
    if ann is None:
        raise UserError("data.annotations is empty; EMOTIC needs Annotations.mat or annotations_<split>.csv")
    suffix = ann.suffix.lower()
    if suffix == ".mat":
        return read_emotic_mat(ann)
    if suffix == ".csv":
        return read_emotic_csv_splits(ann)
    raise UserError(f"{ann}: unknown annotation format {suffix!r}; expected .mat or .csv")
