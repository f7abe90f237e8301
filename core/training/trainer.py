"""The training stage's driver: run the Ray Train loop, export the best checkpoint, track it.

    python -m stages.train          # params.yaml; RAY_ADDRESS / MLFLOW_TRACKING_URI optional

`run` reads the manifest, the stored object features and the label graph (through
core/training/inputs.py), trains with `fit` (Ray Train over `train.num_workers` workers running
core/training/loop.py, with core/training/backend.py's torch backend), writes the best checkpoint
(by validation mAP, accuracy for CAER-S) to `artifacts/model/` and the per-epoch history to
`reports/train/`, and logs params, metrics and the model to MLflow. Every epoch is a Ray Train
checkpoint, so with `train.max_failures` > 0 a killed worker group restarts from the last one.

A killed driver (core/training/recovery.py): the next run marks its MLflow run FAILED, and when
it has the same params, code and data it resumes the killed run's Ray Train run from its latest
checkpoint (or deletes it, saying why, when that checkpoint cannot be resumed correctly).
`artifacts/model` is written next to itself and renamed into place: never half-written.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from core import checkpoints, env
from core.errors import UserError
from core.params import Params, params_to_dict
from core.training import recovery
from core.training.inputs import worker_config
from core.training.loop import CHECKPOINT_FILE, PRIMARY, train_loop_per_worker
from core.workspace import Workspace

CHECKPOINT_REMEDY = "train again (`dvc repro train`): this run's checkpoints are damaged"


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
        run_name: str | None = None, body_cache: str | None = None, plan: recovery.RunPlan | None = None):
    """Run the Ray Train run (TorchTrainer's, without torch in this process); returns its Result.

    `body_cache`: a folder of precomputed backbone maps (core/training/body_cache.py); the workers
    then train with the backbone frozen (EpochLoop). `plan` (recovery.plan_run, made here when not
    given): the Ray run name, a killed run's when it is resumed.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from core.ray_utils import init_ray
    from core.training.backend import data_parallel_trainer

    config = worker_config(params, paths)
    config["mlflow"] = mlflow_run
    plan = plan or recovery.plan_run(params_to_dict(params), paths, run_name, fresh_name=ray_run_name, log=_log)
    if body_cache is not None:
        config["body_cache"] = str(Path(body_cache).resolve())
    init_ray(include_dashboard=True)
    use_gpu = resolve_use_gpu(params.train.use_gpu)
    # With train.cpus_per_worker the worker's threads are its reservation; without, each worker
    # takes its node's share (core/training/loop.py worker_threads) instead of one thread per core.
    config["torch_threads"] = params.train.cpus_per_worker
    trainer = data_parallel_trainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=scaling_config(params, use_gpu),
        run_config=RunConfig(
            name=plan.name,
            # Local `.ray_results` by default; s3://BUCKET/PREFIX/ray when CTXEMO_S3_BUCKET is set,
            # so a restarted worker group on any node resumes from the same checkpoints.
            **plan.storage,
            failure_config=FailureConfig(max_failures=params.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=PRIMARY[config["task"]], checkpoint_score_order="max"),
        ),
    )
    run_id = (mlflow_run or {}).get("run_id")
    recovery.write_marker(plan, "running", mlflow_run_id=run_id, log=_log)
    try:
        result = trainer.fit()
    except BaseException:
        recovery.write_marker(plan, "failed", mlflow_run_id=run_id, log=_log)
        raise
    recovery.write_marker(plan, "failed" if result.error is not None else recovery.TRAINING_DONE,
                          mlflow_run_id=run_id, log=_log)
    return result, config


