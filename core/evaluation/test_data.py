"""The version of the test data a test metric was computed on, read from the data itself.

Two test metrics compare only when they were computed on the same persons, labels and inputs.
`dvc.lock` cannot say so: it records what DVC last ran, and a stage run by hand (`ctxemo stage
...`, `python -m stages.<name>`) changes the data without touching it. So the evaluation stage
writes `test_data_version` into reports/metrics.json, and the promotion gate compares it with
the champion's and with the workspace's data now (pipelines/registry.py).

The version is a sha256 over everything the test score reads: the test manifest (persons,
boxes, labels, image paths), the class list, the test images' bytes, the stored object features
of the test split and the face detections of the test split. Hashing is sequential reading, a
few seconds per GB; the demo's test split takes milliseconds.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def _add_file(digest, path: Path, name: str) -> None:
    digest.update(f"\0{name}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)


def test_data_version(paths, split: str = "test") -> str | None:
    """16 hex digits over what scoring `split` reads (None when the workspace has no such manifest)."""
    import pyarrow.parquet as pq

    manifest = Path(paths.manifest_dir) / f"{split}.parquet"
    if not manifest.is_file():
        return None
    digest = hashlib.sha256()
    _add_file(digest, manifest, "manifest")
    if Path(paths.labels_json).is_file():
        _add_file(digest, Path(paths.labels_json), "labels")
    for folder, name in ((Path(paths.objects_dir) / split, "objects"), (Path(paths.detections_dir), "detections")):
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                if file.is_file() and (name == "objects" or file.stem == split):
                    _add_file(digest, file, f"{name}/{file.name}")
    if paths.data_root is not None:
        for image in sorted(set(pq.read_table(manifest, columns=["image_path"]).column(0).to_pylist())):
            file = Path(paths.data_root) / image
            if file.is_file():
                _add_file(digest, file, f"image/{image}")
            else:  # a missing image changes what scoring reads: it is part of the version too
                digest.update(f"\0missing/{image}\0".encode())
    return digest.hexdigest()[:16]
