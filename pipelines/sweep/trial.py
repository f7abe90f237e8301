"""One sweep trial: params.yaml with the sampled values, trained epoch by epoch by `EpochLoop`.

A trial is a Tune function trainable running the training stage's own loop
(core/training/loop.py): one training implementation. It reports `METRIC` (validation mAP, or
accuracy for CAER-S) after every epoch together with a checkpoint, so ASHA can stop it at any
rung (its actor ends and its CPUs/GPUs go to the next trial) and a restored sweep continues
each trial from its last epoch. `trainable` binds the shared worker config (read once by the
driver) and the per-trial resources to it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from core import checkpoints
from core.faults import fault_point
from core.params import apply_overrides, params_from_dict
from core.workspace import Workspace

METRIC = "val_metric"           # the EpochLoop record's primary metric (mAP or accuracy)
MODE = "max"


def sweep_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """One trial: params with the sampled values, trained epoch by epoch by EpochLoop.

    Reports after every epoch with a checkpoint (ASHA may stop the trial at any rung) and
    resumes from the last checkpoint when Tune restores the trial.
    """
    import torch

    from core.training.loop import CHECKPOINT_FILE, EpochLoop

    trial_params = apply_overrides(base["params"], {path: config[path] for path in base["space_paths"]})
    device = "cuda" if base["use_gpu"] and torch.cuda.is_available() else "cpu"
    loop = EpochLoop({**base["worker"], "params": params_from_dict(trial_params).for_model()}, device=device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            loop.resume(checkpoints.load(Path(ckpt_dir) / CHECKPOINT_FILE))
    loop.prepare()
    trial_id = tune.get_context().get_trial_id()

    for epoch in range(loop.start_epoch, base["max_epochs"]):
        record = loop.run_epoch(epoch)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(loop.state_dict(epoch), Path(tmp) / CHECKPOINT_FILE)
            tune.report({**record, "best": loop.best}, checkpoint=tune.Checkpoint.from_directory(tmp))
        # after the epoch's checkpoint is reported: a trial crashing here is retried from this epoch
        fault_point("sweep.trial_epoch", trial_id=trial_id, epoch=epoch)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def trainable(state: dict[str, Any], paths: Workspace):
    """The Tune trainable: sweep_trial with the shared worker config and the per-trial resources."""
    from core.training.inputs import worker_config

    params = params_from_dict(state["params"]).for_model()
    worker = worker_config(params, paths)
    worker["body_cache"] = state.get("body_cache")
    worker["torch_threads"] = max(1, int(state["resources"]["cpu"]))
    base = {"worker": worker, "params": state["params"], "space_paths": state["space_paths"],
            "max_epochs": state["max_epochs"], "use_gpu": state["resources"].get("gpu", 0) > 0}
    return tune.with_resources(tune.with_parameters(sweep_trial, base=base), state["resources"])
