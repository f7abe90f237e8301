"""Read side of data/objects/<split>/ (written by the objects stage, core/features/) for the training loader.

The arrays are memory-mapped, never loaded whole. The store pickles without its memmaps and
reopens them on first use, so each DataLoader worker process maps the files itself instead
of receiving copies through a pipe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from core.errors import UserError

ARRAY_FILES = ("features", "boxes", "scores", "classes", "counts")


class ObjectStore:
    """Per-person object context: `get(row_of(sample_id)) -> (features, boxes, mask)`."""

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        meta_path = self.split_dir / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{self.split_dir}: no meta.json (missing or unfinished): run `python -m stages.objects`")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        index = pq.read_table(self.split_dir / "index.parquet", columns=["sample_id", "row"]).to_pydict()
        self._rows = dict(zip(index["sample_id"], index["row"]))
        self.top_n = int(self.meta["top_n"])
        self._arrays: dict[str, np.ndarray] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: np.load(self.split_dir / f"{name}.npy", mmap_mode="r") for name in ARRAY_FILES}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def row_of(self, sample_id: str) -> int:
        try:
            return int(self._rows[sample_id])
        except KeyError:
            raise UserError(f"{self.split_dir}: no object row for sample_id {sample_id!r}; "
                            f"the manifest changed since the objects stage ran: rerun it") from None

    def get(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies (not views) of features [N,2048] float16, boxes [N,4] float32 and mask [N] bool."""
        arrays = self._open()
        count = int(arrays["counts"][row])
        mask = np.zeros(self.top_n, dtype=bool)
        mask[:count] = True
        return np.array(arrays["features"][row]), np.array(arrays["boxes"][row]), mask

    def scores(self, row: int) -> np.ndarray:
        return np.array(self._open()["scores"][row])

    def class_ids(self, row: int) -> np.ndarray:
        """Indices into `classes`; -1 on padding rows."""
        return np.array(self._open()["classes"][row])
