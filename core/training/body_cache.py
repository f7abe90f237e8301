"""What the frozen trunks compute from every person, computed once for frozen-backbone runs.

Built by the training stage (`train.frozen_backbone`), the sweep (`tune.frozen_backbone`) and
the ablations; written to `<workspace.body_cache_root>/<fingerprint>/`.

With the trunks frozen, what they produce for a person never changes between epochs or trials,
so it is computed once here and the runs train only what comes after it. What is cached is the
model's own choice (models/frozen.py, `frozen_inputs()`): the flagship's backbone map of the
person view BEFORE BPA (BPA is trained); DAG-Net's body-trunk feature and its context trunk's
layer3 map (BAM, GSAM's branch and LSAM are trained and read what they read). Families without
the protocol (SIB-Net: its modules act inside every backbone layer; CAER-Net: trained from
scratch; Kosti) have no frozen path and say so.

Layout: `data/cache/body/<fingerprint>/<split>.<key>.npy` (row i = manifest row i, memory-mapped
by the loaders) with `<split>.json` beside it, and `fingerprint.json` with what the fingerprint
covers: the model family, the frozen trunks' configs, the pixel views they read (name, size,
normalisation), where each trunk's weights come from (a local file's sha256, the ImageNet enum,
or random initialisation with its seed and torch version: every family builds its frozen trunks
first, so the seeded init is exactly the one `build_model` creates), the sha256 of every split
manifest, the data root, the preprocessing and the storage dtype. Change any of them and a new
folder is built; nothing is ever reused stale.

The trunks run in eval mode (BatchNorm with its running statistics), which is what "frozen"
means: a normal, unfrozen training run uses batch statistics instead.

`run_on_ray` runs `run` as a Ray task that asks for the CPUs of one training worker (and a GPU
when the cluster has one), so on a cluster the trunks run on a worker node, never in the driver
(a CPU-only head); the folder must be on storage every node shares (the workspace), as the
training workers read it from there.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.params import Params
from core.workspace import Workspace

FORMAT_VERSION = 3
# Bump when core/data/views.py changes what a crop looks like.
PREPROCESSING = "views.crop (floor/ceil pixel box), bilinear resize to the view's size, its mean/std; trunks in eval mode"
DTYPES = ("float16", "float32")
MANIFEST_SPLITS = ("train", "val", "test")


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _rrla_views(params: Params) -> tuple[str, ...]:
    from core.data.labels import task_of
    from models.rrla import resolve_person_view

    return (resolve_person_view(params.model.rrla.person_view, task_of(params.data.kind)),)


@dataclass(frozen=True)
class FrozenPath:
    """What a family's frozen trunks depend on (the model itself says what they compute)."""
    backbones: tuple[str, ...]  # attributes of `model.<family>` holding the frozen trunks' BackboneConfig
    views: Callable[[Params], tuple[str, ...]]  # the pixel views the frozen trunks read
    cache_paths: tuple[str, ...]  # params prefixes that change the cached tensors (the sweep never searches them)


FROZEN_PATHS: dict[str, FrozenPath] = {
    "rrla": FrozenPath(("backbone",), _rrla_views,
                       ("model.rrla.backbone.", "model.rrla.views.", "model.rrla.person_view")),
    "dagnet": FrozenPath(("body_backbone", "context_backbone"), lambda params: ("body", "image_body_masked"),
                         ("model.dagnet.body_backbone.", "model.dagnet.context_backbone.",
                          "model.dagnet.views.body.", "model.dagnet.views.image_body_masked.")),
}
FROZEN_BACKBONE_MODELS = tuple(FROZEN_PATHS)
# Every family: the data, and the seed (random initialisation of the trunks).
SHARED_CACHE_PATHS = ("data.", "seed")


def has_frozen_path(params: Params) -> bool:
    """Whether `model.name` can train on cached trunk outputs (see the module docstring for who cannot)."""
    return params.model.name in FROZEN_PATHS


def frozen_path(params: Params) -> FrozenPath:
    if not has_frozen_path(params):
        raise UserError(f"frozen backbone (train.frozen_backbone / tune.frozen_backbone): model {params.model.name!r} "
                        f"has no frozen-backbone path; {', '.join(FROZEN_BACKBONE_MODELS)} have")
    return FROZEN_PATHS[params.model.name]


def cache_paths(params: Params) -> tuple[str, ...]:
    """The params prefixes a frozen-backbone sweep of `model.name` may not search."""
    return (frozen_path(params).cache_paths if has_frozen_path(params) else ()) + SHARED_CACHE_PATHS


