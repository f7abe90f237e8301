"""Train any registered model with Ray Train (DDP over `train.num_workers` workers).

    python -m stages.train          # params.yaml; RAY_ADDRESS / MLFLOW_TRACKING_URI optional

Reads the manifest, the stored object features and the label graph; writes the best
checkpoint (by validation mAP, accuracy for CAER-S) to `artifacts/model/` and the
per-epoch history to `reports/train/`. Every epoch is a Ray Train checkpoint, so with
`train.max_failures` > 0 a killed worker group restarts from the last one.
The per-epoch loop (`train_loop_per_worker`) is the single implementation: the Ray Tune
sweep launches the same loop.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.errors import UserError
from stages.params import Params, load_params, params_from_dict, params_to_dict

MODEL_DIR = Path("artifacts/model")
REPORT_DIR = Path("reports/train")
CHECKPOINT_FILE = "checkpoint.pt"
PRIMARY = {"multilabel": "val_map", "multiclass": "val_accuracy"}


@dataclass(frozen=True)
class TrainPaths:
    """Every input and output location, absolute so Ray workers agree on them."""

    data_root: Path
    manifest_dir: Path = Path("data/manifest")
    labels_json: Path = Path("data/labels.json")
    objects_dir: Path = Path("data/objects")
    graph_dir: Path = Path("data/graph")
    model_dir: Path = MODEL_DIR
    report_dir: Path = REPORT_DIR
    ray_storage: Path = Path(".ray_results")
    body_cache_root: Path = Path("data/cache/body")  # train.frozen_backbone's backbone maps

    def resolved(self) -> "TrainPaths":
        return TrainPaths(**{k: Path(v).resolve() for k, v in self.__dict__.items()})


# --------------------------------------------------------------------------- workers


def _datasets(params: Params, paths: TrainPaths, num_classes: int, task: str, body_cache: str | None = None):
    from stages.data.dataset import PersonDataset
    from stages.data.manifest import read_manifest

    def make(split: str) -> PersonDataset:
        return PersonDataset(
            read_manifest(split, paths.manifest_dir), paths.data_root, paths.objects_dir / split,
            num_classes=num_classes, task=task, input_size=params.model.backbone.input_size,
            max_objects=params.model.boa.max_objects,
            body_features=None if body_cache is None else Path(body_cache) / f"{split}.npy",
        )

    return make("train"), make("val")


def _loader(dataset, params: Params, *, shuffle: bool, world: int, rank: int):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                 seed=params.seed, drop_last=False)
    workers = params.train.loader_workers
    return DataLoader(
        dataset, batch_size=params.train.batch_size, sampler=sampler, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(params.seed),
    )


def gather_predictions(indices: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """Collect every worker's (index, scores) and return scores in dataset order.

    DistributedSampler pads the last round by repeating items; duplicates are identical.
    """
    import torch.distributed as dist

    parts = [(indices, scores)]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (indices, scores))
    out = np.full((size, scores.shape[1]), np.nan, dtype=np.float32)
    for part_indices, part_scores in parts:
        out[part_indices] = part_scores
    if np.isnan(out).any():
        raise RuntimeError("validation predictions are missing for some samples")
    return out


def primary_metric(task: str, targets: np.ndarray, scores: np.ndarray) -> float:
    """Validation mAP (multilabel) or accuracy (multiclass): what checkpoints are ranked by."""
    from stages import metrics

    if task == "multiclass":
        return float(metrics.multiclass_report(targets, scores, scores.shape[1])["accuracy"])
    return float(metrics.average_precision(targets, scores).mean or 0.0)


class InMemoryDataset:
    """Every item of a dataset decoded once and kept in memory (loader-overhead benchmark)."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class EpochLoop:
    """Data, model, optimiser and one train + validate epoch, whoever schedules it.

    Ray Train workers drive it here (`train_loop_per_worker`); the Ray Tune sweep drives
    the same object, so there is one training implementation.

    `config["body_cache"]` (optional): a folder of precomputed backbone maps
    (stages/body_cache.py, `<split>.npy`). The loaders then yield those maps instead of
    crops, the model skips its backbone and the backbone is frozen (not optimised).
    """

    def __init__(self, config: dict[str, Any], *, rank: int = 0, world: int = 1, device: Any = "cpu",
                 wrap_model=None):
        import torch

        from models import build_loss, build_model, model_spec

        self.config, self.rank, self.world, self.device = config, rank, world, device
        self.params = params = params_from_dict(config["params"])
        paths = TrainPaths(**{k: Path(v) for k, v in config["paths"].items()})
        self.task, num_classes = config["task"], config["num_classes"]
        torch.manual_seed(params.seed)
        np.random.seed(params.seed)
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        if config.get("torch_threads"):
            torch.set_num_threads(config["torch_threads"])

        body_cache = config.get("body_cache")
        train_set, self.val_set = _datasets(params, paths, num_classes, self.task, body_cache=body_cache)
        if config.get("preload"):  # benchmarks: the same steps on in-memory tensors, no decoding
            train_set, self.val_set = InMemoryDataset(train_set), InMemoryDataset(self.val_set)
        self.train_loader = _loader(train_set, params, shuffle=True, world=world, rank=rank)
        self.val_loader = _loader(self.val_set, params, shuffle=False, world=world, rank=rank)
        self.val_targets = self.val_set.targets()

        model = build_model(
            params.model, num_classes=num_classes, task=self.task,
            cooccurrence=config.get("cooccurrence"), label_embeddings=config.get("label_embeddings"),
        )
        model.set_object_feature_stats(*config["object_feature_stats"])
        if body_cache:
            model.set_body_input("feature_map")
            model.backbone.requires_grad_(False)  # before _optimizer: it only takes trainable tensors
        self.spec = model_spec(model)
        self.loss_fn = build_loss(params.train.loss if self.task == "multilabel" else "cross_entropy", self.task,
                                  np.asarray(config["label_freq"], dtype=np.float64))
        self.optimizer = _optimizer(model, params)
        self.model = model
        self._wrap = wrap_model
        self.start_epoch, self.best = 0, -np.inf
        self.history: list[dict[str, float]] = []
        self.metric_name = PRIMARY[self.task]

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by `state_dict()`; call before `prepare()`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]

    def prepare(self) -> None:
        """Move/wrap the model for its device and process group (DDP under Ray Train)."""
        self.model = self._wrap(self.model) if self._wrap else self.model.to(self.device)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        import torch

        from stages.data.dataset import model_inputs
        from stages.inference import predict_loader

        clip = self.params.train.grad_clip_norm
        self.train_loader.sampler.set_epoch(epoch)
        self.model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for batch in self.train_loader:
            target = batch["target"].to(self.device)
            loss = self.loss_fn(self.model(*model_inputs(batch, self.device)).logits, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            seen += len(target)
            loss_sum += float(loss.detach()) * len(target)
        train_seconds = time.perf_counter() - started

        indices, scores = predict_loader(self.model, self.val_loader, self.device)
        val_scores = gather_predictions(indices, scores, len(self.val_set))
        value = primary_metric(self.task, self.val_targets, val_scores)
        record = {
            "epoch": epoch, "train_loss": loss_sum / max(seen, 1), self.metric_name: value, "val_metric": value,
            "train_samples_per_s": seen * self.world / max(train_seconds, 1e-9),
        }
        self.history.append(record)
        self.improved = value > self.best
        self.best = max(self.best, value)
        return record

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "best": self.best, "history": self.history, "spec": self.spec,
            "params": self.config["params"], "metric": {self.metric_name: self.history[-1][self.metric_name]},
        }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from Ray's last checkpoint, then train and report each epoch."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    loop = EpochLoop(config, rank=rank, world=world, device=ray.train.torch.get_device(),
                     wrap_model=ray.train.torch.prepare_model)
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as ckpt_dir:
            loop.resume(torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False))
    loop.prepare()
    mlflow_client = _mlflow_client(config) if rank == 0 else None
    chaos = config.get("chaos") or {}
    epochs = loop.params.train.epochs

    for epoch in range(loop.start_epoch, epochs):
        record = loop.run_epoch(epoch)
        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save(loop.state_dict(epoch), Path(tmp) / CHECKPOINT_FILE)
                checkpoint = Checkpoint.from_directory(tmp)
                if mlflow_client is not None:
                    for key, val in record.items():
                        if key != "epoch":
                            mlflow_client.log_metric(config["mlflow"]["run_id"], key, float(val), step=epoch)
                print(f"[train] epoch {epoch + 1}/{epochs} loss {record['train_loss']:.4f} "
                      f"{loop.metric_name} {record['val_metric']:.4f}{' *' if loop.improved else ''} "
                      f"({record['train_samples_per_s']:.1f} samples/s)", flush=True)
            ray.train.report({**record, "best": loop.best}, checkpoint=checkpoint)

        if chaos.get("kill_after_epoch") == epoch and rank == 0:
            marker = Path(chaos["marker"])
            if not marker.exists():  # die once, like a lost node; Ray restarts the group
                marker.write_text(str(os.getpid()))
                os._exit(1)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _optimizer(model, params: Params):
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    cfg = params.train
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UserError(f"train.optimizer must be 'sgd' or 'adamw', not {cfg.optimizer!r}")


