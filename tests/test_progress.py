"""What a user sees of long work: progress (core/progress.py), the log file and the terminal's share of
it (pipelines/session_log.py), each epoch reported once, and Ray's and torch's start-up noise gone."""
from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from types import SimpleNamespace

import pytest
from support import REPO

from core import env
from core.progress import Progress
from pipelines import session_log


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def auto_progress(monkeypatch):
    """No CTXEMO_PROGRESS: the stream decides."""
    monkeypatch.delenv("CTXEMO_PROGRESS", raising=False)


def _work(stream, total=100, **kwargs) -> str:
    with Progress(total, "work", unit="items", stream=stream, quiet_s=0.0, redraw_s=0.0, **kwargs) as progress:
        for _ in range(total):
            progress.update()
    return stream.getvalue()


# --------------------------------------------------------------------------- core/progress.py


def test_off_a_terminal_progress_is_one_plain_line_per_quarter(auto_progress):
    out = _work(io.StringIO())
    assert "\r" not in out
    lines = out.splitlines()
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["25%", "50%", "75%", "100%"]
    assert lines[-1].startswith("work: 100% (100/100 items, ") and "items/s" in lines[-1]


def test_without_the_final_line_three_lines_and_a_jump_over_quarters_is_one_line(auto_progress):
    assert len(_work(io.StringIO(), final=False).splitlines()) == 3
    stream = io.StringIO()
    with Progress(4, "epoch", stream=stream, quiet_s=0.0) as progress:
        progress.update(3)  # 75% at once: one line, not three
        progress.update(1)
    assert [line.split(" ")[1] for line in stream.getvalue().splitlines()] == ["75%", "100%"]


def test_on_a_terminal_progress_is_a_redrawn_bar(auto_progress):
    out = _work(Terminal())
    redraws = out.split("\r")
    assert len(redraws) > 10, "the bar was not redrawn as the work went on"
    assert "100/100" in redraws[-1] and out.endswith("\n")
    assert not re.search(r"^work: \d+% \(", out, re.MULTILINE), "plain lines beside the bar"


def test_ctxemo_progress_overrides_the_terminal_test(monkeypatch):
    monkeypatch.setenv("CTXEMO_PROGRESS", "plain")
    assert "\r" not in _work(Terminal())
    monkeypatch.setenv("CTXEMO_PROGRESS", "bar")
    assert "\r" in _work(io.StringIO())
    assert "\r" not in _work(Terminal(), bar=False)  # what Ray workers ask for, whatever the variable says


def test_work_done_within_the_quiet_time_shows_nothing(auto_progress):
    stream = io.StringIO()
    with Progress(8, "quick", stream=stream, quiet_s=60.0) as progress:
        for _ in range(8):
            progress.update()
        progress.note("a line of the caller's own")
    assert stream.getvalue() == "a line of the caller's own\n"


def test_the_sweep_reports_each_ended_trial_and_pickles_without_its_bar(auto_progress, capsys):
    from pipelines.sweep.callbacks import SweepProgress

    def trial(trial_id, metric, epochs, finished=True):
        return SimpleNamespace(trial_id=trial_id, last_result={"val_metric": metric, "training_iteration": epochs},
                               is_finished=lambda: finished)

    callback = SweepProgress(num_samples=3, metric_name="val_map", max_epochs=4)
    first, second, running = trial("a", 0.5, 4), trial("b", 0.7, 1), trial("c", 0.6, 2, finished=False)
    callback.setup()
    callback.on_trial_complete(0, [first, running], first)
    callback.on_trial_complete(0, [first, second, running], second)
    restored = pickle.loads(pickle.dumps(callback))  # Tune saves its callbacks with the experiment
    assert restored._progress is None
    lines = capsys.readouterr().err.splitlines()
    # the best so far counts the running trial's latest result too
    assert lines == ["[sweep] trial a finished: val_map 0.5000 after 4 epoch(s); 1/3 trials ended, best val_map 0.6000",
                     ("[sweep] trial b stopped early (ASHA): val_map 0.7000 after 1 epoch(s); 2/3 trials ended, "
                      "best val_map 0.7000")]


# --------------------------------------------------------------------------- pipelines/session_log.py


