"""The sweep driver: state file, MLflow parent run, the Tuner, and `run` (start or resume a sweep).

`run` checks the space, builds the frozen-backbone body cache when asked, writes the sweep's
state (`<ray_storage>/sweep_last.json`: name, experiment path, params, resources, MLflow ids)
and runs a Tuner (Optuna or random search, ASHA, one checkpoint kept per trial). A driver
stopped by Ctrl-C or SIGUSR1 saves Tune's experiment state; `run(..., resume=True)` restores it
from the state file, with the sweep's own params whatever params.yaml says now, and continues
the unfinished and errored trials from their checkpoints. A finished sweep writes its reports
(pipelines/sweep/reports.py) and closes its MLflow parent run.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from core import env
from core.errors import UserError
from core.params import Params, apply_overrides, params_from_dict, params_to_dict
from core.workspace import DEFAULT_WORKSPACE, Workspace
from pipelines.sweep.callbacks import (
    DriverFaultPoint,
    DropFinishedCheckpoints,
    SweepProgress,
    SweepTracker,
)
from pipelines.sweep.reports import concurrency_text, trial_rows, write_reports
from pipelines.sweep.space import build_space, check_object_prefix, model_space
from pipelines.sweep.trial import METRIC, MODE, trainable, trial_dirname

SEARCHERS = ("optuna", "random")
STATE_FILE = "sweep_last.json"
DEFAULT_REPORT_DIR = DEFAULT_WORKSPACE.reports_dir


def _fits_now(tune_cfg, use_gpu: bool) -> int:
    """How many trials the cluster fits as it is now (for the log and the report only: with
    `tune.max_concurrent_trials: null` Tune keeps the rest pending, which is the demand an
    autoscaling cluster grows on; sizing the limit from today's nodes would hide it)."""
    import ray

    resources = ray.cluster_resources()
    fits = [math.floor(resources.get("CPU", 1) / tune_cfg.cpus_per_trial)] if tune_cfg.cpus_per_trial > 0 else []
    if use_gpu and tune_cfg.gpus_per_trial > 0:
        fits.append(math.floor(resources.get("GPU", 0) / tune_cfg.gpus_per_trial))
    return max(1, min(fits) if fits else 1)


def _state_file(paths: Workspace) -> Path:
    return Path(paths.ray_storage) / STATE_FILE


def _start_parent_run(params: Params, state: dict[str, Any]) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from core import tracking

    experiment_id = tracking.setup()
    uri = tracking.tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    params_dict = params_to_dict(params)
    run = client.create_run(experiment_id, run_name=state["name"], tags={
        "ctxemo.stage": "sweep", "ctxemo.params_hash": tracking.params_hash(params_dict),
        "ctxemo.git_commit": tracking.git_commit() or "unknown", "ctxemo.ray_experiment": state["experiment_path"]})
    flat = dict(tracking.flatten({k: params_dict[k] for k in ("seed", "data", "model", "train")}))
    flat.update({f"tune.{k}": v for k, v in params_dict["tune"].items() if k != "space"})
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, value)
    client.log_dict(run.info.run_id, model_space(params), "sweep/space.json")
    return {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run.info.run_id}