def _mlflow_client(config: dict[str, Any]):
    if not config.get("mlflow"):
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=config["mlflow"]["tracking_uri"])


# --------------------------------------------------------------------------- driver


def load_graph(paths: TrainPaths, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    cooc_path = paths.graph_dir / "cooccurrence.npy"
    emb_path = paths.graph_dir / "label_embeddings.npy"
    for path, stage in ((cooc_path, "cooccurrence"), (emb_path, "embeddings")):
        if not path.is_file():
            raise UserError(f"{path} is missing: run `dvc repro {stage}` (or python -m stages.{stage}) first")
    cooccurrence, embeddings = np.load(cooc_path), np.load(emb_path)
    if cooccurrence.shape != (num_classes, num_classes) or embeddings.shape[0] != num_classes:
        raise UserError(f"label graph in {paths.graph_dir} does not match the {num_classes} classes of "
                        "data/labels.json: rerun the cooccurrence and embeddings stages")
    return cooccurrence.astype(np.float32), embeddings.astype(np.float32)


def label_frequencies(manifest_dir: Path, num_classes: int) -> np.ndarray:
    from stages.data.manifest import read_manifest

    labels = read_manifest("train", manifest_dir)["labels"]
    counts = np.zeros(num_classes, dtype=np.float64)
    for row in labels:
        counts[np.asarray(list(row), dtype=np.int64)] += 1
    return counts / max(len(labels), 1)


def object_feature_stats(split_dir: Path, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of the valid object features of one split, streamed in chunks."""
    features = np.load(Path(split_dir) / "features.npy", mmap_mode="r")
    counts = np.load(Path(split_dir) / "counts.npy")
    total, total_sq, n = np.zeros(features.shape[-1]), np.zeros(features.shape[-1]), 0
    for start in range(0, len(counts), chunk):
        block = np.asarray(features[start:start + chunk], dtype=np.float64)
        valid = np.arange(block.shape[1])[None, :] < counts[start:start + chunk, None]
        rows = block[valid]
        total += rows.sum(axis=0)
        total_sq += np.square(rows).sum(axis=0)
        n += len(rows)
    if n == 0:
        return np.zeros(features.shape[-1], np.float32), np.ones(features.shape[-1], np.float32)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def resolve_use_gpu(setting: str | bool) -> bool:
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise UserError(f"train.use_gpu must be auto, true or false, not {setting!r}")
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def worker_config(params: Params, paths: TrainPaths) -> dict[str, Any]:
    """Everything a worker needs, as plain picklable values (paths absolute)."""
    from stages.data.labels import task_of
    from stages.data.manifest import read_labels

    paths = paths.resolved()
    for split in ("train", "val"):
        if not (paths.manifest_dir / f"{split}.parquet").is_file():
            raise UserError(f"{paths.manifest_dir / (split + '.parquet')} is missing: run the ingest stage first")
        if not (paths.objects_dir / split).is_dir():
            raise UserError(f"{paths.objects_dir / split} is missing: run the objects stage first")
    classes = read_labels(paths.labels_json)
    task = task_of(params.data.kind)
    config: dict[str, Any] = {
        "params": params_to_dict(params),
        "paths": {k: str(v) for k, v in paths.__dict__.items()},
        "task": task,
        "num_classes": len(classes),
        "classes": classes,
        "label_freq": label_frequencies(paths.manifest_dir, len(classes)).tolist(),
        "object_feature_stats": object_feature_stats(paths.objects_dir / "train"),
    }
    if task == "multilabel" and params.model.eld.enabled:
        config["cooccurrence"], config["label_embeddings"] = load_graph(paths, len(classes))
    return config


def ray_run_name(prefix: str | None) -> str:
    """A fresh name per fit, unless CTXEMO_RUN_NAME names one to resume.

    Ray Train resumes a run whose name already exists in its storage: a resubmitted cluster
    job that sets CTXEMO_RUN_NAME continues from that run's last checkpoint.
    """
    explicit = os.environ.get("CTXEMO_RUN_NAME")
    if explicit:
        return explicit
    return f"{prefix or 'train'}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def fit(params: Params, paths: TrainPaths, *, mlflow_run: dict[str, str] | None = None,
        chaos: dict[str, Any] | None = None, run_name: str | None = None, body_cache: str | None = None):
    """Run the TorchTrainer; returns the Ray Train Result.

    `body_cache`: a folder of precomputed backbone maps (stages/body_cache.py); the workers
    then train with the backbone frozen (EpochLoop).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from stages.ray_utils import init_ray
    from stages.settings import StorageSettings

    config = worker_config(params, paths)
    config["mlflow"] = mlflow_run
    config["chaos"] = chaos
    if body_cache is not None:
        config["body_cache"] = str(Path(body_cache).resolve())
    init_ray(include_dashboard=True)
    use_gpu = resolve_use_gpu(params.train.use_gpu)
    if not use_gpu:
        # Share the CPUs between the Ray workers instead of each spawning one thread per core.
        cpus = int(ray.cluster_resources().get("CPU", 1))
        config["torch_threads"] = max(1, cpus // max(params.train.num_workers, 1))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=params.train.num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=ray_run_name(run_name),
            # Local `.ray_results` by default; s3://BUCKET/PREFIX/ray when CTXEMO_S3_BUCKET is set,
            # so a restarted worker group on any node resumes from the same checkpoints.
            **StorageSettings.from_env().ray_run_storage(paths.resolved().ray_storage),
            failure_config=FailureConfig(max_failures=params.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=PRIMARY[config["task"]], checkpoint_score_order="max"),
        ),
    )
    return trainer.fit(), config


def export_best(result, config: dict[str, Any], paths: TrainPaths) -> dict[str, Any]:
    """Copy the best checkpoint's weights, spec, labels and params to `paths.model_dir`."""
    import torch

    metric = PRIMARY[config["task"]]
    best = result.get_best_checkpoint(metric=metric, mode="max")
    if best is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with best.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    model_dir = Path(paths.model_dir)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    torch.save({"state_dict": state["model"], "spec": state["spec"], "classes": config["classes"],
                "task": config["task"], "params": state["params"], "epoch": state["epoch"],
                "metric": state["metric"]}, model_dir / "model.pt")
    summary = {"best_epoch": state["epoch"], **state["metric"], "classes": config["classes"],
               "task": config["task"]}
    (model_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"state": state, "summary": summary}


def last_history(result) -> list[dict[str, float]]:
    """Per-epoch records of the whole run (the best checkpoint only knows epochs up to itself)."""
    import torch

    with result.checkpoint.as_directory() as ckpt_dir:
        return torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["history"]


def run(params: Params, paths: TrainPaths, *, track: bool = True, run_name: str | None = None,
        tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train, export the best checkpoint, log everything to MLflow. Returns a summary.

    The MLflow run stays open in the driver for the whole fit, so a failure marks it FAILED.
    """
    import contextlib

    from stages import tracking

    started = time.perf_counter()
    mlflow_run = None
    with contextlib.ExitStack() as stack:
        if track:
            import mlflow

            experiment_id = tracking.setup()
            params_dict = params_to_dict(params)
            active = stack.enter_context(mlflow.start_run(experiment_id=experiment_id,
                                                          run_name=run_name or f"train-{params.model.name}"))
            mlflow.log_params(dict(tracking.flatten({k: params_dict[k] for k in ("seed", "data", "model", "train")})))
            mlflow.set_tags({"ctxemo.stage": "train", "ctxemo.params_hash": tracking.params_hash(params_dict),
                             "ctxemo.git_commit": tracking.git_commit() or "unknown", **(tags or {})})
            mlflow.log_dict(params_dict, "config/params.json")
            mlflow_run = {"run_id": active.info.run_id, "tracking_uri": tracking.tracking_uri()}
        cache = frozen_backbone_cache(params, paths)
        if mlflow_run is not None and cache is not None:
            mlflow.set_tag("ctxemo.body_cache", cache)
        result, config = fit(params, paths, mlflow_run=mlflow_run, run_name=run_name, body_cache=cache)
        if result.error is not None:
            raise result.error
        exported = export_best(result, config, paths)
        history = last_history(result)
        report_dir = Path(paths.report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "history.json").write_text(json.dumps(history, indent=2))
        summary = {k: v for k, v in exported["summary"].items() if k != "classes"}
        summary["epochs"] = len(history)
        if mlflow_run is not None:
            summary["mlflow_run_id"] = mlflow_run["run_id"]
            _log_model(exported, paths)
            (Path(paths.model_dir) / "mlflow_run.json").write_text(json.dumps({"run_id": mlflow_run["run_id"]}))
    summary["checkpoints_dropped"] = drop_checkpoints(result)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (Path(paths.report_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def drop_checkpoints(result) -> int:
    """Delete a finished run's Ray Train checkpoints; returns how many went.

    The best one is exported to model_dir (and logged to MLflow) by then, and a run that
    finished is never resumed, so they only fill the storage: up to three per run (the two
    best and the latest), 735 MB each for the demo model, 25 GB after fifteen ablation runs.
    A failed run never gets here and keeps its checkpoints to resume from.
    """
    checkpoints = {checkpoint.path: checkpoint for checkpoint, _ in (result.best_checkpoints or [])}
    if result.checkpoint is not None:
        checkpoints[result.checkpoint.path] = result.checkpoint
    dropped = 0
    for checkpoint in checkpoints.values():
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
            dropped += 1
        except OSError as exc:  # best effort: a leftover costs space, never correctness
            print(f"[train] could not delete {checkpoint.path}: {exc}", flush=True)
    return dropped


def frozen_backbone_cache(params: Params, paths: TrainPaths) -> str | None:
    """With `train.frozen_backbone`, the folder of backbone maps for train and val (built now,
    or reused when the backbone, its weights and the manifests are unchanged); else None.

    float32, so the maps the heads train on are the maps the exported model (which runs its
    backbone, in eval mode, on crops) computes at evaluation and serving.
    """
    if not params.train.frozen_backbone:
        return None
    from stages import body_cache

    cache = body_cache.run(params, paths, cache_root=paths.body_cache_root, dtype="float32",
                           log=lambda line: print(f"[train] {line}", flush=True))
    print(f"[train] frozen backbone: maps in {cache['dir']} (built {cache['built'] or 'nothing'}, "
          f"reused {cache['reused'] or 'nothing'})", flush=True)
    return str(cache["dir"])


def _log_model(exported: dict[str, Any], paths: TrainPaths) -> None:
    """Best metrics, the checkpoint folder and a loadable `mlflow.pytorch` model, to the active run."""
    import mlflow
    import torch

    from models import model_from_checkpoint

    state = exported["state"]
    model = model_from_checkpoint(state["spec"], state["model"]).eval()
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in state["metric"].items()})
    mlflow.log_metric("best_epoch", state["epoch"])
    mlflow.log_artifacts(str(paths.model_dir), artifact_path="checkpoint")
    # pickle, not pt2: torch.export cannot trace the data-dependent object masking, and the
    # pickled module loads wherever ctxemo is installed (the MLflow model's requirement).
    mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "ctxemo"])


def main(argv: list[str] | None = None) -> int:
    from pipelines.env import apply_embedded_defaults

    apply_embedded_defaults()
    try:
        params = load_params()
        summary = run(params, TrainPaths(data_root=Path(params.data.root)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