def scaling_config(params: Params, use_gpu: bool):
    """Ray Train's ScalingConfig: `train.num_workers` workers, each reserving `train.cpus_per_worker`
    CPUs (and a GPU) when it is set, Ray's default of 1 CPU otherwise."""
    from ray.train import ScalingConfig

    cpus = params.train.cpus_per_worker
    resources = None if cpus is None else {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    return ScalingConfig(num_workers=params.train.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def _log(line: str) -> None:
    print(f"[train] {line}", flush=True)


def export_best(result, config: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """Write the best checkpoint's weights, spec, labels and params to `model_dir` (an empty folder:
    `run` stages it next to `paths.model_dir` and renames it into place)."""
    import torch

    metric = PRIMARY[config["task"]]
    best = result.get_best_checkpoint(metric=metric, mode="max")
    if best is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with best.as_directory() as ckpt_dir:
        state = checkpoints.load(Path(ckpt_dir) / CHECKPOINT_FILE, remedy=CHECKPOINT_REMEDY)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state["model"], "spec": state["spec"], "classes": config["classes"],
                "task": config["task"], "params": state["params"], "epoch": state["epoch"],
                "metric": state["metric"]}, model_dir / "model.pt")
    summary = {"model": state["spec"]["name"], "best_epoch": state["epoch"], **state["metric"],
               "classes": config["classes"], "task": config["task"]}
    if state.get("face_fallbacks"):
        summary["face_fallbacks"] = state["face_fallbacks"]
    (model_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"state": state, "summary": summary}


def last_state(result) -> dict[str, Any]:
    """The last checkpoint's state: per-epoch records and worker placement of the whole run (the
    best checkpoint only knows epochs up to itself)."""
    with result.checkpoint.as_directory() as ckpt_dir:
        return checkpoints.load(Path(ckpt_dir) / CHECKPOINT_FILE, remedy=CHECKPOINT_REMEDY)


def run(params: Params, paths: Workspace, *, track: bool = True, run_name: str | None = None,
        tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train, export the best checkpoint, log everything to MLflow. Returns a summary.

    The MLflow run stays open in the driver for the whole fit, so a failure marks it FAILED; a
    killed driver's run is marked FAILED by the next run, which resumes its Ray Train run when
    the params, code and data are the same (core/training/recovery.py).
    """
    import contextlib

    params = params.for_model()  # the model's own train overrides (model.<name>.train)
    started = time.perf_counter()
    plan = recovery.plan_run(params_to_dict(params), paths, run_name, fresh_name=ray_run_name, log=_log)
    with contextlib.ExitStack() as stack:
        mlflow_run = _start_tracking(stack, params, plan, run_name, tags) if track else None
        built = frozen_backbone_cache(params, paths)
        cache = built and built["dir"]
        if mlflow_run is not None and cache is not None:
            import mlflow

            mlflow.set_tag("ctxemo.body_cache", cache)
        result, config = fit(params, paths, mlflow_run=mlflow_run, run_name=run_name, body_cache=cache, plan=plan)
        if result.error is not None:
            raise result.error
        summary = _export(result, config, paths, mlflow_run, plan)
    if built:
        summary["body_cache"] = {key: built[key] for key in ("dir", "built", "reused", "seconds", "written_by",
                                                             "writer_pids")}
    summary["checkpoints_dropped"] = drop_checkpoints(result)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (Path(paths.train_report_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _start_tracking(stack, params: Params, plan: recovery.RunPlan, run_name: str | None,
                    tags: dict[str, str] | None) -> dict[str, str]:
    """Open the MLflow run (after closing the runs of killed drivers); returns what the workers log to."""
    import mlflow

    from core import tracking

    experiment_id = tracking.setup()
    recovery.mark_abandoned_runs(mlflow.MlflowClient(tracking.tracking_uri()), experiment_id, log=_log)
    params_dict = params_to_dict(params)
    active = stack.enter_context(mlflow.start_run(experiment_id=experiment_id,
                                                  run_name=run_name or f"train-{params.model.name}"))
    mlflow.log_params(dict(tracking.flatten({k: params_dict[k] for k in ("seed", "data", "model", "train")})))
    # pid and host let the next run tell a killed driver's run (left RUNNING) from a live one
    owner = {"ctxemo.pid": str(plan.owner["pid"]), "ctxemo.host": plan.owner["host"], "ctxemo.ray_run": plan.name}
    if plan.resumed:
        owner.update({"ctxemo.resumed_from_epoch": str(plan.resumed_epoch),
                      "ctxemo.resumed_from_run": plan.resumed_mlflow_run or "untracked"})
    mlflow.set_tags({"ctxemo.stage": "train", "ctxemo.params_hash": tracking.params_hash(params_dict),
                     "ctxemo.git_commit": tracking.git_commit() or "unknown", **owner, **(tags or {})})
    mlflow.log_dict(params_dict, "config/params.json")
    return {"run_id": active.info.run_id, "tracking_uri": tracking.tracking_uri()}


def _export(result, config: dict[str, Any], paths: Workspace, mlflow_run: dict[str, str] | None,
            plan: recovery.RunPlan) -> dict[str, Any]:
    """Export the best model (staged, logged, then renamed into `paths.model_dir`) and the history."""
    with recovery.staged_dir(Path(paths.model_dir)) as staged:
        exported = export_best(result, config, staged)
        last = last_state(result)
        history = last["history"]
        summary = {k: v for k, v in exported["summary"].items() if k != "classes"}
        summary["epochs"] = len(history)
        summary["placement"] = last.get("placement", [])
        if plan.resumed:
            summary["resumed_from_epoch"] = plan.resumed_epoch
        if mlflow_run is not None:
            summary["mlflow_run_id"] = mlflow_run["run_id"]
            if plan.resumed:
                _log_epochs_before(history, plan.resumed_epoch)
            _log_model(exported, staged, paths.objects_meta)
            (staged / "mlflow_run.json").write_text(json.dumps({"run_id": mlflow_run["run_id"]}))
        recovery.publish_dir(staged, Path(paths.model_dir))
    report_dir = Path(paths.train_report_dir)  # after the model: a failed export leaves both as they were
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "history.json").write_text(json.dumps(history, indent=2))
    return summary


def _log_epochs_before(history: list[dict[str, float]], last: int) -> None:
    """The resumed run's epochs up to `last`, which the workers of this run never trained or logged."""
    import mlflow

    for record in history:
        if record["epoch"] <= last:
            mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))


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


