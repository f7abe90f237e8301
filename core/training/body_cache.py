"""Backbone feature maps of every body crop, computed once for frozen-backbone sweeps.

Built by the training stage (`train.frozen_backbone`), the sweep (`tune.frozen_backbone`) and
the ablations; written to `<workspace.body_cache_root>/<fingerprint>/`.

With the backbone frozen, the map it produces for a crop never changes between epochs or
trials, so the sweep computes it once here and its trials train only what comes after it
(BPA, GAP, projection, BOA, ELD / classifier). The map is the backbone output BEFORE BPA,
because BPA is trained.

The cache is keyed by view: the flagship reads the body crop, or the face on CAER-S
(`model.rrla.person_view`), and the view's name, size and normalisation are in the fingerprint.

Layout: `data/cache/body/<fingerprint>/<split>.npy` ([S,C,h,w], row i = manifest row i,
memory-mapped by the loaders) with `<split>.json` beside it, and `fingerprint.json` with what
the fingerprint covers: the backbone config (name, weights), the view, where the weights
come from (a local file's sha256, the ImageNet enum, or random initialisation with its seed
and torch version: the seeded init is exactly the backbone `build_model` creates), the
sha256 of every split manifest, the data root, the preprocessing and the storage dtype.
Change any of them and a new folder is built; nothing is ever reused stale.

The backbone runs in eval mode (BatchNorm with its running statistics), which is what
"frozen" means: a normal, unfrozen training run uses batch statistics instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.params import Params
from core.workspace import Workspace

FORMAT_VERSION = 2
# Bump when core/data/views.py changes what a crop looks like.
PREPROCESSING = "views.crop (floor/ceil pixel box), bilinear resize to the view's size, its mean/std; backbone in eval mode"
DTYPES = ("float16", "float32")
MANIFEST_SPLITS = ("train", "val", "test")


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


FROZEN_BACKBONE_MODELS = ("rrla",)


def has_frozen_path(params: Params) -> bool:
    """Whether `model.name` can train on cached backbone maps. SIB-Net's modules act inside every
    backbone layer and CAER-Net trains its encoders from scratch, so neither can; Kosti and DAG-Net
    could cache their body trunk but have no such path yet."""
    return params.model.name in FROZEN_BACKBONE_MODELS


def flagship_config(params: Params):
    """The flagship's config: the only family with a frozen-backbone path."""
    if params.model.name != "rrla":
        raise UserError(f"frozen backbone (train.frozen_backbone / tune.frozen_backbone): model {params.model.name!r} "
                        "has no frozen-backbone path; only rrla has")
    return params.model.rrla


def cached_view(params: Params) -> tuple[str, Any]:
    """(the person view the flagship reads on this data, its ViewSpec)."""
    from core.data.labels import task_of
    from models.config import view_specs
    from models.rrla import resolve_person_view

    cfg = flagship_config(params)
    view = resolve_person_view(cfg.person_view, task_of(params.data.kind))
    return view, view_specs(cfg.views, (view,), section="model.rrla")[view]


def weights_source(params: Params) -> str:
    """Where the backbone's weights come from, precisely enough to tell two caches apart."""
    import torch
    import torchvision

    backbone = flagship_config(params).backbone
    if backbone.weights:
        path = Path(backbone.weights)
        if not path.is_file():
            raise UserError(f"model.rrla.backbone.weights: file not found: {path.resolve()}")
        return f"file sha256={_sha256(path)}"
    if backbone.pretrained:
        return f"torchvision ImageNet enum for {backbone.name} (torchvision {torchvision.__version__})"
    # Random init is reproducible only for the same seed and the same torch RNG.
    return f"random init seed={params.seed} torch={torch.__version__.split('+')[0]}"


def fingerprint_inputs(params: Params, manifest_dir: Path, data_root: Path, dtype: str) -> dict[str, Any]:
    from models.config import to_dict

    manifests = {split: _sha256(manifest_dir / f"{split}.parquet")
                 for split in MANIFEST_SPLITS if (manifest_dir / f"{split}.parquet").is_file()}
    if not manifests:
        raise UserError(f"no manifest in {manifest_dir}: run the ingest stage first")
    view, spec = cached_view(params)
    return {
        "format": FORMAT_VERSION,
        "backbone": to_dict(flagship_config(params).backbone),
        "view": {"name": view, "size": spec.size, "mean": list(spec.mean), "std": list(spec.std)},
        "weights": weights_source(params),
        "manifests": manifests,
        "data_root": str(Path(data_root).resolve()),
        "preprocessing": PREPROCESSING,
        "dtype": dtype,
    }


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def frozen_backbone(params: Params):
    """The backbone exactly as `build_model` creates it (same seed, same RNG draws), in eval mode.

    RelationalRegionLevelNet builds its backbone first, right after the trainer seeds torch,
    so seeding here and building the backbone alone gives identical weights.
    """
    import torch

    from models.backbones import build_backbone

    torch.manual_seed(params.seed)
    backbone = build_backbone(flagship_config(params).backbone)
    backbone.requires_grad_(False)
    return backbone.eval()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _split_complete(folder: Path, split: str, rows: int) -> bool:
    meta_path = folder / f"{split}.json"
    if not ((folder / f"{split}.npy").is_file() and meta_path.is_file()):
        return False
    return json.loads(meta_path.read_text()).get("rows") == rows


