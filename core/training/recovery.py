"""What a training driver leaves behind when it is killed (SIGKILL, OOM killer, lost node), and
how the next run picks it up.

- MLflow: every training run records its driver (`ctxemo.pid`, `ctxemo.host`). A killed driver
  cannot close its run, so at the next start `mark_abandoned_runs` sets each RUNNING train run
  whose driver is gone to FAILED, with the reason in `ctxemo.abandoned`. Gone means: on this host
  and the pid is not alive (or now belongs to a younger process), or, on another host where
  this one cannot look, started more than `ABANDONED_AFTER_S` ago.
- The exported model: `staged_dir` + `publish_dir` write `artifacts/model` next to it and
  rename it into place, so a reader sees the old folder or the new one, never half of one.
- Ray Train checkpoints: each run's folder in the Ray storage (`.ray_results/<name>/`, or S3)
  holds `ctxemo_run.json`: the run's key (a hash of the params, the workspace paths, the code
  commit and the size and mtime of every stage output training reads), its driver and its
  state. `plan_run` reuses the name of the newest run with the same key whose training did not
  complete (killed, or failed) and whose driver is gone; Ray Train V2 then restores that run's
  checkpoint manager and the workers continue from its latest checkpoint (the path that already
  restarts a worker group after a worker failure). A run that cannot be resumed correctly (no
  checkpoint reported yet, a checkpoint folder missing, the latest checkpoint file truncated) is
  deleted, and the log says so. A run whose training completed is never resumed: its
  checkpoints are being exported and dropped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ABANDONED_AFTER_S = 7 * 24 * 3600  # generous: longer than any training run ctxemo knows of
MARKER = "ctxemo_run.json"
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints
CHECKPOINT_FILE = "checkpoint.pt"              # core/training/loop.py's file in each checkpoint
TRAINING_DONE = "trained"                      # the marker state of a run whose fit completed
MAX_ATTEMPTS = 2                               # resumes from one checkpoint that got no further


def this_host() -> str:
    return socket.gethostname()


def owner() -> dict[str, Any]:
    """This driver, as recorded in MLflow tags and run markers."""
    return {"pid": os.getpid(), "host": this_host(), "started": time.time()}


def _alive(pid: int, started: float | None) -> bool:
    """Whether `pid` on this host is the process that started at `started` (epoch seconds)."""
    try:
        import psutil
    except ImportError:  # no start time to compare: a reused pid reads as alive (the safe side)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # a process created after the run started cannot be its driver: the pid was reused
        return started is None or process.create_time() <= started + 2.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def process_gone(host: str | None, pid: int | None, started: float | None, *, now: float | None = None,
                 limit: float = ABANDONED_AFTER_S) -> str | None:
    """Why the driver recorded as (host, pid, started) is gone, or None while it may be running."""
    now = time.time() if now is None else now
    if host == this_host() and pid:
        return None if _alive(pid, started) else f"its driver (pid {pid} on {host}) is gone"
    if started is not None and now - started > limit:
        return (f"it started {(now - started) / 86400:.1f} days ago on host {host or 'unknown'} "
                f"(more than {limit / 86400:g} days: taken for dead)")
    return None


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def mark_abandoned_runs(client, experiment_id: str, *, log: Callable[[str], None] = print) -> list[str]:
    """Set this experiment's RUNNING train runs whose driver is gone to FAILED; returns their ids.

    Best effort: a store that cannot be searched or updated never stops a training run.
    """
    from mlflow.exceptions import MlflowException

    marked = []
    try:
        runs = client.search_runs([experiment_id], max_results=1000,
                                  filter_string="attributes.status = 'RUNNING' and tags.`ctxemo.stage` = 'train'")
        for run in runs:
            tags = run.data.tags
            why = process_gone(tags.get("ctxemo.host"), _number(tags.get("ctxemo.pid")), run.info.start_time / 1000)
            if why is None:
                continue
            client.set_tag(run.info.run_id, "ctxemo.abandoned",
                           f"{why}; marked FAILED by the training run started {time.strftime('%Y-%m-%d %H:%M:%S')} "
                           f"(pid {os.getpid()} on {this_host()})")
            client.set_terminated(run.info.run_id, "FAILED")
            marked.append(run.info.run_id)
            log(f"MLflow run {run.info.run_id} was still RUNNING but {why}: marked FAILED")
    except MlflowException as exc:
        log(f"could not look for abandoned MLflow runs: {exc.message}")
    return marked


# --------------------------------------------------------------------------- the exported model


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A new empty folder next to `target` to write into; removed if the block fails.

    Leftovers of exports killed earlier are cleaned first (and a folder moved aside by a kill
    between `publish_dir`'s two renames is put back).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(target)
    staged = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def publish_dir(staged: Path, target: Path) -> None:
    """Put the finished `staged` folder in place of `target` by renames (same file system)."""
    target = Path(target)
    aside = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, aside)  # a folder cannot be renamed over a non-empty one: move it aside
    os.replace(staged, target)
    shutil.rmtree(aside, ignore_errors=True)


def _clean_leftovers(target: Path) -> None:
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    for path in sorted(target.parent.iterdir()):
        found = pattern.match(path.name)
        if found is None or _alive(int(found[2]), None):
            continue  # not ours, or another export in progress
        if found[1] == "old" and not target.exists():
            os.replace(path, target)  # killed between publish_dir's renames: the old model goes back
        else:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- resuming a Ray Train run


@dataclass
class RunPlan:
    """The Ray Train run name to use, and what it resumes."""

    name: str
    key: str
    storage: dict[str, Any]                      # RunConfig's storage_path / storage_filesystem
    resumed_epoch: int | None = None             # last epoch the resumed run had checkpointed
    resumed_mlflow_run: str | None = None
    attempts: int = 0                            # runs that resumed from resumed_epoch (this one included)
    owner: dict[str, Any] = field(default_factory=owner)

    @property
    def resumed(self) -> bool:
        return self.resumed_epoch is not None


def data_fingerprint(paths) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file of the stage outputs training reads.

    Stat only, no hashing: any rewrite (a rerun stage, a `dvc checkout`) counts as new data, so
    a doubt starts training afresh rather than resuming on other data.
    """
    found = []
    for root in (paths.manifest_dir, paths.labels_json, paths.detections_dir, paths.objects_dir, paths.graph_dir):
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in (p for p in files if p.is_file()):
            stat = path.stat()
            found.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return found