def test_log_path_is_in_the_workspace_logs_folder_and_never_reuses_a_file(tmp_path):
    when = datetime(2026, 1, 2, 3, 4, 5)
    path = session_log.log_path(tmp_path, "demo", when)
    assert path == tmp_path / "logs" / "demo-20260102-030405.log"
    assert session_log._create(path) == path
    assert session_log._create(path) == tmp_path / "logs" / "demo-20260102-030405-2.log"


@pytest.mark.parametrize(("line", "shown"), [
    ("(RayTrainWorker pid=12) Reporting training result 1: TrainingReport(...)", None),
    ("\x1b[36m(RayTrainWorker pid=12)\x1b[0m [train] epoch 1/2 loss 0.1", "[train] epoch 1/2 loss 0.1"),
    ("2026-11-30 10:09:25,432\tINFO worker.py:2038 -- Started a local Ray instance.", None),
    ("2026/11/30 10:20:43 INFO mlflow.store.db.utils: Creating initial MLflow database tables...", None),
    ("2026-11-30 10:09:25,432\tWARNING worker.py:1 -- something real", "same"),
    (("[2026-11-30 10:12:47,882 E 15053 15053] core_worker.cc:2465: Actor with class name: 'MapWorker' and ID: 'b8' "
      "has constructor arguments in the object store and max_restarts > 0. If the arguments ..."), None),
    ("[2026-11-30 10:12:47,882 E 15053 15053] gcs_client.cc:1: lost the GCS", "same"),
    (("(pid=gcs_server) [2026-12-01 02:25:05,514 E 18418 18418] (gcs_server) gcs_actor_scheduler.cc:538: Failed to "
      "kill actor cc0c, return status: Invalid: KillActor RPC failed for actor cc0c: RpcError: RPC error: Socket "
      "closed rpc_code: 14"), None),
    (("(pid=gcs_server) [2026-12-01 02:25:05,514 E 18418 18418] (gcs_server) gcs_actor_scheduler.cc:538: Failed to "
      "kill actor cc0c, return status: Invalid: KillActor RPC failed for actor cc0c: RpcError: deadline exceeded"),
     "same"),
    ("(RayTrainWorker pid=12) /x/torch.py:3: UserWarning: careful", "same"),
    ("Running stage 'train':", "same"),
    ("Traceback (most recent call last):", "same"),
])
def test_the_terminal_shows_stages_results_and_trouble_not_rays_chatter(line, shown):
    clean = session_log.ANSI.sub("", line)
    assert session_log.TerminalFilter()(clean) == (clean if shown == "same" else shown)


def test_lines_continuing_a_shown_ray_line_are_shown_and_those_of_a_hidden_one_are_not():
    show = session_log.TerminalFilter()
    assert show("(TrainController pid=5) Failed to register placement group with cleaner: the actor died") is not None
    assert show("(TrainController pid=5) \tclass_name: PlacementGroupCleaner") is not None
    assert show("(TrainController pid=5) Started training worker group of size 1:") is None
    assert show("(TrainController pid=5) - (ip=127.0.0.1, pid=9) world_rank=0") is None
    assert show("(TrainController pid=5)   indented detail of the hidden line") is None


CHILD = textwrap.dedent(r"""
    import os, sys, time
    print("(RayTrainWorker pid=12) Reporting training result 1: TrainingReport(...)")
    print("\x1b[36m(RayTrainWorker pid=12)\x1b[0m [train] epoch 1/2 loss 0.1")
    print("2026-11-30 10:09:25,432\tINFO worker.py:2038 -- Started a local Ray instance.")
    for i in (1, 2, 3):
        sys.stderr.write(f"\rbar {i}/3"); sys.stderr.flush(); time.sleep(0.05)
    sys.stderr.write("\n")
    print("progress mode", os.environ.get("CTXEMO_PROGRESS"))
    sys.exit(3)
""")


def test_a_session_logs_everything_and_shows_the_readable_part(tmp_path, monkeypatch, auto_progress):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    with session_log.session(tmp_path, "demo") as path:
        print("[demo] generating data")
        code = session_log.call([sys.executable, "-c", CHILD])
    assert code == 3
    assert sys.stdout is terminal and path.parent == tmp_path / "logs" and path.name.startswith("demo-")

    logged = path.read_text()
    assert "\x1b" not in logged and "\r" not in logged
    for line in ("[demo] generating data", "(RayTrainWorker pid=12) Reporting training result 1",
                 "(RayTrainWorker pid=12) [train] epoch 1/2 loss 0.1", "INFO worker.py:2038", "bar 3/3"):
        assert line in logged, line
    assert "bar 1/3" not in logged, "the bar's redraws were written to the file"

    shown = terminal.getvalue()
    announce = f"[demo] full log: {path}"
    assert shown.startswith(announce + "\n") and shown.endswith(announce + "\n")
    assert "[demo] generating data\n" in shown and "\n[train] epoch 1/2 loss 0.1\n" in shown
    assert "Reporting training result" not in shown and "Started a local Ray instance" not in shown
    assert "\rbar 1/3\rbar 2/3\rbar 3/3\n" in shown, "the bar was not passed on live"
    assert "progress mode None" in shown  # not a terminal: the child is not told to draw bars