def frozen_backbone_cache(params: Params, paths: Workspace) -> dict[str, Any] | None:
    """With `train.frozen_backbone`, the backbone maps of train and val (built now, by a Ray Data job
    whose actors have a training worker's resources, or reused when the backbone, its weights and
    the manifests are unchanged): body_cache.run's summary, with which nodes wrote them; else None.

    float32, so the maps the heads train on are the maps the exported model (which runs its
    backbone, in eval mode, on crops) computes at evaluation and serving.
    """
    if not params.train.frozen_backbone:
        return None
    from core.ray_utils import init_ray
    from core.training import body_cache

    init_ray(include_dashboard=True)  # as `fit` starts it (Ray Train V2 polls the state API)
    cache = body_cache.run_on_ray(params, paths, cache_root=Path(paths.body_cache_root).resolve(), dtype="float32",
                                  log=_log)
    nodes = ", ".join(node[:12] for node in cache["written_by"])
    _log(f"frozen backbone: maps in {cache['dir']} (built {cache['built'] or 'nothing'}"
         f"{f' on node(s) {nodes}' if nodes else ''}, reused {cache['reused'] or 'nothing'})")
    cache["dir"] = str(cache["dir"])
    return cache


def _log_model(exported: dict[str, Any], model_dir: Path, objects_meta: Path) -> None:
    """Best metrics, the checkpoint folder and the MLflow pyfunc model (core/tracking.py), to the active run."""
    import mlflow

    from core import tracking

    state = exported["state"]
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in state["metric"].items()})
    mlflow.log_metric("best_epoch", state["epoch"])
    mlflow.log_artifacts(str(model_dir), artifact_path="checkpoint")
    # weights and spec (model.pt, read weights-only) plus the objects stage's record; no pickled module
    tracking.log_pyfunc_model(Path(model_dir) / "model.pt", objects_meta)
