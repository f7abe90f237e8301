"""A killed training driver (#18, item 10): its MLflow run is closed as FAILED by the next run, the
exported model is never half-written, and the next run of the same params and data resumes the
killed run's Ray Train checkpoint (core/training/recovery.py)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support import repo_params

from core.params import apply_overrides, params_from_dict
from core.training import recovery, trainer
from core.workspace import Workspace


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- (a) abandoned MLflow runs


def test_a_driver_is_gone_when_its_pid_is_dead_here_or_it_is_very_old_elsewhere():
    now = time.time()
    assert recovery.process_gone(recovery.this_host(), _dead_pid(), now - 5) is not None
    assert recovery.process_gone(recovery.this_host(), os.getpid(), now) is None
    # a pid that now names a younger process is not the driver's any more
    assert recovery.process_gone(recovery.this_host(), os.getpid(), 1.0) is not None
    assert recovery.process_gone("another-host", 12345, now - 3600) is None  # cannot look: maybe alive
    assert "days ago" in recovery.process_gone("another-host", 12345, now - 30 * 86400)


def test_the_next_training_start_marks_a_killed_drivers_run_failed(mlflow_store, tmp_path):
    import mlflow

    from core import tracking

    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = tracking.setup(tmp_path)
    host = recovery.this_host()

    def running(pid: int, host: str = host) -> str:
        run = client.create_run(experiment_id, tags={"ctxemo.stage": "train", "ctxemo.pid": str(pid),
                                                     "ctxemo.host": host})
        return run.info.run_id

    killed, alive, elsewhere = running(_dead_pid()), running(os.getpid()), running(1, "another-host")
    params = repo_params().for_model()
    plan = recovery.RunPlan("train-next", "key", {})
    with contextlib.ExitStack() as stack:
        current = trainer._start_tracking(stack, params, plan, None, None)["run_id"]
        tags = client.get_run(current).data.tags
        assert tags["ctxemo.pid"] == str(os.getpid()) and tags["ctxemo.host"] == host
        assert tags["ctxemo.ray_run"] == "train-next"
    assert client.get_run(killed).info.status == "FAILED"
    assert "is gone" in client.get_run(killed).data.tags["ctxemo.abandoned"]
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(current).info.status == "FINISHED"


# --------------------------------------------------------------------------- (b) the exported model


def _fake_result(tmp_path: Path):
    """What export_best reads from a Ray Train Result: the best and latest checkpoint."""
    from ray.train import Checkpoint

    folder = tmp_path / "ray-checkpoint"
    folder.mkdir()
    model = torch.nn.Linear(4, 3)
    torch.save({"model": model.state_dict(), "spec": {"name": "rrla"}, "params": {"seed": 0}, "epoch": 1,
                "metric": {"val_map": 0.5}, "history": [{"epoch": 0}, {"epoch": 1}]}, folder / "checkpoint.pt")
    checkpoint = Checkpoint.from_directory(str(folder))
    return SimpleNamespace(get_best_checkpoint=lambda **_: checkpoint, checkpoint=checkpoint, error=None)


@pytest.fixture
def exported_before(tmp_path):
    paths = Workspace.at(tmp_path, model_dir=tmp_path / "artifacts" / "model",
                         train_report_dir=tmp_path / "reports" / "train")
    model_dir = Path(paths.model_dir)
    model_dir.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(3)}}, model_dir / "model.pt")
    (model_dir / "summary.json").write_text('{"best_epoch": 7}')
    (model_dir / "mlflow_run.json").write_text('{"run_id": "old"}')
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    return paths, before


def _assert_untouched(paths, before) -> None:
    model_dir = Path(paths.model_dir)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]  # no staging folder left


def test_an_export_that_fails_half_way_leaves_the_old_model_intact(tmp_path, exported_before, monkeypatch):
    paths, before = exported_before

    def disk_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04" + bytes(100))  # half a file, then the error
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    config = {"task": "multilabel", "classes": ["a", "b", "c"]}
    with pytest.raises(OSError, match="No space"):
        trainer._export(_fake_result(tmp_path), config, paths, None, recovery.RunPlan("r", "k", {}))
    _assert_untouched(paths, before)


def test_a_failure_while_logging_the_model_leaves_the_old_model_intact(tmp_path, exported_before, monkeypatch):
    paths, before = exported_before
    monkeypatch.setattr(trainer, "_log_model", lambda *a: (_ for _ in ()).throw(RuntimeError("store down")))
    monkeypatch.setattr(trainer, "_log_epochs_before", lambda *a: None)
    config = {"task": "multilabel", "classes": ["a", "b", "c"]}
    with pytest.raises(RuntimeError, match="store down"):
        trainer._export(_fake_result(tmp_path), config, paths, {"run_id": "new"}, recovery.RunPlan("r", "k", {}))
    _assert_untouched(paths, before)


def test_a_finished_export_replaces_the_model_whole(tmp_path, exported_before):
    paths, _ = exported_before
    model_dir = Path(paths.model_dir)
    leftover = model_dir.with_name(f".model.tmp-{_dead_pid()}-0123abcd")  # an export killed earlier
    leftover.mkdir()
    (leftover / "model.pt").write_bytes(b"half")
    config = {"task": "multilabel", "classes": ["a", "b", "c"]}
    summary = trainer._export(_fake_result(tmp_path), config, paths, None, recovery.RunPlan("r", "k", {}))
    assert summary["best_epoch"] == 1
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.pt", "summary.json"]  # the old run file went too
    assert torch.load(model_dir / "model.pt", weights_only=True)["classes"] == ["a", "b", "c"]
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]


def test_a_model_moved_aside_by_a_kill_between_the_renames_is_put_back(tmp_path):
    target = tmp_path / "artifacts" / "model"
    aside = target.with_name(f".model.old-{_dead_pid()}-0123abcd")
    aside.mkdir(parents=True)
    (aside / "model.pt").write_bytes(b"the old model")
    with pytest.raises(RuntimeError), recovery.staged_dir(target) as staged:
        assert (target / "model.pt").read_bytes() == b"the old model" and not aside.exists()
        raise RuntimeError("the export fails")
    assert not staged.exists() and (target / "model.pt").read_bytes() == b"the old model"


# --------------------------------------------------------------------------- (c) resuming a killed run


def _fake_killed_run(storage: Path, key: str, *, state: str = "running", pid: int | None = None,
                     epoch: int = 1, checkpoint: bytes | None = None) -> Path:
    """A Ray Train run folder as a driver killed after checkpointing `epoch` leaves it."""
    run = storage / f"train-killed-{state}"
    folder = run / "checkpoint_000001"
    folder.mkdir(parents=True)
    if checkpoint is None:
        torch.save({"epoch": epoch}, folder / "checkpoint.pt")
    else:
        (folder / "checkpoint.pt").write_bytes(checkpoint)
    result = {"checkpoint_dir_name": folder.name, "metrics": {"epoch": epoch, "val_map": 0.1}}
    (run / recovery.SNAPSHOT).write_text(json.dumps({"checkpoint_results": [result], "latest_checkpoint_result": result}))
    (run / recovery.MARKER).write_text(json.dumps({"key": key, "state": state, "pid": pid or _dead_pid(),
                                                   "host": recovery.this_host(),
                                                   "started": time.time() - (0 if pid else 60),
                                                   "mlflow_run_id": "abc"}))
    return run


@pytest.fixture
def plan_for(tmp_path):
    paths = Workspace.at(tmp_path, ray_storage=tmp_path / ".ray_results")
    params = {"train": {"epochs": 3}}

    def plan(**overrides) -> recovery.RunPlan:
        lines: list[str] = []
        chosen = recovery.plan_run({**params, **overrides}, paths, "train",
                                   fresh_name=lambda prefix: f"{prefix}-fresh", log=lines.append)
        chosen.log = lines
        return chosen

    key = recovery.run_key(params, paths, "train")
    return plan, key, Path(paths.ray_storage)


def test_the_same_params_and_data_resume_a_killed_runs_checkpoint(plan_for):
    plan, key, storage = plan_for
    run = _fake_killed_run(storage, key, epoch=1)
    chosen = plan()
    assert chosen.name == run.name and chosen.resumed_epoch == 1 and chosen.resumed_mlflow_run == "abc"
    assert "resuming" in chosen.log[0]
    assert plan(train={"epochs": 4}).name == "train-fresh"  # other params: a run of its own


def test_a_run_still_training_or_already_trained_is_not_resumed(plan_for):
    plan, key, storage = plan_for
    _fake_killed_run(storage, key, state="running", pid=os.getpid())  # alive: another process's run
    _fake_killed_run(storage, key, state=recovery.TRAINING_DONE)
    assert plan().name == "train-fresh"
    assert len(list(storage.iterdir())) == 2  # both left alone


def test_a_killed_run_whose_checkpoint_is_truncated_is_deleted_and_said_so(plan_for):
    plan, key, storage = plan_for
    whole = _fake_killed_run(storage, "other-key")
    half = (whole / "checkpoint_000001" / "checkpoint.pt").read_bytes()
    run = _fake_killed_run(storage, key, state="failed", checkpoint=half[: len(half) // 2])
    chosen = plan()
    assert chosen.name == "train-fresh" and not chosen.resumed
    assert not run.exists() and whole.exists()
    assert "not resuming" in chosen.log[0] and "truncated" in chosen.log[0] and "deleted it" in chosen.log[0]


def test_a_checkpoint_that_resumed_runs_never_got_past_is_given_up(plan_for):
    plan, key, storage = plan_for
    run = _fake_killed_run(storage, key, state="failed", epoch=1)
    marker = json.loads((run / recovery.MARKER).read_text())
    (run / recovery.MARKER).write_text(json.dumps({**marker, "resumed_epoch": 1, "attempts": 1}))
    assert plan().attempts == 2  # one more try
    (run / recovery.MARKER).write_text(json.dumps({**marker, "resumed_epoch": 1, "attempts": 2}))
    chosen = plan()
    assert chosen.name == "train-fresh" and not run.exists() and "none got further" in chosen.log[0]


SIGKILL_EPOCHS = 3
DRIVER = """
import json, sys
from core.env import apply_embedded_defaults
apply_embedded_defaults()
from core import tracking
from core.params import params_from_dict
from core.training import trainer
from core.workspace import Workspace
tracking.git_commit = lambda cwd=None: "pinned"  # others commit to this checkout while the test runs
trainer.run(params_from_dict(json.loads(sys.argv[1])), Workspace.from_strings(json.loads(sys.argv[2])))
"""


def _first_checkpoint(storage: Path, driver: subprocess.Popen, timeout: float = 240) -> Path:
    """The run folder once it records a checkpoint (the driver still training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before it could be killed"
        for snapshot in storage.glob(f"*/{recovery.SNAPSHOT}"):
            with contextlib.suppress(ValueError, OSError):
                if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                    return snapshot.parent
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def _end_session(driver: subprocess.Popen) -> None:
    """End what is left of the driver's session (its embedded Ray), and wait until it is gone."""
    deadline = time.monotonic() + 20
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.poll()
            time.sleep(0.2)
            os.killpg(driver.pid, 0)  # ProcessLookupError once none is left


def _latest(run: Path) -> dict:
    snapshot = json.loads((run / recovery.SNAPSHOT).read_text())["latest_checkpoint_result"]
    return torch.load(run / snapshot["checkpoint_dir_name"] / "checkpoint.pt", weights_only=True)


@pytest.mark.slow  # 60-90 s (two Ray starts); the plan_run tests and test_train's worker-failure test cover it fast
def test_sigkill_of_the_driver_then_a_rerun_resumes_at_the_next_epoch(tiny_workspace, mlflow_store, tmp_path,
                                                                     request, monkeypatch):
    """The issue's proof: kill -9 the training driver after its first checkpoint, run again."""
    import mlflow

    from core import tracking

    monkeypatch.setattr(tracking, "git_commit", lambda cwd=None: "pinned")

    params_dict = apply_overrides(tiny_workspace.params_dict, {"train.epochs": SIGKILL_EPOCHS})
    paths = tiny_workspace.train_paths("sigkill").moved(ray_storage=tmp_path / "ray")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(params_dict), json.dumps(paths.to_strings())],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run = _first_checkpoint(Path(paths.ray_storage), driver)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        _end_session(driver)
    killed = _latest(run)
    killed_run_id = json.loads((run / recovery.MARKER).read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(mlflow_store)
    assert client.get_run(killed_run_id).info.status == "RUNNING"  # what the kill leaves

    request.getfixturevalue("ray_local")
    summary = trainer.run(params_from_dict(params_dict), paths)

    assert summary["resumed_from_epoch"] == killed["epoch"] < SIGKILL_EPOCHS - 1
    assert summary["epochs"] == SIGKILL_EPOCHS and [p.name for p in Path(paths.ray_storage).iterdir()] == [run.name]
    history = json.loads((Path(paths.train_report_dir) / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(SIGKILL_EPOCHS))
    # the epochs up to the checkpoint were not trained again: their records (timings included) are the killed run's
    assert history[: killed["epoch"] + 1] == killed["history"]
    assert client.get_run(killed_run_id).info.status == "FAILED"
    assert "is gone" in client.get_run(killed_run_id).data.tags["ctxemo.abandoned"]
    resumed = client.get_run(summary["mlflow_run_id"])
    assert resumed.info.status == "FINISHED" and resumed.data.tags["ctxemo.resumed_from_run"] == killed_run_id
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "val_map")) == list(range(SIGKILL_EPOCHS))
    assert torch.load(Path(paths.model_dir) / "model.pt", weights_only=True)["task"] == "multilabel"