def _finish_parent_run(state: dict[str, Any], status: str, summary: dict[str, Any] | None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=state["tracking_uri"])
    parent = state["parent_run_id"]
    if status != "FINISHED":  # children left RUNNING by an interrupted driver
        for child in client.search_runs([state["experiment_id"]],
                                        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"):
            if child.info.status == "RUNNING":
                client.set_terminated(child.info.run_id, status)
    if summary is not None:
        client.log_metric(parent, f"best_{state['metric_name']}", float(summary["best"]["val_metric"]))
        for key, value in summary["trials"].items():
            client.log_metric(parent, f"trials_{key.replace(' ', '_')}", value)
        report_dir = Path(state["report_dir"])
        for name in ("sweep.md", "sweep.json", "best_params.yaml"):
            client.log_artifact(parent, str(report_dir / name), artifact_path="sweep")
        for plot in summary["plots"]:
            client.log_artifact(parent, plot, artifact_path="sweep/plots")
    client.set_terminated(parent, status)


def _new_state(params_dict: dict[str, Any], paths: Workspace, *, samples: int | None, max_epochs: int | None,
               report_dir: Path, plots_dir: Path | None, cache_root: Path, command: str,
               log: Callable[[str], None]) -> tuple[dict[str, Any], Params]:
    from core.data.labels import task_of
    from core.data.manifest import read_manifest
    from core.ray_utils import init_ray
    from core.storage import StorageSettings
    from core.training import body_cache
    from core.training.loop import PRIMARY
    from core.training.trainer import ray_run_name, resolve_use_gpu

    overrides = {k: v for k, v in (("tune.num_samples", samples), ("tune.max_epochs", max_epochs)) if v is not None}
    params_dict = apply_overrides(params_dict, overrides) if overrides else params_dict
    params = params_from_dict(params_dict)
    tune_cfg = params.tune
    if tune_cfg.searcher not in SEARCHERS:
        raise UserError(f"tune.searcher must be one of {SEARCHERS}, not {tune_cfg.searcher!r}")
    if tune_cfg.num_samples < 1 or tune_cfg.max_epochs < 1 or tune_cfg.grace_period < 1:
        raise UserError("tune.num_samples, tune.max_epochs and tune.grace_period must be >= 1")
    space = build_space(params)
    check_object_prefix(params, paths.objects_dir)

    init_ray()
    use_gpu = resolve_use_gpu(params.train.use_gpu) and tune_cfg.gpus_per_trial > 0
    resources = {"cpu": tune_cfg.cpus_per_trial, "gpu": tune_cfg.gpus_per_trial if use_gpu else 0}
    trial_overrides = {"train.epochs": tune_cfg.max_epochs, "train.num_workers": 1}
    cache = None
    if tune_cfg.frozen_backbone and not body_cache.has_frozen_path(params):
        log(f"[sweep] tune.frozen_backbone: model {params.model.name!r} has no frozen-backbone path (only "
            f"{', '.join(body_cache.FROZEN_BACKBONE_MODELS)} have): its trials train the whole network")
    elif tune_cfg.frozen_backbone:
        cache = body_cache.run_on_ray(params, paths, num_cpus=tune_cfg.cpus_per_trial,
                                      cache_root=cache_root and Path(cache_root).resolve(), log=log)
        log(f"[sweep] body cache {cache['dir']} (built {cache['built'] or 'nothing'}, "
            f"reused {cache['reused'] or 'nothing'}; still decoded per step: {cache['decoded'] or 'nothing'})")
        if not cache["decoded"]:
            # Nothing left to decode: loader processes would only add start-up time.
            trial_overrides["train.loader_workers"] = 0

    name = ray_run_name("sweep")
    persons = {split: len(read_manifest(split, paths.manifest_dir)) for split in ("train", "val")}
    storage = StorageSettings.from_env().ray_run_storage(paths.ray_storage)
    state = {
        "name": name, "experiment_path": f"{storage['storage_path'].rstrip('/')}/{name}", "command": command,
        "params": apply_overrides(params_dict, trial_overrides), "space_paths": list(space),
        "num_samples": tune_cfg.num_samples, "max_epochs": tune_cfg.max_epochs,
        "body_cache": None if cache is None else str(Path(cache["dir"]).resolve()),
        "resources": resources, "max_concurrent_trials": tune_cfg.max_concurrent_trials,
        "fits_now": _fits_now(tune_cfg, use_gpu),
        "metric_name": PRIMARY[task_of(params.data.kind)],
        "data": {"kind": params.data.kind, "root": str(paths.data_root), "persons": persons},
        "report_dir": str(Path(report_dir).resolve()),
        # not reports/plots: that folder is the evaluate stage's DVC output and is wiped on repro
        "plots_dir": str(Path(plots_dir or Path(report_dir) / "sweep_plots").resolve()),
        "paths": paths.to_strings(), "elapsed_before": 0.0,
    }
    return state, params


def _tuner(state: dict[str, Any], params: Params, paths: Workspace, space: dict[str, Any], callbacks: list):
    from ray.tune.schedulers import ASHAScheduler

    from core.storage import StorageSettings

    tune_cfg = params.tune
    if tune_cfg.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search_alg = OptunaSearch(seed=params.seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=params.seed)
    storage = StorageSettings.from_env().ray_run_storage(paths.ray_storage)
    if storage["storage_filesystem"] is None:
        # num_to_keep forces a state snapshot per trial checkpoint; on a local disk that costs
        # milliseconds, so Tune's "excessive snapshotting" warning is only noise here.
        env.set_default("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return tune.Tuner(
        trainable(state, paths),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=search_alg, num_samples=state["num_samples"],
            max_concurrent_trials=state["max_concurrent_trials"], trial_dirname_creator=trial_dirname,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=state["max_epochs"],
                                    grace_period=min(tune_cfg.grace_period, state["max_epochs"]),
                                    reduction_factor=tune_cfg.reduction_factor),
        ),
        run_config=tune.RunConfig(
            name=state["name"], **storage,
            failure_config=tune.FailureConfig(max_failures=tune_cfg.max_failures),
            # the latest checkpoint is all a restored trial needs; older ones only fill the disk
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # SweepProgress reports each ended trial in a line; Tune's own tables (a config table per
            # trial start, a result table per trial end, a status table every few seconds) are off
            callbacks=callbacks, verbose=0,
        ),
    )


