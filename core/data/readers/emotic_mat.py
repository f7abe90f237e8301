"""Dataset readers: annotations in, candidate person rows (and quarantined rows) out.

Readers parse annotation files and folder trees only; they never open an image. The
image checks (missing, unreadable, truncated, size), box clamping, de-duplication and
the CAER-S val carve happen in `stages.ingest`, once per image.

Supported inputs (params `data:`; `data.annotations` is relative to `data.root`):

* EMOTIC, official `Annotations.mat` (variables `train`/`val`/`test`, MATLAB v5/v7):
  one candidate per `person`. On val/test the per-annotator lists are merged into
  `combined_categories` / `combined_continuous`, which are used whenever a person has
  them; a person without them (train) uses `annotations_categories` /
  `annotations_continuous` (if several annotators are present there: the union of their
  categories and the mean of their continuous values).
  sample_id ``<split>/<folder>/<filename>#<k>``, source_ref ``Annotations.mat:<split>[i]/person[k]``
  (0-based indices; should one image be listed twice in a split, its second record's
  persons continue the numbering in the sample_id).
* EMOTIC, CSV layout (`Index,Folder,Filename,Image Size,BBox,Categorical_Labels,
  Continuous_Labels,Gender,Age`, lists as Python literals). The split is taken from the
  file name: it must contain exactly one of the words `train`, `val`, `test` (delimited by
  non-alphanumerics, e.g. `annotations_val.csv`, `emotic_val_annotations.csv`), and every
  sibling named with the word swapped that exists is read too. So `annotations:
  annotations_train.csv` reads `annotations_{train,val,test}.csv` from the same folder.
  `Image Size` is ``[width, height]`` (in the real val file no box ever passes the first
  value on x or the second on y, while 1,116 boxes pass the second value on x).
  The person index `k` in the sample_id counts the rows of the same image in that file.
  source_ref ``<file>:row <n>``, n = 0-based data row (blank lines are not rows), which
  equals the `Index` column of the official export.
* CAER-S folder tree ``<split>/<Class>/<file>`` with split in train/val/test (the real
  data set has train and test only; `Angry` and `Anger` are both class 0) and an optional
  face-box file ``relpath,label,x1,y1,x2,y2`` (one face per image; an optional header
  line). When its name holds a split word, its siblings are read too, as for the CSV.
  A face-box row whose label disagrees with the folder quarantines the image
  (`label_mismatch`); a row for a file that is not in the tree is `missing_image`.
  Images without a face box get the whole frame (box None here). sample_id = relpath.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import scipy.io

from stages.data.labels import CAERS_CLASSES, CAERS_FOLDER_ALIASES, EMOTIC_CATEGORIES
from stages.data.manifest import SPLITS, Quarantine
from stages.errors import UserError

EMOTIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}
CAERS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CAERS_CLASSES)}
CSV_REQUIRED_COLUMNS = ("Folder", "Filename", "BBox", "Categorical_Labels")
RAW_TEXT_LIMIT = 2000

_SPLIT_WORD = re.compile(r"(?<![A-Za-z0-9])(train|val|test)(?![A-Za-z0-9])")
_NAN_WORD = re.compile(r"\bnan\b", re.IGNORECASE)

Box = tuple[float, float, float, float]


@dataclass
class Candidate:
    """One target person as the annotations describe it, before any image is opened."""

    sample_id: str
    image_path: str                       # posix, relative to the dataset root
    split: str
    labels: tuple[int, ...]
    box: Box | None                       # None: the whole frame (CAER-S without face box)
    vad: tuple[float, float, float] | None
    annotated_size: tuple[int, int] | None  # (width, height) as the annotations claim
    source_ref: str
    raw: Any = None


@dataclass
class ReadResult:
    candidates: list[Candidate] = field(default_factory=list)
    quarantine: Quarantine = field(default_factory=Quarantine)
    sources: list[str] = field(default_factory=list)
    has_val: bool = True                  # False: CAER-S without a val folder (ingest carves one)


class Rejected(Exception):
    """A row that cannot become a candidate; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- helpers


def split_siblings(path: Path) -> dict[str, Path]:
    """{split: file} for `path` and the existing files named with another split word."""
    matches = list(_SPLIT_WORD.finditer(path.name))
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(m.group(1) for m in matches)
        raise UserError(
            f"cannot tell the split of {path}: its name must contain exactly one of the words "
            f"train/val/test (e.g. annotations_train.csv); found {found}")
    match = matches[0]
    out: dict[str, Path] = {}
    for split in SPLITS:
        sibling = path.with_name(path.name[:match.start()] + split + path.name[match.end():])
        if sibling.is_file():
            out[split] = sibling
    return out


