"""What every dataset reader shares: the candidate row it produces, the result it returns,
the rejection that sends a row to quarantine, and the parse helpers for paths, boxes,
labels and valence/arousal/dominance.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.data.labels import EMOTIC_CATEGORIES
from core.data.manifest import SPLITS, Quarantine
from core.errors import UserError

EMOTIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}
RAW_TEXT_LIMIT = 2000

# a split word in a file name, delimited by non-alphanumerics (`interval`, `testing` are not)
SPLIT_WORD = re.compile(r"(?<![A-Za-z0-9])(train|val|test)(?![A-Za-z0-9])")

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


def split_siblings(path: Path) -> dict[str, Path]:
    """{split: file} for `path` and the existing files named with another split word."""
    matches = list(SPLIT_WORD.finditer(path.name))
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


def outside_root(path: Path, root_real: Path) -> Path | None:
    """Where `path` really is, when a symlink on the way takes it out of `root_real` (the data
    root, resolved); None when it stays inside. Only symlinks can leave: safe_relpath refuses
    `..` and absolute paths. A dangling link is judged by where it points."""
    real = Path(path).resolve()
    return None if real.is_relative_to(root_real) else real


def symlink_outside_detail(target: Path) -> str:
    return f"symlink outside the data root: {target}"


def is_number(x: Any) -> bool:
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


def clip_text(text: str) -> str:
    """A raw cell or record cut to RAW_TEXT_LIMIT characters for the quarantine's `raw` column."""
    return text if len(text) <= RAW_TEXT_LIMIT else text[:RAW_TEXT_LIMIT] + "...(cut)"


def merge(results: list[ReadResult]) -> ReadResult:
    """One result of several (e.g. the split files of one layout), in the order given."""
    out = ReadResult()
    for r in results:
        out.candidates += r.candidates
        out.quarantine.rows += r.quarantine.rows
        out.sources += r.sources
        out.has_val = out.has_val and r.has_val
    return out
