"""Ray Tune sweep over the paper's hyperparameters (BOA heads h, ELD p and t, projection
width d, objects N) and the learning rate, with ASHA early stopping.

    ctxemo sweep                          # tune.* from params.yaml
    ctxemo sweep --samples 16 --max-epochs 6
    ctxemo sweep --resume                 # continue the last interrupted sweep of this workspace

The space is `tune.space` in params.yaml: dotted paths into the existing params, each with
a distribution, never a repeated default. Every trial is params.yaml with its sampled values
applied (stages.params.apply_overrides), trained by the training stage's own `EpochLoop`
(stages/train.py): one training implementation. A trial reports validation mAP (accuracy
for CAER-S), the record's "val_metric", after every epoch together with a checkpoint, so
ASHA can stop it at any rung (its actor ends and its CPUs/GPUs go to the next trial) and a
restored sweep continues each trial from its last epoch.

Outputs: `reports/best_params.yaml` (the winner, in params.yaml's shape, searched paths
only), `reports/sweep.md` + `reports/sweep.json` (one row per trial), `reports/sweep_plots/
sweep_<path>.png` (best metric against each searched value); MLflow: one parent run for the
sweep, one child run per trial (tag mlflow.parentRunId) with its values and per-epoch metrics.

Why a function trainable and not a TorchTrainer per trial: sweep trials are small (with the
frozen-backbone fast path only the heads train) and fit one process on one CPU or a slice of
a GPU; a TorchTrainer per trial would add a controller actor, a worker group and a process
group per trial, which on 2 CPUs costs more than the trial itself. On a cluster the sweep
scales out through Tune instead: each trial asks for `tune.cpus_per_trial` CPUs and
`tune.gpus_per_trial` GPUs (fractions share a GPU), trials run on whichever nodes have room,
and as many run at once as the cluster fits (or `tune.max_concurrent_trials`). Checkpoints and
results go to the Ray storage (S3 when CTXEMO_S3_BUCKET is set, stages/settings.py); the
data/ folder (manifest, objects, the body cache) must be on storage every node sees, as for
training.

Frozen-backbone fast path (`tune.frozen_backbone: true`): the backbone maps of all crops are
computed once (stages/body_cache.py, data/cache/body/<fingerprint>/) and trials train BPA,
BOA, ELD and the classifier on them. N needs no re-extraction either way: the model reads a
prefix of the stored top-N objects (model.boa.max_objects), so the space may offer any N up
to objects.top_n. Paths that would change the cached maps (model.backbone.*, seed, data.*)
or the stored objects (objects.*) are refused in the space.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray import tune

from stages.errors import UserError
from stages.params import Params, apply_overrides, params_from_dict, params_to_dict

METRIC = "val_metric"           # the EpochLoop record's primary metric (mAP or accuracy)
MODE = "max"
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SEARCHERS = ("optuna", "random")
# The paper's reported settings, shown next to the best values found.
PAPER_VALUES = {"model.boa.heads": 16, "model.eld.p": 0.2, "model.eld.t": 0.2, "model.boa.dim": 128,
                "model.boa.max_objects": 50}
# Never searchable: they would change the stored objects, or the cached body maps.
FIXED_PREFIXES = ("objects.", "tune.")
CACHE_PATHS = ("model.backbone.", "data.", "seed")   # prefixes; seed: random init of the backbone
STATE_FILE = "sweep_last.json"
DEFAULT_REPORT_DIR = Path("reports")


@dataclass(frozen=True)
class TestOnlyHooks:
    """Fault injection for tests only; never set by the CLI.

    crash_marker: the first trial to finish an epoch claims this file and then raises after
        every epoch it reports (a trial that always crashes, retried or not).
    interrupt_marker / interrupt_at_epoch: the driver signals itself (SIGUSR1, which Tune
        treats like Ctrl-C: save state and stop) once, when a trial reports that epoch
        (0-based); the marker file gets that trial's id.
    """

    crash_marker: str | None = None
    interrupt_marker: str | None = None
    interrupt_at_epoch: int = 1


# --------------------------------------------------------------------------- the space


def _field_at(params: Params, dotted: str) -> Any:
    """The value at `dotted` in the typed params, or UserError naming the first unknown part."""
    node: Any = params
    walked = []
    for key in dotted.split("."):
        if not dataclasses.is_dataclass(node) or key not in {f.name for f in dataclasses.fields(node)}:
            where = ".".join(walked) or "params"
            raise UserError(f"tune.space: {dotted!r} is not a params path ({where} has no {key!r})")
        node = getattr(node, key)
        walked.append(key)
    if dataclasses.is_dataclass(node):
        raise UserError(f"tune.space: {dotted!r} is a whole section; name one of its keys")
    return node


def _domain(dotted: str, spec: Any):
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"tune.space.{dotted}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise UserError(f"tune.space.{dotted}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"tune.space.{dotted}: choice needs a non-empty list")
        return tune.choice(args)
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(v, (int, float)) for v in args)
            and args[0] < args[1]):
        raise UserError(f"tune.space.{dotted}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise UserError(f"tune.space.{dotted}: loguniform needs low > 0, got {args[0]}")
    if kind == "randint":
        return tune.randint(int(args[0]), int(args[1]))
    return getattr(tune, kind)(float(args[0]), float(args[1]))


def build_space(params: Params) -> dict[str, Any]:
    """`tune.space` as Ray Tune domains, keyed by dotted path; every path checked against Params."""
    space = params.tune.space
    if not space:
        raise UserError("tune.space in params.yaml is empty: nothing to search")
    domains = {}
    for dotted, spec in space.items():
        if dotted == "train.epochs":
            raise UserError("tune.space: 'train.epochs' cannot be searched: a trial's epochs are tune.max_epochs "
                            "and ASHA decides how many of them it gets")
        if dotted.startswith(FIXED_PREFIXES):
            raise UserError(f"tune.space: {dotted!r} cannot be searched by a sweep (the objects stage and the "
                            "tune section are not rerun per trial); search N with model.boa.max_objects")
        if params.tune.frozen_backbone and dotted.startswith(CACHE_PATHS):
            raise UserError(f"tune.space: {dotted!r} changes the cached body maps; it cannot be searched with "
                            "tune.frozen_backbone: true")
        _field_at(params, dotted)
        domains[dotted] = _domain(dotted, spec)
    return domains


def check_object_prefix(params: Params, objects_dir: Path) -> None:
    """N values beyond the stored top-N would all read the same objects: refuse them."""
    meta_path = Path(objects_dir) / "train" / "meta.json"
    spec = params.tune.space.get("model.boa.max_objects")
    if spec is None or not meta_path.is_file():
        return
    stored = int(json.loads(meta_path.read_text())["top_n"])
    values = next(iter(spec.values())) if isinstance(spec, dict) else []
    too_big = [v for v in (values if isinstance(values, list) else []) if v is not None and v > stored]
    if too_big:
        raise UserError(f"tune.space.model.boa.max_objects offers {too_big} but the objects stage stored only "
                        f"{stored} per person (objects.top_n): raise objects.top_n and rerun it, or lower N")


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'model.boa.heads': 8} -> {'model': {'boa': {'heads': 8}}}."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _native(value: Any, like: Any) -> Any:
    """Plain Python value (YAML/JSON-safe), of the type the params default has."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(like, bool) or isinstance(value, bool):
        return bool(value)
    if isinstance(like, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


# --------------------------------------------------------------------------- one trial


def sweep_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """One trial: params with the sampled values, trained epoch by epoch by EpochLoop.

    Reports after every epoch with a checkpoint (ASHA may stop the trial at any rung) and
    resumes from the last checkpoint when Tune restores the trial.
    """
    import torch

    from stages.train import CHECKPOINT_FILE, EpochLoop

    trial_params = apply_overrides(base["params"], {path: config[path] for path in base["space_paths"]})
    device = "cuda" if base["use_gpu"] and torch.cuda.is_available() else "cpu"
    loop = EpochLoop({**base["worker"], "params": trial_params}, device=device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            loop.resume(torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False))
    loop.prepare()
    crash_marker = base.get("test_only_crash_marker")

    for epoch in range(loop.start_epoch, base["max_epochs"]):
        record = loop.run_epoch(epoch)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(loop.state_dict(epoch), Path(tmp) / CHECKPOINT_FILE)
            tune.report({**record, "best": loop.best}, checkpoint=tune.Checkpoint.from_directory(tmp))
        if crash_marker:
            _test_only_crash(Path(crash_marker), tune.get_context().get_trial_id())


def _test_only_crash(marker: Path, trial_id: str) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pass
    else:
        os.write(fd, trial_id.encode())
        os.close(fd)
    if marker.read_text() == trial_id:
        raise RuntimeError(f"test-only crash injected into trial {trial_id}")


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------- MLflow


class SweepTracker(tune.Callback):
    """Tune callback (driver side) that mirrors every trial into an MLflow child run.

    The driver is the only writer, so a SQLite store sees no concurrent writes and trial
    workers need no route to the tracking server. Child runs are found again by their
    `ctxemo.trial_id` tag, so a restored sweep (which unpickles this callback) continues
    the same runs instead of opening new ones.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, metric_name: str,
                 max_epochs: int) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.metric_name, self.max_epochs = metric_name, max_epochs
        self._client = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def child_run(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                          f"and tags.`ctxemo.trial_id` = '{trial.trial_id}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.trial_id}", tags={
                "mlflow.parentRunId": self.parent_run_id, "ctxemo.stage": "sweep-trial",
                "ctxemo.trial_id": trial.trial_id})
            run_id = run.info.run_id
            for path, value in sorted(trial.config.items()):
                self.client.log_param(run_id, path, value)
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.child_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.child_run(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        for key in (METRIC, self.metric_name, "train_loss", "train_samples_per_s"):
            if result.get(key) is not None:
                self.client.log_metric(run_id, key, float(result[key]), step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.child_run(trial)
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        self.client.set_tag(run_id, "ctxemo.epochs_run", str(epochs))
        self.client.set_tag(run_id, "ctxemo.stopped_early", str(epochs < self.max_epochs).lower())
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.child_run(trial)
        self.client.set_tag(run_id, "ctxemo.error", _first_line(_read(trial.error_file) if trial.error_file else ""))
        self.client.set_terminated(run_id, "FAILED")


class DropFinishedCheckpoints(tune.Callback):
    """Delete a trial's checkpoint once the trial has finished (completed or stopped by ASHA).

    Checkpoints exist so that an interrupted sweep can continue its unfinished trials; a
    finished trial is never resumed, and the sweep's product is the configuration, not the
    weights (the winner is retrained by the pipeline). With BOA's W3 at h x 2048 x 2048, a
    32-head checkpoint with its momentum is ~1.5 GB, so keeping them would fill the storage.
    Errored trials keep theirs: `ctxemo sweep --resume` retries them from it.
    """

    def on_trial_complete(self, iteration, trials, trial, **info):
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
        except OSError as exc:  # best effort: a leftover file costs space, never correctness
            print(f"[sweep] could not delete {checkpoint.path}: {exc}")


class TestOnlyInterrupt(tune.Callback):
    """Tune callback for tests: when a trial reports `epoch`, signal the driver once (marker file).

    Tune registers a reported checkpoint one save round-trip after the result, so the trial
    that triggers this has its previous epoch's checkpoint registered, not this one's.
    """

    def __init__(self, marker: str, epoch: int) -> None:
        self.marker, self.epoch = marker, epoch

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == self.epoch and not Path(self.marker).exists():
            Path(self.marker).write_text(trial.trial_id)
            # Tune installs its SIGUSR1 handler (save state, stop) only in the main thread;
            # without it the signal's default action would kill the process.
            if callable(signal.getsignal(signal.SIGUSR1)):
                os.kill(os.getpid(), signal.SIGUSR1)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _first_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]


# --------------------------------------------------------------------------- results


def trial_rows(result_grid, space_paths: list[str], params: Params, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial: values, best val metric (and its epoch), epochs run, status."""
    rows = []
    for result in result_grid:
        frame = result.metrics_dataframe
        has_metric = frame is not None and METRIC in frame and frame[METRIC].notna().any()
        epochs = int(frame["training_iteration"].max()) if has_metric else 0
        best = float(frame[METRIC].max()) if has_metric else None
        best_epoch = int(frame.loc[frame[METRIC].idxmax(), "epoch"]) if has_metric else None
        if result.error is not None:
            status = "error"
        elif epochs >= max_epochs:
            status = "completed"
        else:
            status = "stopped early"
        trial_id = Path(result.path).name.removeprefix("trial_")
        values = {p: _native(result.config.get(p), _field_at(params, p)) for p in space_paths}
        rows.append({"trial_id": trial_id, **values, "best_val_metric": best, "best_epoch": best_epoch,
                     "epochs_run": epochs, "stopped_early": status == "stopped early", "status": status,
                     "error": None if result.error is None else _first_line(str(result.error))})
    return sorted(rows, key=lambda r: (r["best_val_metric"] is None, -(r["best_val_metric"] or 0.0)))


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best trial that did not crash (a crashed trial's numbers are not trusted)."""
    candidates = [r for r in rows if r["status"] != "error" and r["best_val_metric"] is not None]
    if not candidates:
        raise UserError("no trial of the sweep finished an epoch without an error: see reports/sweep.md")
    return max(candidates, key=lambda r: r["best_val_metric"])


def adopt_command(best_flat: dict[str, Any]) -> str:
    return "dvc exp run " + " ".join(f"-S {path}={value}" for path, value in best_flat.items())


def write_plots(rows: list[dict[str, Any]], params: Params, plots_dir: Path, metric_label: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    styles = {"completed": ("o", "tab:blue"), "stopped early": ("v", "tab:orange"), "error": ("x", "tab:red")}
    for path, spec in params.tune.space.items():
        kind = next(iter(spec))
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for status, (marker, colour) in styles.items():
            points = [(r[path], r["best_val_metric"]) for r in rows
                      if r["status"] == status and r["best_val_metric"] is not None and r[path] is not None]
            if points:
                xs, ys = zip(*points)
                ax.scatter(xs, ys, marker=marker, color=colour, label=status, alpha=0.85)
        if kind == "loguniform":
            ax.set_xscale("log")
        if kind == "choice":
            ax.set_xticks(sorted(v for v in spec["choice"] if v is not None))
        title = f"sweep: {metric_label} vs {path}"
        searched = [r[path] for r in rows if r[path] is not None]
        paper = PAPER_VALUES.get(path)
        if paper is not None and searched and min(searched) <= paper <= max(searched):
            ax.axvline(paper, color="grey", linestyle="--", linewidth=1, label="paper")
        elif paper is not None:  # a line far off the searched range would squash the points
            title += f" (paper: {paper}, outside the searched range)"
        ax.set_xlabel(path)
        ax.set_ylabel(f"best {metric_label}")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = plots_dir / f"sweep_{path.replace('.', '_')}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(str(out))
    return written


def write_reports(rows: list[dict[str, Any]], state: dict[str, Any], params: Params,
                  wall_seconds: float) -> dict[str, Any]:
    import yaml

    from pipelines.report import markdown_table

    space_paths = state["space_paths"]
    report_dir, plots_dir = Path(state["report_dir"]), Path(state["plots_dir"])
    report_dir.mkdir(parents=True, exist_ok=True)
    metric_label = state["metric_name"]
    best = best_row(rows)
    best_flat = {p: best[p] for p in space_paths}
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped early", "error")}

    best_file = report_dir / "best_params.yaml"
    header = (f"# Best of Ray Tune sweep {state['name']}: {metric_label} {best['best_val_metric']:.4f} "
              f"(trial {best['trial_id']}, epoch {best['best_epoch']}).\n"
              f"# Only the searched paths; merge into params.yaml, e.g.\n#   {adopt_command(best_flat)}\n")
    best_file.write_text(header + yaml.safe_dump(nested(best_flat), sort_keys=True))

    plots = write_plots(rows, params, plots_dir, metric_label)
    summary = {
        "name": state["name"], "experiment_path": state["experiment_path"], "command": state["command"],
        "metric": metric_label, "mode": MODE, "searcher": params.tune.searcher,
        "scheduler": {"name": "ASHA", "max_t": state["max_epochs"], "grace_period": params.tune.grace_period,
                      "reduction_factor": params.tune.reduction_factor},
        "data": state.get("data"), "frozen_backbone": params.tune.frozen_backbone,
        "body_cache": state.get("body_cache"),
        "num_samples": state["num_samples"], "max_epochs": state["max_epochs"],
        "max_concurrent_trials": state["max_concurrent_trials"], "resources_per_trial": state["resources"],
        "wall_seconds": round(wall_seconds, 1), "trials": counts,
        "best": {"trial_id": best["trial_id"], "val_metric": best["best_val_metric"], "epoch": best["best_epoch"],
                 "params": best_flat},
        "paper": {p: PAPER_VALUES[p] for p in space_paths if p in PAPER_VALUES},
        "adopt": adopt_command(best_flat), "mlflow_parent_run_id": state.get("parent_run_id"),
        "space": params.tune.space, "rows": rows, "plots": plots,
    }
    (report_dir / "sweep.json").write_text(json.dumps(summary, indent=2))

    defaults = {p: _field_at(params, p) for p in space_paths}
    compare = markdown_table(["parameter", "best found", "params.yaml", "paper"],
                             [[p, best_flat[p], "null (all)" if defaults[p] is None else defaults[p],
                               PAPER_VALUES.get(p)] for p in space_paths])
    short = {p: p.split(".")[-1] for p in space_paths}
    trials = markdown_table(
        ["trial", *short.values(), f"best {metric_label}", "best epoch", "epochs", "status", "error"],
        [[r["trial_id"], *(r[p] for p in space_paths), r["best_val_metric"], r["best_epoch"], r["epochs_run"],
          r["status"], r["error"] or ""] for r in rows])
    scheduler = summary["scheduler"]
    data = state.get("data") or {}
    data_line = (f"{data.get('kind')} at `{data.get('root')}`, "
                 + ", ".join(f"{n} {split} persons" for split, n in (data.get("persons") or {}).items()))
    (report_dir / "sweep.md").write_text(
        f"# Ray Tune sweep `{state['name']}`\n\n"
        f"Command: `{state['command']}`\n\n"
        f"Data: {data_line}\n\n"
        f"{len(rows)} trials ({counts['completed']} completed, {counts['stopped early']} stopped early by ASHA, "
        f"{counts['error']} errored) in {wall_seconds / 60:.1f} min wall time; searcher {params.tune.searcher}, "
        f"ASHA (max {scheduler['max_t']} epochs, grace {scheduler['grace_period']}, reduction factor "
        f"{scheduler['reduction_factor']}), up to {state['max_concurrent_trials']} trials at once, "
        f"{state['resources']} per trial; frozen backbone: {params.tune.frozen_backbone}.\n"
        f"Metric: validation {metric_label} (best epoch of each trial).\n\n"
        f"## Best configuration ({metric_label} {best['best_val_metric']:.4f}, trial {best['trial_id']})\n\n"
        f"{compare}\n\nAdopt it: `{adopt_command(best_flat)}` (or merge `{best_file.name}`, next to this "
        "report, into params.yaml).\n\n"
        f"## Trials\n\n{trials}\n")
    return summary


# --------------------------------------------------------------------------- the driver


def _concurrency(tune_cfg, use_gpu: bool) -> int:
    import ray

    if tune_cfg.max_concurrent_trials:
        return int(tune_cfg.max_concurrent_trials)
    resources = ray.cluster_resources()
    fits = [math.floor(resources.get("CPU", 1) / tune_cfg.cpus_per_trial)] if tune_cfg.cpus_per_trial > 0 else []
    if use_gpu and tune_cfg.gpus_per_trial > 0:
        fits.append(math.floor(resources.get("GPU", 0) / tune_cfg.gpus_per_trial))
    return max(1, min(fits) if fits else 1)


def _trainable(state: dict[str, Any], paths, hooks: TestOnlyHooks | None):
    """The Tune trainable: sweep_trial with the shared worker config and the per-trial resources."""
    from stages.train import worker_config

    params = params_from_dict(state["params"])
    worker = worker_config(params, paths)
    worker["body_cache"] = state.get("body_cache")
    worker["torch_threads"] = max(1, int(state["resources"]["cpu"]))
    base = {"worker": worker, "params": state["params"], "space_paths": state["space_paths"],
            "max_epochs": state["max_epochs"], "use_gpu": state["resources"].get("gpu", 0) > 0,
            "test_only_crash_marker": hooks.crash_marker if hooks else None}
    return tune.with_resources(tune.with_parameters(sweep_trial, base=base), state["resources"])


def _state_file(paths) -> Path:
    return Path(paths.ray_storage) / STATE_FILE


def _start_parent_run(params: Params, state: dict[str, Any]) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from stages import tracking

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
    client.log_dict(run.info.run_id, params_dict["tune"]["space"], "sweep/space.json")
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


def _new_state(params_dict: dict[str, Any], paths, *, samples: int | None, max_epochs: int | None,
               report_dir: Path, plots_dir: Path | None, cache_root: Path, command: str,
               log: Callable[[str], None]) -> tuple[dict[str, Any], Params]:
    from stages import body_cache
    from stages.data.labels import task_of
    from stages.data.manifest import read_manifest
    from stages.ray_utils import init_ray
    from stages.settings import StorageSettings
    from stages.train import PRIMARY, ray_run_name, resolve_use_gpu

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
    if tune_cfg.frozen_backbone:
        cache = body_cache.run(params, paths, cache_root=cache_root, log=log)
        log(f"[sweep] body cache {cache['dir']} (built {cache['built'] or 'nothing'}, "
            f"reused {cache['reused'] or 'nothing'})")
        # The cached maps need no decoding: loader processes would only add start-up time.
        trial_overrides["train.loader_workers"] = 0

    name = ray_run_name("sweep")
    persons = {split: len(read_manifest(split, paths.manifest_dir)) for split in ("train", "val")}
    storage = StorageSettings.from_env().ray_run_storage(paths.ray_storage)
    state = {
        "name": name, "experiment_path": f"{storage['storage_path'].rstrip('/')}/{name}", "command": command,
        "params": apply_overrides(params_dict, trial_overrides), "space_paths": list(space),
        "num_samples": tune_cfg.num_samples, "max_epochs": tune_cfg.max_epochs,
        "body_cache": None if cache is None else str(Path(cache["dir"]).resolve()),
        "resources": resources, "max_concurrent_trials": _concurrency(tune_cfg, use_gpu),
        "metric_name": PRIMARY[task_of(params.data.kind)],
        "data": {"kind": params.data.kind, "root": str(paths.data_root), "persons": persons},
        "report_dir": str(Path(report_dir).resolve()),
        # not reports/plots: that folder is the evaluate stage's DVC output and is wiped on repro
        "plots_dir": str(Path(plots_dir or Path(report_dir) / "sweep_plots").resolve()),
        "paths": {k: str(v) for k, v in paths.__dict__.items()}, "elapsed_before": 0.0,
    }
    return state, params


def _tuner(state: dict[str, Any], params: Params, paths, space: dict[str, Any], callbacks: list,
           hooks: TestOnlyHooks | None):
    from ray.tune.schedulers import ASHAScheduler

    from stages.settings import StorageSettings

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
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return tune.Tuner(
        _trainable(state, paths, hooks),
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
            callbacks=callbacks, verbose=1,
        ),
    )


def _finished(result_grid, num_samples: int) -> bool:
    """Every trial sampled and ended: crashed, or its last result says done (it returned, or
    ASHA stopped it). Trial statuses cannot tell: an interrupted driver's cleanup marks its
    running trials terminated, though their saved state still says running."""
    if len(result_grid) < num_samples:
        return False
    return all(result.error is not None or result.metrics.get("done") for result in result_grid)


def run(params_dict: dict[str, Any], paths, *, samples: int | None = None, max_epochs: int | None = None,
        resume: bool = False, report_dir: Path = DEFAULT_REPORT_DIR, plots_dir: Path | None = None,
        cache_root: Path | None = None, track: bool = True, command: str = "ctxemo sweep",
        test_only_hooks: TestOnlyHooks | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or, with resume=True, continue) a sweep; returns its summary.

    `paths` is a stages.train.TrainPaths. The result has "interrupted": True when the driver
    was stopped (Ctrl-C / SIGUSR1) before every trial finished; `resume=True` continues it.
    """
    from stages.body_cache import CACHE_ROOT
    from stages.ray_utils import init_ray
    from stages.settings import StorageSettings

    paths = paths.resolved()
    started = time.perf_counter()
    state_file = _state_file(paths)
    if resume:
        if not state_file.is_file():
            raise UserError(f"nothing to resume: no {state_file} (start a sweep with `ctxemo sweep` first)")
        state = json.loads(state_file.read_text())
        params = params_from_dict(state["params"])  # the sweep's own params, whatever params.yaml says now
        paths = type(paths)(**{k: Path(v) for k, v in state["paths"].items()})
        init_ray()
        fs = StorageSettings.from_env().ray_run_storage(paths.ray_storage)["storage_filesystem"]
        if not tune.Tuner.can_restore(state["experiment_path"], storage_filesystem=fs):
            raise UserError(f"{state['experiment_path']} holds no restorable Tune experiment")
        log(f"[sweep] resuming {state['experiment_path']}")
        tuner = tune.Tuner.restore(state["experiment_path"], trainable=_trainable(state, paths, test_only_hooks),
                                   resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
        if state.get("parent_run_id"):
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=state["tracking_uri"]).update_run(state["parent_run_id"], status="RUNNING")
    else:
        state, params = _new_state(params_dict, paths, samples=samples, max_epochs=max_epochs,
                                   report_dir=report_dir, plots_dir=plots_dir, cache_root=cache_root or CACHE_ROOT,
                                   command=command, log=log)
        callbacks: list = [DropFinishedCheckpoints()]
        if track:
            state.update(_start_parent_run(params, state))
            callbacks.append(SweepTracker(state["tracking_uri"], state["experiment_id"], state["parent_run_id"],
                                          state["metric_name"], state["max_epochs"]))
        if test_only_hooks and test_only_hooks.interrupt_marker:
            callbacks.append(TestOnlyInterrupt(test_only_hooks.interrupt_marker, test_only_hooks.interrupt_at_epoch))
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2))
        log(f"[sweep] {state['name']}: {state['num_samples']} trials x <= {state['max_epochs']} epochs, "
            f"{state['max_concurrent_trials']} at once, {state['resources']} each")
        tuner = _tuner(state, params, paths, build_space(params), callbacks, test_only_hooks)

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
