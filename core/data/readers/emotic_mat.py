"""EMOTIC reader for the official `Annotations.mat` (variables `train`/`val`/`test`, MATLAB v5/v7).

One candidate per `person`. On val/test the per-annotator lists are merged into
`combined_categories` / `combined_continuous`, which are used whenever a person has
them; a person without them (train) uses `annotations_categories` /
`annotations_continuous` (if several annotators are present there: the union of their
categories and the mean of their continuous values).
sample_id ``<split>/<folder>/<filename>#<k>``, source_ref ``Annotations.mat:<split>[i]/person[k]``
(0-based indices; should one image be listed twice in a split, its second record's
persons continue the numbering in the sample_id).

scipy's squeeze_me turns 1x1 struct arrays into bare structs and one-name cell arrays into
bare strings; the helpers below accept every such shape.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from core.data.manifest import SPLITS
from core.data.readers.common import (
    Candidate,
    ReadResult,
    Rejected,
    clip_text,
    emotic_label_indices,
    parse_box,
    safe_relpath,
    vad_or_none,
)
from core.errors import UserError


def _mat_items(value: Any) -> list[Any]:
    """squeeze_me turns a 1x1 struct array into the struct itself: always give a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def _mat_strings(value: Any, what: str) -> list[str]:
    """A cell array of strings; squeeze_me makes a single one a bare str, an empty one []."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, np.ndarray):
        out = []
        for item in value.ravel():
            if not isinstance(item, str):
                raise Rejected("malformed_row", f"{what} holds a {type(item).__name__}, expected text")
            if item.strip():
                out.append(item.strip())
        return out
    raise Rejected("malformed_row", f"{what} is a {type(value).__name__}, expected a list of names")


def _mat_plain(value: Any, depth: int = 0) -> Any:
    """A JSON-able picture of a mat_struct, for the quarantine's `raw` column."""
    if depth > 6:
        return "..."
    if hasattr(value, "_fieldnames"):
        return {f: _mat_plain(getattr(value, f, None), depth + 1) for f in value._fieldnames}
    if isinstance(value, np.ndarray):
        return [_mat_plain(v, depth + 1) for v in value.ravel()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _mat_raw(value: Any) -> str:
    return clip_text(json.dumps(_mat_plain(value), default=str))


def _mat_categories(person: Any) -> list[str]:
    if hasattr(person, "combined_categories"):
        return _mat_strings(person.combined_categories, "combined_categories")
    if not hasattr(person, "annotations_categories"):
        raise Rejected("malformed_row", "person has neither combined_categories nor annotations_categories")
    value = person.annotations_categories
    if isinstance(value, str) or (isinstance(value, np.ndarray) and not any(
            hasattr(v, "_fieldnames") for v in value.ravel())):
        return _mat_strings(value, "annotations_categories")  # a bare list of names
    names: list[str] = []
    for annotator in _mat_items(value):  # one struct per annotator; their union
        if not hasattr(annotator, "categories"):
            raise Rejected("malformed_row", "an annotations_categories entry has no `categories` field")
        names += _mat_strings(annotator.categories, "annotations_categories.categories")
    return names


def _mat_scalar(value: Any) -> float:
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return float("nan")
    return float(arr[0]) if arr.size == 1 else float("nan")


def _mat_vad_of(value: Any) -> list[float]:
    """One annotator's (or the combined) valence, arousal, dominance; NaN where absent."""
    if hasattr(value, "_fieldnames"):
        return [_mat_scalar(getattr(value, k, None)) for k in ("valence", "arousal", "dominance")]
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return [float("nan")] * 3
    return arr.tolist() if arr.size == 3 else [float("nan")] * 3


def _mat_vad(person: Any) -> tuple[float, float, float] | None:
    if hasattr(person, "combined_continuous"):
        return vad_or_none(_mat_vad_of(person.combined_continuous))
    value = getattr(person, "annotations_continuous", None)
    if value is None:
        return None
    if hasattr(value, "_fieldnames") or (isinstance(value, np.ndarray) and value.dtype != object):
        annotators = [value]
    else:
        annotators = _mat_items(value)
    per = np.array([_mat_vad_of(a) for a in annotators], dtype=np.float64).reshape(-1, 3)
    if per.shape[0] == 0:
        return None
    if per.shape[0] == 1:
        return vad_or_none(per[0].tolist())
    counts = np.sum(~np.isnan(per), axis=0)  # mean over the annotators who gave a value
    mean = np.where(counts > 0, np.nansum(per, axis=0) / np.maximum(counts, 1), np.nan)
    return vad_or_none(mean.tolist())


def _mat_size(image: Any) -> tuple[int, int] | None:
    size = getattr(image, "image_size", None)
    try:  # image_size{n_col, n_row}: columns are the width
        w, h = int(float(size.n_col)), int(float(size.n_row))
    except (AttributeError, TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def read_emotic_mat(path: Path) -> ReadResult:
    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except NotImplementedError:
        raise UserError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it as -v7 "
                        "(the official EMOTIC file is v5)") from None
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on non-MAT bytes
        raise UserError(f"cannot read {path} as a MATLAB .mat file: {type(exc).__name__}: {exc}") from None
    splits = [s for s in SPLITS if s in mat]
    if not splits:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path}: no 'train', 'val' or 'test' variable (found {found})")
    result = ReadResult(sources=[path.name])
    q = result.quarantine
    for split in splits:
        # An image listed twice in one split continues its person numbering, so sample_ids stay unique.
        persons_seen: Counter[str] = Counter()
        for i, image in enumerate(_mat_items(mat[split])):
            image_ref = f"{path.name}:{split}[{i}]"
            try:
                if not hasattr(image, "_fieldnames"):
                    raise Rejected("malformed_row", f"image record is a {type(image).__name__}, expected a struct")
                folder, filename = getattr(image, "folder", None), getattr(image, "filename", None)
                if not isinstance(folder, str) or not isinstance(filename, str):
                    raise Rejected("malformed_row", "image record lacks a text folder/filename")
                image_path = safe_relpath(folder, filename)
                persons = _mat_items(getattr(image, "person", None))
                if not persons:
                    raise Rejected("malformed_row", "image record has no person entries")
            except Rejected as rej:
                q.add(rej.reason, image_ref, rej.detail, split=split, raw=_mat_raw(image))
                continue
            size = _mat_size(image)
            first_index = persons_seen[image_path]
            persons_seen[image_path] += len(persons)
            for k, person in enumerate(persons):
                ref = f"{image_ref}/person[{k}]"
                try:
                    if not hasattr(person, "_fieldnames"):
                        raise Rejected("malformed_row", f"person is a {type(person).__name__}, expected a struct")
                    if not hasattr(person, "body_bbox"):
                        raise Rejected("malformed_row", "person has no body_bbox")
                    box = parse_box(person.body_bbox, "body_bbox")
                    labels = emotic_label_indices(_mat_categories(person))
                    vad = _mat_vad(person)
                except Rejected as rej:
                    q.add(rej.reason, ref, rej.detail, image_path=image_path, split=split, raw=_mat_raw(person))
                    continue
                result.candidates.append(Candidate(
                    sample_id=f"{split}/{image_path}#{first_index + k}", image_path=image_path, split=split,
                    labels=labels, box=box, vad=vad, annotated_size=size, source_ref=ref,
                    raw=_mat_raw(person)))
    return result