def _finished(result_grid, num_samples: int) -> bool:
    """Every trial sampled and ended: crashed, or its last result says done (it returned, or
    ASHA stopped it). Trial statuses cannot tell: an interrupted driver's cleanup marks its
    running trials terminated, though their saved state still says running."""
    if len(result_grid) < num_samples:
        return False
    return all(result.error is not None or result.metrics.get("done") for result in result_grid)


def _restore(state_file: Path, log: Callable[[str], None]):
    """The saved state, params and workspace of the last sweep, and its Tuner restored to continue."""
    from core.ray_utils import init_ray
    from core.storage import StorageSettings

    if not state_file.is_file():
        raise UserError(f"nothing to resume: no {state_file} (start a sweep with `ctxemo sweep` first)")
    state = json.loads(state_file.read_text())
    params = params_from_dict(state["params"])  # the sweep's own params, whatever params.yaml says now
    paths = Workspace.from_strings(state["paths"])
    init_ray()
    fs = StorageSettings.from_env().ray_run_storage(paths.ray_storage)["storage_filesystem"]
    if not tune.Tuner.can_restore(state["experiment_path"], storage_filesystem=fs):
        raise UserError(f"{state['experiment_path']} holds no restorable Tune experiment")
    log(f"[sweep] resuming {state['experiment_path']}")
    tuner = tune.Tuner.restore(state["experiment_path"], trainable=trainable(state, paths),
                               resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    if state.get("parent_run_id"):
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=state["tracking_uri"]).update_run(state["parent_run_id"], status="RUNNING")
    return state, params, tuner


def _start(params_dict: dict[str, Any], paths: Workspace, state_file: Path, *, track: bool,
           log: Callable[[str], None], **new_state_args):
    """A new sweep: its state (saved for --resume), its MLflow parent run and its Tuner."""
    state, params = _new_state(params_dict, paths, log=log, **new_state_args)
    # the driver's fault point comes last: a fault that stops the driver finds the others' work done
    callbacks: list = [DropFinishedCheckpoints()]
    if track:
        state.update(_start_parent_run(params, state))
        callbacks.append(SweepTracker(state["tracking_uri"], state["experiment_id"], state["parent_run_id"],
                                      state["metric_name"], state["max_epochs"]))
    callbacks.append(SweepProgress(state["num_samples"], state["metric_name"], state["max_epochs"]))
    callbacks.append(DriverFaultPoint())
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=2))
    log(f"[sweep] {state['name']}: {state['num_samples']} trials x <= {state['max_epochs']} epochs, "
        f"{concurrency_text(state)}, {state['resources']} each")
    return state, params, _tuner(state, params, paths, build_space(params), callbacks)


def run(params_dict: dict[str, Any], paths: Workspace, *, samples: int | None = None,
        max_epochs: int | None = None, resume: bool = False, report_dir: Path = DEFAULT_REPORT_DIR,
        plots_dir: Path | None = None, cache_root: Path | None = None, track: bool = True,
        command: str = "ctxemo sweep", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or, with resume=True, continue) a sweep; returns its summary.

    The result has "interrupted": True when the driver was stopped (Ctrl-C / SIGUSR1) before
    every trial finished; `resume=True` continues it.
    """
    paths = paths.resolved()
    started = time.perf_counter()
    state_file = _state_file(paths)
    if resume:
        state, params, tuner = _restore(state_file, log)
    else:
        state, params, tuner = _start(params_dict, paths, state_file, track=track, log=log, samples=samples,
                                      max_epochs=max_epochs, report_dir=report_dir, plots_dir=plots_dir,
                                      cache_root=cache_root, command=command)

    result_grid = tuner.fit()
    # --resume of a finished sweep only rewrites its reports: its wall time stays the sweep's
    elapsed = state["elapsed_before"] + (0.0 if state.get("finished") else time.perf_counter() - started)
    if not _finished(result_grid, state["num_samples"]):
        state["elapsed_before"] = elapsed
        state_file.write_text(json.dumps(state, indent=2))
        if state.get("parent_run_id"):
            _finish_parent_run(state, "KILLED", None)
        log(f"[sweep] interrupted after {elapsed:.0f} s; continue with `ctxemo sweep --resume`")
        return {"interrupted": True, "name": state["name"], "experiment_path": state["experiment_path"],
                "wall_seconds": round(elapsed, 1)}

    state.update(elapsed_before=elapsed, finished=True)
    state_file.write_text(json.dumps(state, indent=2))
    rows = trial_rows(result_grid, state["space_paths"], params, state["max_epochs"])
    summary = write_reports(rows, state, params, elapsed)
    if state.get("parent_run_id"):
        _finish_parent_run(state, "FINISHED", summary)
    return {"interrupted": False, **summary}