def run_key(params: dict[str, Any], paths, prefix: str | None) -> str:
    """Equal for two runs with the same params, workspace, code commit and data."""
    from core import tracking

    document = {"params": params, "paths": paths.resolved().to_strings(), "prefix": prefix,
                "commit": tracking.git_commit(), "data": data_fingerprint(paths)}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _filesystem(storage: dict[str, Any]):
    """(pyarrow file system, root path) of the Ray storage: local folder or S3."""
    from pyarrow import fs

    if storage.get("storage_filesystem") is not None:
        return storage["storage_filesystem"], storage["storage_path"]
    return fs.FileSystem.from_uri(storage["storage_path"])


def _read_json(filesystem, path: str) -> dict[str, Any] | None:
    try:
        with filesystem.open_input_stream(path) as stream:
            value = json.loads(stream.read().decode())
    except (OSError, ValueError):  # absent, or cut short by the kill
        return None
    return value if isinstance(value, dict) else None


def plan_run(params: dict[str, Any], paths, prefix: str | None, *, fresh_name: Callable[[str | None], str],
             log: Callable[[str], None] = print) -> RunPlan:
    """The run to resume (same key, training incomplete, driver gone), else a fresh name.

    CTXEMO_RUN_NAME (through `fresh_name`, trainer.ray_run_name) still names a run explicitly.
    """
    from core import env
    from core.storage import StorageSettings

    storage = StorageSettings.from_env().ray_run_storage(paths.resolved().ray_storage)
    key = run_key(params, paths, prefix)
    if env.run_name_to_resume() is None:
        try:
            plan = _resumable(storage, key, log)
        except OSError as exc:  # storage unreadable now: train afresh, as before this existed
            log(f"could not look for a killed run to resume in {storage['storage_path']}: {exc}")
            plan = None
        if plan is not None:
            return plan
    return RunPlan(fresh_name(prefix), key, storage)


