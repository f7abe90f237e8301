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

`run_on_ray` fills the arrays with a Ray Data job: each split is cut into row ranges of whole
batches, and an actor pool (each actor reserving a training worker's CPUs, and a GPU when the
cluster has one) runs the trunks on them and writes the rows straight into the memory-mapped
files. So on a cluster the trunks run on the worker nodes, never in the driver (a CPU-only head,
which only runs them on one person to learn the shapes); the folder must be on storage every
node shares (the workspace), as the training workers read it from there.
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


class SplitFiller:
    """Writes the frozen trunks' outputs of row ranges of a split into its (pre-made) arrays.

    One per process: the model is built once (seeded exactly as training builds it) and a split's
    dataset once. In-process it fills whole splits; as a Ray Data actor (`run_on_ray`) it fills
    the row ranges it is handed, writing straight into the memory-mapped files on shared storage,
    so the driver never holds the maps.
    """

    def __init__(self, params: Params, paths: Workspace, files: dict[str, dict[str, str]], dtype: str,
                 device: str | None = None, torch_threads: int | None = None):
        import torch

        from core.data.manifest import read_labels

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.params, self.paths, self.dtype = params, paths, dtype
        self.files = files  # {split: {key: partial .npy}}
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.num_classes = len(read_labels(paths.labels_json))
        self.model = frozen_model(params, paths, self.num_classes).to(self.device)
        self.datasets: dict[str, Any] = {}

    def dataset(self, split: str):
        if split not in self.datasets:
            self.datasets[split] = split_dataset(self.params, self.paths, split, self.num_classes)
        return self.datasets[split]

    def fill(self, split: str, start: int, stop: int) -> int:
        """Rows [start, stop) of `split`, in batches of train.batch_size; returns how many."""
        import torch
        from torch.utils.data import DataLoader, Subset

        encoders = self.model.frozen_inputs()
        arrays = {key: np.load(path, mmap_mode="r+") for key, path in self.files[split].items()}
        loader = DataLoader(Subset(self.dataset(split), range(start, stop)), batch_size=self.params.train.batch_size,
                            shuffle=False, num_workers=self.params.train.loader_workers)
        row = start
        with torch.no_grad():
            for batch in loader:
                for key, frozen in encoders.items():
                    stored = frozen.encode(batch[frozen.view].to(self.device)).float().cpu().numpy().astype(self.dtype)
                    if not np.isfinite(stored).all():
                        raise UserError(f"frozen {key} values overflow {self.dtype} in {Path(arrays[key].filename).parent}: "
                                        "set tune.cache_dtype: float32")
                    arrays[key][row:row + len(stored)] = stored
                row += len(batch["index"])
        for array in arrays.values():
            array.flush()
        return row - start

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data: rows of (split, start, stop) in; what each wrote, and where, out."""
        import ray

        rows = [self.fill(str(split), int(a), int(b)) for split, a, b in zip(batch["split"], batch["start"], batch["stop"])]
        node = ray.get_runtime_context().get_node_id()
        return {"split": batch["split"], "rows": np.array(rows), "node_id": np.array([node] * len(rows), dtype=object),
                "pid": np.array([os.getpid()] * len(rows))}


def split_dataset(params: Params, paths: Workspace, split: str, num_classes: int):
    """The split's PersonDataset decoding only the views the frozen trunks read."""
    from core.data.dataset import FACE_VIEWS, PersonDataset
    from core.data.labels import task_of
    from core.data.manifest import read_manifest
    from core.data.person_inputs import read_face_boxes

    specs = cached_views(params)
    manifest = read_manifest(split, paths.manifest_dir)
    faces = (read_face_boxes(paths.detections_dir, split, manifest, params.data.kind)
             if FACE_VIEWS & set(specs) else None)
    return PersonDataset(manifest, paths.data_root, num_classes=num_classes, task=task_of(params.data.kind),
                         views=tuple(specs), view_specs=specs, face_boxes=faces)