def _extract_split(backbone, dataset, view: str, out_file: Path, dtype: str, batch_size: int, workers: int,
                   device) -> tuple:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    # A name of its own per builder: two processes (an ablation and a sweep, two sweeps) may
    # build the same fingerprint at once; each writes its own file and the last rename wins
    # (the contents are identical: the same seeded backbone on the same crops).
    partial = out_file.with_name(f"{out_file.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial.npy")
    array, row = None, 0
    with torch.no_grad():
        for batch in loader:
            maps = backbone(batch[view].to(device)).float().cpu().numpy()
            if array is None:
                array = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype,
                                                  shape=(len(dataset), *maps.shape[1:]))
            stored = maps.astype(dtype)
            if not np.isfinite(stored).all():
                raise UserError(f"backbone maps overflow {dtype} in {out_file.parent}: "
                                "set tune.cache_dtype: float32")
            array[row:row + len(maps)] = stored
            row += len(maps)
    if array is None:
        raise UserError(f"{out_file.stem} split is empty: nothing to cache")
    shape = tuple(array.shape)
    array.flush()
    del array
    os.replace(partial, out_file)  # a crash mid-split never leaves a file that looks complete
    return shape


def run(params: Params, paths: Workspace, *, cache_root: Path | None = None, splits: tuple[str, ...] = ("train", "val"),
        dtype: str | None = None, device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or reuse) the cached backbone maps of `splits`; returns the folder and what was done.

    `paths`: the workspace (manifest, objects, data root); `cache_root` defaults to its body_cache_root.
    """
    import torch

    from core.data.dataset import FACE_VIEWS, PersonDataset
    from core.data.labels import task_of
    from core.data.manifest import read_labels, read_manifest
    from core.data.person_inputs import read_face_boxes

    dtype = dtype or params.tune.cache_dtype
    if dtype not in DTYPES:
        raise UserError(f"tune.cache_dtype must be one of {DTYPES}, not {dtype!r}")
    started = time.perf_counter()
    inputs = fingerprint_inputs(params, Path(paths.manifest_dir), Path(paths.data_root), dtype)
    folder = Path(cache_root or paths.body_cache_root) / fingerprint(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "fingerprint.json", json.dumps(inputs, indent=2))

    num_classes = len(read_labels(paths.labels_json))
    view, spec = cached_view(params)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone, built, reused, shapes = None, [], [], {}
    for split in splits:
        manifest = read_manifest(split, paths.manifest_dir)
        if _split_complete(folder, split, len(manifest)):
            reused.append(split)
            continue
        if backbone is None:
            backbone = frozen_backbone(params).to(device)
        faces = (read_face_boxes(paths.detections_dir, split, manifest, params.data.kind)
                 if view in FACE_VIEWS else None)
        dataset = PersonDataset(manifest, paths.data_root, num_classes=num_classes, task=task_of(params.data.kind),
                                views=(view,), view_specs={view: spec}, face_boxes=faces)
        split_started = time.perf_counter()
        shape = _extract_split(backbone, dataset, view, folder / f"{split}.npy", dtype, params.train.batch_size,
                               params.train.loader_workers, device)
        _write_atomic(folder / f"{split}.json", json.dumps({
            "rows": len(manifest), "shape": list(shape), "dtype": dtype,
            "sample_ids_sha256": hashlib.sha256("\n".join(manifest["sample_id"]).encode()).hexdigest(),
        }, indent=2))
        shapes[split] = list(shape)
        built.append(split)
        log(f"[body_cache] {split}: {shape[0]} maps {list(shape[1:])} {dtype} "
            f"in {time.perf_counter() - split_started:.1f} s -> {folder / (split + '.npy')}")
    return {"dir": str(folder), "fingerprint": folder.name, "built": built, "reused": reused, "shapes": shapes,
            "seconds": round(time.perf_counter() - started, 1)}