def test_a_child_of_a_session_on_a_terminal_is_told_to_draw_bars(tmp_path, monkeypatch, auto_progress):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with session_log.session(tmp_path, "stage-train", tag="train"):
        session_log.call([sys.executable, "-c", "import os; print('mode', os.environ.get('CTXEMO_PROGRESS'))"])
    assert "mode bar\n" in terminal.getvalue() and terminal.getvalue().startswith("[train] full log: ")


def test_a_failing_block_still_names_its_log_and_the_file_keeps_the_error(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    with pytest.raises(RuntimeError), session_log.session(tmp_path, "demo") as path:
        raise RuntimeError("stage broke")
    assert terminal.getvalue().count(f"[demo] full log: {path}") == 2
    assert "RuntimeError: stage broke" in path.read_text()


# --------------------------------------------------------------------------- environment and warnings


def test_the_embedded_cluster_says_token_auth_unless_the_user_said_otherwise(monkeypatch):
    from core import ray_utils

    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_ENABLE_PRINT_PATCH"):
        monkeypatch.delenv(name, raising=False)  # and back to what they were after the test
    env.apply_embedded_defaults()
    assert os.environ["RAY_AUTH_MODE"] == "token"

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env.apply_embedded_defaults()
    ray_utils.embedded_cluster_env()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"

    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")  # joining a cluster: its settings, not ours
    env.apply_embedded_defaults()
    assert "RAY_AUTH_MODE" not in os.environ

    ray_utils.quiet_ray_env()
    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"


def test_the_embedded_cluster_starts_with_token_auth_and_without_the_warning(tmp_path):
    script = textwrap.dedent("""
        from core.ray_utils import init_ray
        init_ray(num_cpus=1, object_store_memory=100 * 1024**2)
        import ray
        from ray._raylet import AuthenticationMode, get_authentication_mode
        print("token auth:", get_authentication_mode() == AuthenticationMode.TOKEN)
        ray.shutdown()
    """)
    environ = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "token auth: True" in done.stdout
    assert "Token authentication is enabled" not in done.stdout + done.stderr


def _import_warnings(module: str) -> str:
    done = subprocess.run([sys.executable, "-W", "default", "-c", f"import {module}"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_importing_dagnet_prints_no_torch_jit_futurewarning():
    assert "`torch.jit.script` is deprecated" in _import_warnings("torch_geometric")  # what is filtered
    assert "torch.jit.script" not in _import_warnings("models.dagnet")


# --------------------------------------------------------------------------- a tiny training run


def _output_until(capfd, marker: str, timeout_s: float = 60.0, settle_s: float = 3.0) -> str:
    """Captured output until `marker` has arrived and `settle_s` more (Ray forwards worker lines late)."""
    out, deadline, seen_at = "", time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        captured = capfd.readouterr()
        out += captured.out + captured.err
        if seen_at is None and marker in out:
            seen_at = time.monotonic()
        if seen_at is not None and time.monotonic() - seen_at >= settle_s:
            break
        time.sleep(0.2)
    return out


def test_each_epoch_of_a_training_run_is_reported_once(tiny_workspace, ray_local, capfd):
    from core.params import params_from_dict
    from core.training import trainer

    result, _ = trainer.fit(params_from_dict(tiny_workspace.params_dict), tiny_workspace.train_paths("once"),
                            run_name="once")
    assert result.error is None
    out = _output_until(capfd, "[train] epoch 2/2 loss")
    for epoch in (1, 2):
        assert len(re.findall(rf"\[train\] epoch {epoch}/2 loss ", out)) == 1, out[-3000:]
    assert "torch.jit.script" not in out
    assert "has constructor arguments in the object store" not in out  # no preemption watcher on one node
