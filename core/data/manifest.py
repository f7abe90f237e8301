"""The manifest contract shared by every stage (see ../shared/DESIGN.md).

One row per target person. `image_path` is relative to the dataset root (params
`data.root`); boxes are [x1, y1, x2, y2] in pixels of the original image.
Rejected input never disappears: it goes to quarantine.parquet with a reason and the
reference of where it came from.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "val", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("image_path", pa.string()),
        ("image_w", pa.int32()),
        ("image_h", pa.int32()),
        ("person_box", pa.list_(pa.float32(), 4)),
        ("labels", pa.list_(pa.int32())),
        # Valence, arousal, dominance: 3 values, or null (CAER-S; EMOTIC persons without
        # continuous labels). A variable-length list because pyarrow 25 cannot read back a
        # fixed-size list column holding nulls from parquet (apache/arrow#35692).
        ("vad", pa.list_(pa.float32())),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("source_ref", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source_ref", pa.string()),
        ("image_path", pa.string()),
        ("split", pa.string()),
        ("raw", pa.string()),                  # the offending row/record, as text
    ]
)


@dataclass
class Quarantine:
    """Collects rejected rows; `reason` is a short stable code, `detail` is for humans."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, reason: str, source_ref: str, detail: str = "", image_path: str | None = None,
            split: str | None = None, raw: Any = None) -> None:
        self.rows.append({
            "reason": reason,
            "detail": detail,
            "source_ref": source_ref,
            "image_path": image_path,
            "split": split,
            "raw": None if raw is None else (raw if isinstance(raw, str) else json.dumps(raw, default=str)),
        })

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self.rows).items()))

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=QUARANTINE_SCHEMA)


def manifest_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)


def write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # atomic: a killed ingest never leaves a half-written manifest


def read_manifest(split: str, manifest_dir: Path):
    """The manifest of one split as a pandas DataFrame."""
    return pq.read_table(Path(manifest_dir) / f"{split}.parquet").to_pandas()


def read_labels(path: Path) -> list[str]:
    with Path(path).open() as fh:
        return list(json.load(fh)["classes"])