def safe_relpath(*parts: str) -> str:
    """Join path parts into a root-relative posix path; reject ones that leave the root."""
    joined = PurePosixPath(*[p.replace("\\", "/").strip() for p in parts])
    if joined.is_absolute() or ".." in joined.parts or not joined.parts or str(joined) == ".":
        raise Rejected("malformed_row", f"image path {str(joined)!r} is empty or leaves the dataset root")
    return str(joined)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def parse_box(values: Any, what: str = "box") -> Box:
    """Four finite numbers x1 < x2, y1 < y2 (pixels); anything else is a malformed row."""
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise Rejected("malformed_row", f"{what} {values!r} is not numeric") from None
    if arr.size != 4:
        raise Rejected("malformed_row", f"{what} has {arr.size} values, expected 4 (x1, y1, x2, y2)")
    if not np.all(np.isfinite(arr)):
        raise Rejected("malformed_row", f"{what} {arr.tolist()} has a non-finite value")
    x1, y1, x2, y2 = (float(v) for v in arr)
    if x2 <= x1 or y2 <= y1:
        raise Rejected("malformed_row", f"{what} {[x1, y1, x2, y2]} is empty or inverted (needs x1 < x2, y1 < y2)")
    return x1, y1, x2, y2


def emotic_label_indices(names: list[str]) -> tuple[int, ...]:
    if not names:
        raise Rejected("no_labels", "the person has no emotion category")
    unknown = sorted({n for n in names if n not in EMOTIC_INDEX})
    if unknown:
        raise Rejected("unknown_label", f"unknown EMOTIC categor{'y' if len(unknown) == 1 else 'ies'} {unknown}")
    return tuple(sorted({EMOTIC_INDEX[n] for n in names}))


def vad_or_none(values: list[float]) -> tuple[float, float, float] | None:
    """Valence, arousal, dominance; None when any is missing (NaN), as the schema allows."""
    if len(values) != 3 or any(math.isnan(v) for v in values):
        return None
    return float(values[0]), float(values[1]), float(values[2])


def _clip_text(text: str) -> str:
    return text if len(text) <= RAW_TEXT_LIMIT else text[:RAW_TEXT_LIMIT] + "...(cut)"


# --------------------------------------------------------------------------- EMOTIC .mat


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
    return _clip_text(json.dumps(_mat_plain(value), default=str))


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


# ---------------------------------------------------------------------------- EMOTIC CSV


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
        raise Rejected("malformed_row", f"{what} {_clip_text(text)!r} is not a Python literal") from None
    return value


def _csv_numbers(value: Any, n: int, what: str, allow_missing: bool = False) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise Rejected("malformed_row", f"{what} {value!r} is not a list of {n} numbers")
    out = []
    for v in value:
        if v is None and allow_missing:
            out.append(float("nan"))
        elif _is_number(v):
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


def merge(results: list[ReadResult]) -> ReadResult:
    out = ReadResult()
    for r in results:
        out.candidates += r.candidates
        out.quarantine.rows += r.quarantine.rows
        out.sources += r.sources
        out.has_val = out.has_val and r.has_val
    return out


def read_emotic_csv_splits(path: Path) -> ReadResult:
    """`path` and its split siblings (see the module docstring), in train, val, test order."""
    return merge([read_emotic_csv(p, split) for split, p in split_siblings(Path(path)).items()])


# ------------------------------------------------------------------------------ CAER-S


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


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_caers(root: Path, face_box_file: Path | None = None) -> ReadResult:
    root = Path(root)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in split_dirs and "test" not in split_dirs:
        raise UserError(f"{root} is not a CAER-S tree: expected train/<Class>/*.png and test/<Class>/*.png")
    result = ReadResult(has_val="val" in split_dirs)
    q = result.quarantine
    face_boxes: dict[str, FaceBox] = {}
    if face_box_file is not None:
        siblings = split_siblings(face_box_file) if _SPLIT_WORD.search(face_box_file.name) else {"": face_box_file}
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
        for file in _visible_files(split_dir):
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


# ---------------------------------------------------------------------------- dispatch


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
