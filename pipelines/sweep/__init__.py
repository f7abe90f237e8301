"""Ray Tune sweep over a model's hyperparameters, with ASHA early stopping: for the flagship the
paper's (BOA heads h, ELD p and t, projection width d, objects N) and the learning rate, for
DAG-Net its partition N and learning rate.

    ctxemo sweep                          # tune.* from params.yaml, the model of model.name
    ctxemo sweep --model dagnet           # another model family, over tune.space.dagnet
    ctxemo sweep --samples 16 --max-epochs 6
    ctxemo sweep --resume                 # continue the last interrupted sweep of this workspace
    python -m pipelines.sweep [OPTIONS]   # the same, for cluster jobs (infra/kuberay/rayjob-sweep.yaml)

The space is `tune.space.<model.name>` in params.yaml: dotted paths into the existing params, each with
a distribution, never a repeated default (`space`). Every trial is params.yaml with its
sampled values applied (core.params.apply_overrides), trained by the training stage's own
`EpochLoop` (core/training/loop.py): one training implementation (`trial`). A trial reports
validation mAP (accuracy for CAER-S), the record's "val_metric", after every epoch together
with a checkpoint, so ASHA can stop it at any rung (its actor ends and its CPUs/GPUs go to the
next trial) and a restored sweep continues each trial from its last epoch (`driver`).

Outputs (`reports`): `reports/best_params.yaml` (the winner, in params.yaml's shape, searched
paths only), `reports/sweep.md` + `reports/sweep.json` (one row per trial, the paper's values
from configs/paper-emotic.yaml alongside), `reports/sweep_plots/sweep_<path>.png` (best metric
against each searched value); MLflow (`callbacks`): one parent run for the sweep, one child run
per trial (tag mlflow.parentRunId) with its values and per-epoch metrics.

Why a function trainable and not a TorchTrainer per trial: sweep trials are small (with the
frozen-backbone fast path only the heads train) and fit one process on one CPU or a slice of
a GPU; a TorchTrainer per trial would add a controller actor, a worker group and a process
group per trial, which on 2 CPUs costs more than the trial itself. On a cluster the sweep
scales out through Tune instead: each trial asks for `tune.cpus_per_trial` CPUs and
`tune.gpus_per_trial` GPUs (fractions share a GPU), trials run on whichever nodes have room,
and as many run at once as the cluster fits (or `tune.max_concurrent_trials`). Checkpoints and
results go to the Ray storage (S3 when CTXEMO_S3_BUCKET is set, core/storage.py); the
data/ folder (manifest, objects, the body cache) must be on storage every node sees, as for
training.

Frozen-backbone fast path (`tune.frozen_backbone: true`, rrla and dagnet): what the frozen trunks
compute from every person is computed once (core/training/body_cache.py, data/cache/body/
<fingerprint>/) and trials train the rest on it: the flagship's BPA, BOA, ELD and classifier;
DAG-Net's BAM, GSAM's branch, LSAM (any N: the patches are decoded per step) and the classifier.
N needs no re-extraction either way: the flagship reads a prefix of the stored top-N objects
(model.rrla.boa.max_objects), so the space may offer any N up to objects.top_n. Paths that would
change the cached tensors (the trunks, the views they read, seed, data.*; body_cache.cache_paths)
or the stored objects (objects.*) are refused in the space.

Fault tolerance is tested from outside through the fault points `sweep.trial_epoch` (in a
trial) and `sweep.trial_result` (in the driver); see core/faults.py.
"""
from pipelines.sweep.callbacks import (
    DriverFaultPoint,
    DropFinishedCheckpoints,
    SweepProgress,
    SweepTracker,
)
from pipelines.sweep.driver import DEFAULT_REPORT_DIR, SEARCHERS, STATE_FILE, run
from pipelines.sweep.reports import (
    adopt_command,
    best_row,
    paper_values,
    trial_rows,
    write_reports,
)
from pipelines.sweep.space import build_space, check_object_prefix, nested
from pipelines.sweep.trial import METRIC, MODE, sweep_trial, trial_dirname

__all__ = [
    "DEFAULT_REPORT_DIR", "METRIC", "MODE", "SEARCHERS", "STATE_FILE", "DriverFaultPoint",
    "DropFinishedCheckpoints", "SweepProgress", "SweepTracker", "adopt_command", "best_row", "build_space",
    "check_object_prefix", "nested", "paper_values", "run", "sweep_trial", "trial_dirname", "trial_rows",
    "write_reports",
]
