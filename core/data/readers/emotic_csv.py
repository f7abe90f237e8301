"""EMOTIC reader for the widely used CSV layout, one file per split.

The layout: `Index,Folder,Filename,Image Size,BBox,Categorical_Labels,
Continuous_Labels,Gender,Age`, lists as Python literals. The split is taken from the
file name: it must contain exactly one of the words `train`, `val`, `test` (delimited by
non-alphanumerics, e.g. `annotations_val.csv`, `emotic_val_annotations.csv`), and every
sibling named with the word swapped that exists is read too. So `annotations:
annotations_train.csv` reads `annotations_{train,val,test}.csv` from the same folder.
`Image Size` is ``[width, height]`` (in the real val file no box ever passes the first
value on x or the second on y, while 1,116 boxes pass the second value on x).
The person index `k` in the sample_id counts the rows of the same image in that file.
source_ref ``<file>:row <n>``, n = 0-based data row (blank lines are not rows), which
equals the `Index` column of the official export.
"""
from __future__ import annotations

import ast
import csv
import re
from collections import Counter
from pathlib import Path
from typing import Any

from core.data.readers.common import (
    Candidate,
    ReadResult,
    Rejected,
    clip_text,
    emotic_label_indices,
    is_number,
    merge,
    parse_box,
    safe_relpath,
    split_siblings,
    vad_or_none,
)
from core.errors import UserError

CSV_REQUIRED_COLUMNS = ("Folder", "Filename", "BBox", "Categorical_Labels")
_NAN_WORD = re.compile(r"\bnan\b", re.IGNORECASE)


def parse_literal(text: str, what: str) -> Any:
    """A Python literal (never eval); `nan` is read as a missing value."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        value = ast.literal_eval(_NAN_WORD.sub("None", text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise Rejected("malformed_row", f"{what} {clip_text(text)!r} is not a Python literal") from None
    return value


def _csv_numbers(value: Any, n: int, what: str, allow_missing: bool = False) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise Rejected("malformed_row", f"{what} {value!r} is not a list of {n} numbers")
    out = []
    for v in value:
        if v is None and allow_missing:
            out.append(float("nan"))
        elif is_number(v):
            out.append(float(v))
        else:
            raise Rejected("malformed_row", f"{what} {value!r} has a non-numeric value {v!r}")
    return out


def _csv_candidate(cells: dict[str, str], split: str, image_path: str, person_index: int,
                   ref: str) -> Candidate:
    box = parse_box(_csv_numbers(parse_literal(cells["BBox"], "BBox"), 4, "BBox"), "BBox")
    size = None
    if cells.get("Image Size", "").strip():
        w, h = _csv_numbers(parse_literal(cells["Image Size"], "Image Size"), 2, "Image Size")
        if w <= 0 or h <= 0 or w != int(w) or h != int(h):
            raise Rejected("malformed_row", f"Image Size {[w, h]} is not two positive integers")
        size = (int(w), int(h))
    cats = parse_literal(cells["Categorical_Labels"], "Categorical_Labels")
    if cats is None:
        cats = []
    if isinstance(cats, str):
        cats = [cats]
    if not isinstance(cats, (list, tuple)) or not all(isinstance(c, str) for c in cats):
        raise Rejected("malformed_row", f"Categorical_Labels {cats!r} is not a list of names")
    labels = emotic_label_indices([c.strip() for c in cats if c.strip()])
    vad = None
    cont = parse_literal(cells.get("Continuous_Labels", ""), "Continuous_Labels")
    if cont not in (None, [], ()):
        vad = vad_or_none(_csv_numbers(cont, 3, "Continuous_Labels", allow_missing=True))
    return Candidate(sample_id=f"{split}/{image_path}#{person_index}", image_path=image_path, split=split,
                     labels=labels, box=box, vad=vad, annotated_size=size, source_ref=ref, raw=cells)


def read_emotic_csv(path: Path, split: str) -> ReadResult:
    """One CSV file of the EMOTIC layout, all of whose rows belong to `split`."""
    path = Path(path)
    result = ReadResult(sources=[path.name])
    q = result.quarantine
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return result
    header = [h.strip() for h in rows[0]]
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; the header must be "
                        "Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age")
    persons_seen: Counter[str] = Counter()
    for n, row in enumerate(rows[1:]):
        ref = f"{path.name}:row {n}"
        if len(row) != len(header):
            q.add("malformed_row", ref, f"{len(row)} fields, expected {len(header)} ({','.join(header)})",
                  split=split, raw=row)
            continue
        cells = dict(zip(header, row))
        try:
            image_path = safe_relpath(cells["Folder"], cells["Filename"])
        except Rejected as rej:
            q.add(rej.reason, ref, rej.detail, split=split, raw=cells)
            continue
        person_index = persons_seen[image_path]
        persons_seen[image_path] += 1
        try:
            result.candidates.append(_csv_candidate(cells, split, image_path, person_index, ref))
        except Rejected as rej:
            q.add(rej.reason, ref, rej.detail, image_path=image_path, split=split, raw=cells)
    return result


def read_emotic_csv_splits(path: Path) -> ReadResult:
    """`path` and its split siblings (see the module docstring), in train, val, test order."""
    return merge([read_emotic_csv(p, split) for split, p in split_siblings(Path(path)).items()])