def _resumable(storage: dict[str, Any], key: str, log: Callable[[str], None]) -> RunPlan | None:
    from pyarrow import fs

    filesystem, root = _filesystem(storage)
    candidates = []
    for info in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True)):
        marker = _read_json(filesystem, f"{info.path}/{MARKER}") if info.type == fs.FileType.Directory else None
        if not marker or marker.get("key") != key or marker.get("state") == TRAINING_DONE:
            continue
        if marker.get("state") == "running" and process_gone(
                marker.get("host"), marker.get("pid"), marker.get("started")) is None:
            continue  # still training, in another process
        candidates.append((marker.get("started") or 0.0, info.path, marker))
    if not candidates:
        return None
    _, path, marker = max(candidates, key=lambda found: (found[0], found[1]))
    name = path.rstrip("/").rsplit("/", 1)[-1]
    epoch, problem = _latest_epoch(filesystem, path)
    stalled = marker.get("attempts", 0) if epoch is not None and marker.get("resumed_epoch") == epoch else 0
    if problem is None and stalled >= MAX_ATTEMPTS:  # e.g. a checkpoint this code cannot load: never loop on it
        problem = f"{stalled} runs resumed it from epoch {epoch + 1} and none got further"
    if problem is not None:
        filesystem.delete_dir(path)
        log(f"not resuming Ray Train run {name} (an earlier run of these params and data, {marker.get('state')}): "
            f"{problem}; deleted it, training from scratch")
        return None
    log(f"resuming Ray Train run {name} (an earlier run of these params and data, {marker.get('state')}, "
        f"driver gone) from its checkpoint of epoch {epoch + 1}")
    return RunPlan(name, key, storage, resumed_epoch=epoch, resumed_mlflow_run=marker.get("mlflow_run_id"),
                   attempts=stalled + 1)


def _latest_epoch(filesystem, run_path: str) -> tuple[int | None, str | None]:
    """(epoch of the latest checkpoint, None), or (None, why Ray could not resume the run correctly)."""
    from pyarrow import fs

    snapshot = _read_json(filesystem, f"{run_path}/{SNAPSHOT}")
    latest = (snapshot or {}).get("latest_checkpoint_result")
    if not latest:
        return None, "it reported no checkpoint" + ("" if snapshot else " (no readable checkpoint record)")
    for result in snapshot.get("checkpoint_results") or []:  # Ray refuses a snapshot naming a missing folder
        folder = f"{run_path}/{result.get('checkpoint_dir_name')}"
        if filesystem.get_file_info(folder).type != fs.FileType.Directory:
            return None, f"its checkpoint {folder} is missing"
    checkpoint = f"{run_path}/{latest['checkpoint_dir_name']}/{CHECKPOINT_FILE}"
    try:
        with filesystem.open_input_file(checkpoint) as handle:
            zipfile.ZipFile(handle).close()  # the central directory sits at the end: a cut file has none
    except (OSError, zipfile.BadZipFile) as exc:
        return None, f"its latest checkpoint {checkpoint} is truncated or unreadable ({exc})"
    epoch = (latest.get("metrics") or {}).get("epoch")
    if not isinstance(epoch, int):
        return None, "its latest checkpoint records no epoch"
    return epoch, None


def write_marker(plan: RunPlan, state: str, *, mlflow_run_id: str | None = None,
                 log: Callable[[str], None] = print) -> None:
    """Record the run's key, driver and state (running, failed, trained) in its Ray storage folder."""
    filesystem, root = _filesystem(plan.storage)
    folder = f"{root.rstrip('/')}/{plan.name}"
    document = {"key": plan.key, "state": state, **plan.owner, "mlflow_run_id": mlflow_run_id,
                "resumed_epoch": plan.resumed_epoch, "attempts": plan.attempts}
    try:
        filesystem.create_dir(folder, recursive=True)
        with filesystem.open_output_stream(f"{folder}/{MARKER}") as stream:
            stream.write(json.dumps(document, indent=2).encode())
    except OSError as exc:  # without it the run cannot be resumed automatically; it still trains
        log(f"could not write {folder}/{MARKER}: {exc}")
