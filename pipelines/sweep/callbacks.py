"""Tune callbacks of the sweep driver: MLflow child runs, checkpoint clean-up, progress, the driver's fault point.

They run in the driver process, which sees every trial's results; a restored sweep unpickles
them with the experiment, so they keep no state that a restore would lose.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from core.faults import fault_point
from pipelines.sweep.trial import METRIC


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
        self.client.set_tag(run_id, "ctxemo.error", first_line(_read(trial.error_file) if trial.error_file else ""))
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


class SweepProgress(tune.Callback):
    """The sweep's progress, in the driver: trials ended out of the sweep's total and the best metric.

    On a terminal a bar, with one line per ended trial above it; elsewhere only those lines (a
    sweep has few trials, and each line says how far the sweep is). The counts come from Tune's
    list of trials at each event, so a restored sweep (which unpickles this callback without its
    bar) counts the trials its first run finished too.
    """

    def __init__(self, num_samples: int, metric_name: str, max_epochs: int) -> None:
        self.num_samples, self.metric_name, self.max_epochs = num_samples, metric_name, max_epochs
        self._progress = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_progress": None}

    def progress(self):
        if self._progress is None:
            from core.progress import Progress

            self._progress = Progress(self.num_samples, "[sweep] trials", unit="trials", step=None, quiet_s=0.0)
        return self._progress

    def setup(self, **info):
        self.progress()  # the bar from the start, not from the first trial's end

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        self._ended(trials, trial, "finished" if epochs >= self.max_epochs else "stopped early (ASHA)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "failed")

    def on_experiment_end(self, trials, **info):
        if self._progress is not None:
            self._progress.close()

    def _ended(self, trials, trial, outcome: str) -> None:
        ended = sum(1 for t in trials if t.is_finished() or t is trial)
        # a trial's "best" is its best epoch so far (EpochLoop); running trials count too
        scores = [t.last_result.get("best", t.last_result[METRIC]) for t in trials
                  if (t.last_result or {}).get(METRIC) is not None]
        best = f"{max(scores):.4f}" if scores else "none yet"
        result = trial.last_result or {}
        value = (f"{self.metric_name} {result[METRIC]:.4f} after {result.get('training_iteration', 0)} epoch(s)"
                 if result.get(METRIC) is not None else "no result")
        progress = self.progress()
        progress.note(f"[sweep] trial {trial.trial_id} {outcome}: {value}; "
                      f"{ended}/{self.num_samples} trials ended, best {self.metric_name} {best}")
        progress.advance_to(ended, best=best)


class DriverFaultPoint(tune.Callback):
    """The driver's fault point `sweep.trial_result` (core/faults.py), at every trial result.

    Tune registers a reported checkpoint one save round-trip after the result, so a trial whose
    result stops the driver here has its previous epoch's checkpoint registered, not this one's.
    """

    def on_trial_result(self, iteration, trials, trial, result, **info):
        fault_point("sweep.trial_result", trial_id=trial.trial_id, epoch=result.get("epoch"))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def first_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]