def make_partial_arrays(model, dataset, folder: Path, split: str, keys: tuple[str, ...], dtype: str
                        ) -> dict[str, str]:
    """Empty arrays of the split's shapes, under names of their own (renamed when complete).

    A name of its own per builder: two processes (an ablation and a sweep, two sweeps) may build
    the same fingerprint at once; each writes its own files and the last rename wins (the
    contents are identical: the same seeded trunks on the same crops). The shapes come from the
    trunks run on the split's first person.
    """
    import torch

    if len(dataset) == 0:
        raise UserError(f"an empty split: nothing to cache in {folder} ({split})")
    first = dataset[0]
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = {}
    with torch.no_grad():
        for key, frozen in model.frozen_inputs().items():
            device = next(model.parameters()).device
            shape = tuple(frozen.encode(first[frozen.view][None].to(device)).shape[1:])
            path = folder / f"{split}.{key}.{suffix}.partial.npy"
            np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(dataset), *shape)).flush()
            partial[key] = str(path)
    return partial


def fill_in_process(filler: SplitFiller, rows: dict[str, int]) -> tuple[dict[str, int], list[int]]:
    for split, count in rows.items():
        filler.fill(split, 0, count)
    return {"in-process": sum(rows.values())}, [os.getpid()]


def fill_on_ray(filler_args: dict[str, Any], rows: dict[str, int], num_cpus: float, num_gpus: int,
                batch_size: int) -> tuple[dict[str, int], list[int]]:
    """The row ranges of every split over a Ray Data actor pool; ({node id: rows written there}, pids)."""
    import ray

    from core.ray_utils import autoscaling_pool, cluster_cpus, user_error_in

    # Ranges of whole batches (the same batches as in-process), a few per actor for balance.
    actors = max(1, int(cluster_cpus() // max(num_cpus, 1)))
    chunk = max(batch_size, -(-sum(rows.values()) // (4 * actors) // batch_size) * batch_size)
    ranges = [{"split": split, "start": a, "stop": min(a + chunk, count)}
              for split, count in rows.items() for a in range(0, count, chunk)]
    dataset = ray.data.from_items(ranges, override_num_blocks=len(ranges))
    written = dataset.map_batches(SplitFiller, fn_constructor_kwargs={
        **filler_args, "torch_threads": None if num_gpus else max(1, int(num_cpus))},
        batch_size=1, batch_format="numpy", compute=autoscaling_pool(min(actors, len(ranges)), tasks_in_flight=1),
        num_cpus=num_cpus, num_gpus=num_gpus)
    by_node: dict[str, int] = {}
    pids: set[int] = set()
    try:
        for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
            for node, count, pid in zip(batch["node_id"], batch["rows"], batch["pid"]):
                by_node[str(node)] = by_node.get(str(node), 0) + int(count)
                pids.add(int(pid))
    except Exception as exc:  # Ray wraps what the actor raised; a user's mistake keeps its message
        raise user_error_in(exc) or exc
    if sum(by_node.values()) != sum(rows.values()):
        raise RuntimeError(f"body cache: {sum(by_node.values())} rows written of {sum(rows.values())}")
    return by_node, sorted(pids)


def run_on_ray(params: Params, paths: Workspace, num_cpus: float | None = None, **options: Any) -> dict[str, Any]:
    """`run` with the trunks on a Ray Data actor pool (see the module docstring); each actor reserves
    `num_cpus` (default: a training worker's `train.cpus_per_worker`, else 1) and a GPU when the
    cluster has one. The summary's `written_by` says which nodes wrote how many rows."""
    from core.ray_utils import cluster_gpus, init_ray

    init_ray()
    return run(params, paths, ray_resources={"num_cpus": num_cpus or params.train.cpus_per_worker or 1,
                                             "num_gpus": 1 if cluster_gpus() > 0 else 0}, **options)


def run(params: Params, paths: Workspace, *, cache_root: Path | None = None, splits: tuple[str, ...] = ("train", "val"),
        dtype: str | None = None, device: str | None = None, ray_resources: dict[str, Any] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or reuse) the frozen trunks' outputs of `splits`; returns the folder and what was done.

    `paths`: the workspace (manifest, objects, data root); `cache_root` defaults to its body_cache_root.
    The summary's `keys` are what the loaders read from the folder (`split_files`), `decoded` the
    pixel views the model still decodes with its trunks frozen (none for the flagship).
    `ray_resources` ({num_cpus, num_gpus} per actor): fill the arrays on Ray Data (`run_on_ray`).
    """
    import torch

    from core.data.manifest import read_manifest

    dtype = dtype or params.tune.cache_dtype
    if dtype not in DTYPES:
        raise UserError(f"tune.cache_dtype must be one of {DTYPES}, not {dtype!r}")
    started = time.perf_counter()
    inputs = fingerprint_inputs(params, Path(paths.manifest_dir), Path(paths.data_root), dtype)
    folder = Path(cache_root or paths.body_cache_root) / fingerprint(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "fingerprint.json", json.dumps(inputs, indent=2))

    device = device or ("cuda" if torch.cuda.is_available() and not ray_resources else "cpu")
    filler = SplitFiller(params, paths, {}, dtype, device)  # here: the shapes, the views, the checks
    model = filler.model
    encoders = model.frozen_inputs()
    keys = tuple(encoders)
    specs = cached_views(params)
    views = tuple(dict.fromkeys(frozen.view for frozen in encoders.values()))
    if set(views) != set(specs):
        raise UserError(f"model {params.model.name!r}: its frozen trunks read {list(views)}, but the cache "
                        f"fingerprints {list(specs)} (core/training/body_cache.py FROZEN_PATHS)")
    manifests = {split: read_manifest(split, paths.manifest_dir) for split in splits}
    reused = [s for s in splits if _split_complete(folder, s, keys, len(manifests[s]))]
    todo = [s for s in splits if s not in reused]
    for split in todo:
        filler.files[split] = make_partial_arrays(model, filler.dataset(split), folder, split, keys, dtype)
    fill_started = time.perf_counter()
    rows = {split: len(manifests[split]) for split in todo}
    try:
        if not todo:
            written_by, pids = {}, []
        elif ray_resources:
            filler_args = {"params": params, "paths": paths.resolved(), "files": filler.files, "dtype": dtype}
            written_by, pids = fill_on_ray(filler_args, rows, ray_resources["num_cpus"], ray_resources["num_gpus"],
                                           params.train.batch_size)
        else:
            written_by, pids = fill_in_process(filler, rows)
    except BaseException:
        for files in filler.files.values():
            for path in files.values():
                Path(path).unlink(missing_ok=True)
        raise
    shapes = {}
    for split in todo:
        split_shapes = {}
        for key, path in filler.files[split].items():
            split_shapes[key] = np.load(path, mmap_mode="r").shape
            os.replace(path, split_files(folder, split, [key])[key])  # a crash never leaves a file that looks complete
        _write_atomic(folder / f"{split}.json", json.dumps({
            "rows": rows[split], "shapes": {key: list(shape) for key, shape in split_shapes.items()}, "dtype": dtype,
            "sample_ids_sha256": hashlib.sha256("\n".join(manifests[split]["sample_id"]).encode()).hexdigest(),
        }, indent=2))
        shapes[split] = {key: list(shape) for key, shape in split_shapes.items()}
        described = ", ".join(f"{key} {list(shape[1:])}" for key, shape in split_shapes.items())
        log(f"[body_cache] {split}: {rows[split]} persons, {described} {dtype} -> {folder}")
    if todo:
        log(f"[body_cache] {sum(rows.values())} persons in {time.perf_counter() - fill_started:.1f} s, written by "
            + ", ".join(f"{where[:12]} ({count} rows)" for where, count in written_by.items()))
    model.freeze_backbone()
    decoded = [view for view in model.views if view != "objects" and view not in keys]
    return {"dir": str(folder), "fingerprint": folder.name, "keys": list(keys), "decoded": decoded, "built": todo,
            "reused": reused, "shapes": shapes, "written_by": written_by, "writer_pids": pids,
            "seconds": round(time.perf_counter() - started, 1)}