def cached_views(params: Params) -> dict[str, Any]:
    """{pixel view the frozen trunks read: its ViewSpec}."""
    from models.config import view_specs

    name = params.model.name
    return view_specs(params.model.config.views, frozen_path(params).views(params), section=f"model.{name}")


def weights_source(backbone, section: str, seed: int) -> str:
    """Where a trunk's weights come from, precisely enough to tell two caches apart."""
    import torch
    import torchvision

    if backbone.weights:
        path = Path(backbone.weights)
        if not path.is_file():
            raise UserError(f"{section}.weights: file not found: {path.resolve()}")
        return f"file sha256={_sha256(path)}"
    if backbone.pretrained:
        return f"torchvision ImageNet enum for {backbone.name} (torchvision {torchvision.__version__})"
    # Random init is reproducible only for the same seed and the same torch RNG.
    return f"random init seed={seed} torch={torch.__version__.split('+')[0]}"


def fingerprint_inputs(params: Params, manifest_dir: Path, data_root: Path, dtype: str) -> dict[str, Any]:
    from models.config import to_dict

    manifests = {split: _sha256(manifest_dir / f"{split}.parquet")
                 for split in MANIFEST_SPLITS if (manifest_dir / f"{split}.parquet").is_file()}
    if not manifests:
        raise UserError(f"no manifest in {manifest_dir}: run the ingest stage first")
    name, path = params.model.name, frozen_path(params)
    trunks = {attr: getattr(params.model.config, attr) for attr in path.backbones}
    return {
        "format": FORMAT_VERSION,
        "model": name,
        "backbones": {attr: to_dict(cfg) for attr, cfg in trunks.items()},
        "views": {view: {"size": spec.size, "mean": list(spec.mean), "std": list(spec.std)}
                  for view, spec in cached_views(params).items()},
        "weights": {attr: weights_source(cfg, f"model.{name}.{attr}", params.seed) for attr, cfg in trunks.items()},
        "manifests": manifests,
        "data_root": str(Path(data_root).resolve()),
        "preprocessing": PREPROCESSING,
        "dtype": dtype,
    }


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def frozen_model(params: Params, paths: Workspace, num_classes: int):
    """The model exactly as the training loop builds it (same seed, same RNG draws), in eval mode,
    for its frozen trunks (`frozen_inputs()`); nothing of it is trained."""
    import torch

    from core.data.labels import task_of
    from core.training.inputs import load_graph, reads_label_graph
    from models import build_model
    from models.frozen import has_frozen_path as implements_protocol

    task = task_of(params.data.kind)
    graph = (load_graph(paths, num_classes) if task == "multilabel" and reads_label_graph(params.model.config)
             else (None, None))
    torch.manual_seed(params.seed)
    model = build_model(params.model.name, params.model.config, num_classes=num_classes, task=task,
                        cooccurrence=graph[0], label_embeddings=graph[1])
    if not implements_protocol(model):
        raise UserError(f"model {params.model.name!r} does not implement the frozen-backbone protocol (models/frozen.py)")
    try:
        model.frozen_inputs()
    except ValueError as exc:
        raise UserError(f"frozen backbone (model.{params.model.name}): {exc}") from exc
    model.requires_grad_(False)
    return model.eval()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def split_files(folder: str | Path, split: str, keys) -> dict[str, Path]:
    """{key: the cached tensors of `split` under that key} in a cache folder."""
    return {key: Path(folder) / f"{split}.{key}.npy" for key in keys}


def _split_complete(folder: Path, split: str, keys: tuple[str, ...], rows: int) -> bool:
    meta_path = folder / f"{split}.json"
    if not (meta_path.is_file() and all(path.is_file() for path in split_files(folder, split, keys).values())):
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("rows") == rows and sorted(meta.get("shapes", {})) == sorted(keys)


