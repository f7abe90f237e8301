"""The training stage's driver: run the Ray Train loop, export the best checkpoint, track it.

    python -m stages.train          # params.yaml; RAY_ADDRESS / MLFLOW_TRACKING_URI optional

`run` reads the manifest, the stored object features and the label graph (through
core/training/inputs.py), trains with `fit` (a TorchTrainer over `train.num_workers` workers
running core/training/loop.py), writes the best checkpoint (by validation mAP, accuracy for
CAER-S) to `artifacts/model/` and the per-epoch history to `reports/train/`, and logs params,
metrics and the model to MLflow. Every epoch is a Ray Train checkpoint, so with
`train.max_failures` > 0 a killed worker group restarts from the last one.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from core import checkpoints, env
from core.errors import UserError
from core.params import Params, params_to_dict
from core.training.inputs import worker_config
from core.training.loop import CHECKPOINT_FILE, PRIMARY, train_loop_per_worker
from core.workspace import Workspace


def resolve_use_gpu(setting: str | bool) -> bool:
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise UserError(f"train.use_gpu must be auto, true or false, not {setting!r}")
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def ray_run_name(prefix: str | None) -> str:
    """A fresh name per fit, unless CTXEMO_RUN_NAME names one to resume.

    Ray Train resumes a run whose name already exists in its storage: a resubmitted cluster
    job that sets CTXEMO_RUN_NAME continues from that run's last checkpoint.
    """
    explicit = env.run_name_to_resume()
    if explicit:
        return explicit
    return f"{prefix or 'train'}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def fit(params: Params, paths: Workspace, *, mlflow_run: dict[str, str] | None = None,
        run_name: str | None = None, body_cache: str | None = None):
    """Run the TorchTrainer; returns the Ray Train Result.

    `body_cache`: a folder of precomputed backbone maps (core/training/body_cache.py); the workers
    then train with the backbone frozen (EpochLoop).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from core.ray_utils import init_ray
    from core.storage import StorageSettings

    config = worker_config(params, paths)
    config["mlflow"] = mlflow_run
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


def export_best(result, config: dict[str, Any], paths: Workspace) -> dict[str, Any]:
    """Copy the best checkpoint's weights, spec, labels and params to `paths.model_dir`."""
    import torch

    metric = PRIMARY[config["task"]]
    best = result.get_best_checkpoint(metric=metric, mode="max")
    if best is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with best.as_directory() as ckpt_dir:
        state = checkpoints.load(Path(ckpt_dir) / CHECKPOINT_FILE)
    model_dir = Path(paths.model_dir)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    torch.save({"state_dict": state["model"], "spec": state["spec"], "classes": config["classes"],
                "task": config["task"], "params": state["params"], "epoch": state["epoch"],
                "metric": state["metric"]}, model_dir / "model.pt")
    summary = {"model": state["spec"]["name"], "best_epoch": state["epoch"], **state["metric"],
               "classes": config["classes"], "task": config["task"]}
    if state.get("face_fallbacks"):
        summary["face_fallbacks"] = state["face_fallbacks"]
    (model_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"state": state, "summary": summary}


def last_history(result) -> list[dict[str, float]]:
    """Per-epoch records of the whole run (the best checkpoint only knows epochs up to itself)."""
    import torch

    with result.checkpoint.as_directory() as ckpt_dir:
        return checkpoints.load(Path(ckpt_dir) / CHECKPOINT_FILE)["history"]


def run(params: Params, paths: Workspace, *, track: bool = True, run_name: str | None = None,
        tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train, export the best checkpoint, log everything to MLflow. Returns a summary.

    The MLflow run stays open in the driver for the whole fit, so a failure marks it FAILED.
    """
    import contextlib

    from core import tracking

    params = params.for_model()  # the model's own train overrides (model.<name>.train)
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
        report_dir = Path(paths.train_report_dir)
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
    (Path(paths.train_report_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
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


def frozen_backbone_cache(params: Params, paths: Workspace) -> str | None:
    """With `train.frozen_backbone`, the folder of backbone maps for train and val (built now,
    or reused when the backbone, its weights and the manifests are unchanged); else None.

    float32, so the maps the heads train on are the maps the exported model (which runs its
    backbone, in eval mode, on crops) computes at evaluation and serving.
    """
    if not params.train.frozen_backbone:
        return None
    from core.training import body_cache

    cache = body_cache.run(params, paths, cache_root=paths.body_cache_root, dtype="float32",
                           log=lambda line: print(f"[train] {line}", flush=True))
    print(f"[train] frozen backbone: maps in {cache['dir']} (built {cache['built'] or 'nothing'}, "
          f"reused {cache['reused'] or 'nothing'})", flush=True)
    return str(cache["dir"])


def _log_model(exported: dict[str, Any], paths: Workspace) -> None:
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