def _extract_split(model, dataset, out_files: dict[str, Path], dtype: str, batch_size: int, workers: int,
                   device) -> dict[str, tuple]:
    import torch
    from torch.utils.data import DataLoader

    encoders = model.frozen_inputs()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    # A name of its own per builder: two processes (an ablation and a sweep, two sweeps) may
    # build the same fingerprint at once; each writes its own files and the last rename wins
    # (the contents are identical: the same seeded trunks on the same crops).
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = {key: path.with_name(f"{path.name}.{suffix}.partial.npy") for key, path in out_files.items()}
    arrays: dict[str, np.ndarray] = {}
    row = 0
    with torch.no_grad():
        for batch in loader:
            for key, frozen in encoders.items():
                values = frozen.encode(batch[frozen.view].to(device)).float().cpu().numpy()
                if key not in arrays:
                    arrays[key] = np.lib.format.open_memmap(partial[key], mode="w+", dtype=dtype,
                                                            shape=(len(dataset), *values.shape[1:]))
                stored = values.astype(dtype)
                if not np.isfinite(stored).all():
                    raise UserError(f"frozen {key} values overflow {dtype} in {out_files[key].parent}: "
                                    "set tune.cache_dtype: float32")
                arrays[key][row:row + len(values)] = stored
            row += len(batch["index"])
    if not arrays:
        raise UserError(f"an empty split: nothing to cache in {next(iter(out_files.values())).parent}")
    shapes = {}
    for key, array in arrays.items():
        shapes[key] = tuple(array.shape)
        array.flush()
    arrays.clear()
    for key, path in out_files.items():
        os.replace(partial[key], path)  # a crash mid-split never leaves a file that looks complete
    return shapes


def run_on_ray(params: Params, paths: Workspace, num_cpus: float | None = None, **options: Any) -> dict[str, Any]:
    """`run` as a Ray task (see the module docstring) reserving `num_cpus` (default: a training
    worker's `train.cpus_per_worker`, else 1); its summary says where it ran (`node_id`, `pid`)."""
    import ray

    from core.ray_utils import cluster_gpus, init_ray

    init_ray()
    resources = {"num_cpus": num_cpus or params.train.cpus_per_worker or 1,
                 "num_gpus": 1 if cluster_gpus() > 0 else 0}
    task = ray.remote(**resources)(_run_and_say_where)
    return ray.get(task.remote(params, paths.resolved(), **options))


def _run_and_say_where(params: Params, paths: Workspace, **options: Any) -> dict[str, Any]:
    import ray

    return {**run(params, paths, **options), "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def run(params: Params, paths: Workspace, *, cache_root: Path | None = None, splits: tuple[str, ...] = ("train", "val"),
        dtype: str | None = None, device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or reuse) the frozen trunks' outputs of `splits`; returns the folder and what was done.

    `paths`: the workspace (manifest, objects, data root); `cache_root` defaults to its body_cache_root.
    The summary's `keys` are what the loaders read from the folder (`split_files`), `decoded` the
    pixel views the model still decodes with its trunks frozen (none for the flagship).
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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = frozen_model(params, paths, num_classes).to(device)
    encoders = model.frozen_inputs()
    keys = tuple(encoders)
    specs = cached_views(params)
    views = tuple(dict.fromkeys(frozen.view for frozen in encoders.values()))
    if set(views) != set(specs):
        raise UserError(f"model {params.model.name!r}: its frozen trunks read {list(views)}, but the cache "
                        f"fingerprints {list(specs)} (core/training/body_cache.py FROZEN_PATHS)")
    built, reused, shapes = [], [], {}
    for split in splits:
        manifest = read_manifest(split, paths.manifest_dir)
        if _split_complete(folder, split, keys, len(manifest)):
            reused.append(split)
            continue
        faces = (read_face_boxes(paths.detections_dir, split, manifest, params.data.kind)
                 if FACE_VIEWS & set(views) else None)
        dataset = PersonDataset(manifest, paths.data_root, num_classes=num_classes, task=task_of(params.data.kind),
                                views=views, view_specs=specs, face_boxes=faces)
        split_started = time.perf_counter()
        split_shapes = _extract_split(model, dataset, split_files(folder, split, keys), dtype,
                                      params.train.batch_size, params.train.loader_workers, device)
        _write_atomic(folder / f"{split}.json", json.dumps({
            "rows": len(manifest), "shapes": {key: list(shape) for key, shape in split_shapes.items()},
            "dtype": dtype,
            "sample_ids_sha256": hashlib.sha256("\n".join(manifest["sample_id"]).encode()).hexdigest(),
        }, indent=2))
        shapes[split] = {key: list(shape) for key, shape in split_shapes.items()}
        built.append(split)
        described = ", ".join(f"{key} {list(shape[1:])}" for key, shape in split_shapes.items())
        log(f"[body_cache] {split}: {len(manifest)} persons, {described} {dtype} "
            f"in {time.perf_counter() - split_started:.1f} s -> {folder}")
    model.freeze_backbone()
    decoded = [view for view in model.views if view != "objects" and view not in keys]
    return {"dir": str(folder), "fingerprint": folder.name, "keys": list(keys), "decoded": decoded, "built": built,
            "reused": reused, "shapes": shapes, "seconds": round(time.perf_counter() - started, 1)}
