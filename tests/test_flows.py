"""Prefect flows on Ray: `retrain` through DVC end to end, retries, a failed evaluation, a real server, ablations.

The workspace is the tiny generated one made into a git + DVC project (dvc.yaml and the stage code
copied in, the data stages' outputs committed with `dvc commit`, dvc.yaml, params.yaml and dvc.lock
committed to git), so `retrain` runs the real production path: one task per DVC stage of `evaluate`,
each `python -m dvc repro --single-item <stage>` as a subprocess that joins the test's Ray cluster,
then registration and the gate on the workspace's MLflow store, then dvc.lock committed and tagged.
The runs build on each other (fixtures chain them): the first model becomes champion (Prefect's
test harness), a second run finds every stage up to date, a run beside a held workspace lock is
refused, then a second model whose evaluation stage is broken runs against a real `prefect server`
on loopback and leaves the first one champion. The gate's decisions themselves are tested in
test_registry.py; the stage plan, the lock and the git steps piece by piece in test_dvc_stages.py,
the shell steps and the deployment's declaration in test_flow_pieces.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO  # noqa: E402

from core import faults
from core.data.ingest import ingest_metrics
from core.errors import UserError
from core.workspace import Workspace
from pipelines import dvc_stages, flows, registry

MODEL_NAME = "ctxemo-flow-test"
PIPELINE = ("ingest", "detect", "objects", "cooccurrence", "embeddings", "train", "evaluate")
# Appended before the stage's `if __name__ == "__main__":`, so `main()` calls this `run`.
BROKEN_EVALUATION = ('def run(*args, **kwargs):\n'
                     '    raise RuntimeError("evaluation broke: test split unreadable")\n\n\n')


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="module", autouse=True)
def flow_environment(tmp_path_factory):
    """Prefect, DVC and MLflow state of this module in temp dirs; the workspace's own MLflow store."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        patch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site")))
        for key in ("MLFLOW_TRACKING_URI", "CTXEMO_MLFLOW_ARTIFACT_ROOT", "RAY_ADDRESS", "PREFECT_API_URL",
                    "CTXEMO_S3_BUCKET"):
            patch.delenv(key, raising=False)
        from prefect.settings import PREFECT_HOME, temporary_settings

        with temporary_settings(updates={PREFECT_HOME: str(home)}):
            yield


def dvc(workspace: Path, *args: str) -> str:
    return git(workspace, *args, command=[sys.executable, "-m", "dvc"])


def git(workspace: Path, *args: str, command: list[str] | None = None) -> str:
    done = subprocess.run([*(command or ["git"]), *args], cwd=workspace, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


@pytest.fixture(scope="module")
def workspace(tiny_workspace, tmp_path_factory) -> Path:
    """The tiny workspace as a git + DVC project whose data stages are up to date (dvc commit), with a DVC
    remote and a git remote `origin` (both folders beside it)."""
    ws = tmp_path_factory.mktemp("dvc-ws")
    shutil.copytree(tiny_workspace.root / "raw", ws / "raw")
    shutil.copytree(tiny_workspace.root / "data", ws / "data")
    for code in ("core", "stages", "models"):
        shutil.copytree(REPO / code, ws / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    (ws / "reports").mkdir()
    summary = json.loads((ws / "data/manifest/summary.json").read_text())
    (ws / "reports/ingest.json").write_text(json.dumps(ingest_metrics(summary)))
    params = json.loads(json.dumps(tiny_workspace.params_dict))
    params["data"]["root"] = params["synth"]["out"] = "raw"
    params["train"]["epochs"] = 1
    params["registry"] = {"model_name": MODEL_NAME, "min_improvement": 0.005}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(ws, "init", "-q", "-b", "main")
    git(ws, "config", "user.name", "Retrain Test")
    git(ws, "config", "user.email", "retrain-test@example.invalid")
    dvc(ws, "init", "-q")
    dvc(ws, "commit", "-f", "ingest", "objects", "cooccurrence", "embeddings")
    dvc(ws, "remote", "add", "-d", "local", str(tmp_path_factory.mktemp("dvc-remote")))
    git(ws, "add", "dvc.yaml", "params.yaml", "dvc.lock", ".dvc/config", ".dvc/.gitignore")
    git(ws, "commit", "-q", "-m", "tiny workspace")
    origin = tmp_path_factory.mktemp("git-remote")
    git(origin, "init", "-q", "--bare")
    git(ws, "remote", "add", "origin", str(origin))
    return ws


@pytest.fixture(scope="module")
def stages(workspace):
    """What the flow runs for `evaluate`, in DVC's order for this workspace: the order of independent
    stages is DVC's choice (it follows the string hash seed), so it is read here, never written down."""
    plan = dvc_stages.stage_plan(workspace, "evaluate")
    assert sorted(plan) == sorted(PIPELINE) and plan[0] == "ingest" and plan[-2:] == ["train", "evaluate"]
    return plan


# --------------------------------------------------------------------------- running and reading flow runs


@dataclass
class FlowRunRecord:
    state: Any
    result: dict[str, Any] | None
    task_runs: list[Any]
    logs: str
    flow_run_name: str
    stored_state: Any = None        # the flow run's state as read back from the server
    flow_name: str | None = None

    def task_run(self, name: str):
        """The task run of step `name` (run names are `<name>-<suffix>` unless set explicitly)."""
        found = [t for t in self.task_runs if t.name == name or t.name.rsplit("-", 1)[0] == name]
        assert len(found) == 1, [t.name for t in self.task_runs]
        return found[0]

    def task_run_names(self) -> list[str]:
        """The task runs' names in the order they started."""
        return [t.name for t in sorted(self.task_runs, key=lambda t: t.start_time)]

    def ran(self, name: str) -> bool:
        return any(t.name.rsplit("-", 1)[0] == name for t in self.task_runs)


def run_flow(flow_fn, wait_for_log: str | tuple[str, ...] | None = None, **parameters) -> FlowRunRecord:
    """Run a flow and read its state, task runs and logs back through the API it ran against."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    state = flow_fn(**parameters, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        flow_run_name = client.read_flow_run(flow_run_id).name
        deadline = time.monotonic() + 20
        while True:  # task logs come from the Ray workers' own log senders, a moment later
            logs = "\n".join(log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200))
            awaited = (wait_for_log,) if isinstance(wait_for_log, str) else wait_for_log or ()
            if all(line in logs for line in awaited) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return FlowRunRecord(state=state, result=state.result() if state.is_completed() else None,
                         task_runs=list(task_runs), logs=logs, flow_run_name=flow_run_name)


def champion_version(client) -> str | None:
    version = registry.version_by_alias(client, MODEL_NAME, registry.CHAMPION)
    return None if version is None else str(version.version)


def run_id_of(ws: Path) -> str:
    return json.loads((ws / "artifacts/model/mlflow_run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def test_api():
    """Prefect's test harness (a temporary API server), one for the module's runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="module")
def first_run(workspace, ray_local, test_api):
    """retrain on a fresh workspace, pushing; evaluation fails once (injected) and succeeds on its retry."""
    evaluate_fails_once = faults.Fault("flow.step", when={"step": "evaluate"}, times=1)
    with faults.inject(evaluate_fails_once):
        record = run_flow(flows.retrain, wait_for_log=("injected fault", "tagged retrain-"),
                          workspace=str(workspace), push=True, retry_backoff_seconds=0.2)
    return record, run_id_of(workspace)


@pytest.fixture(scope="module")
def unchanged_run(workspace, first_run):
    """retrain again with nothing changed; the git repository before and after it."""
    before = git(workspace, "rev-parse", "HEAD").strip(), git(workspace, "tag").split()
    record = run_flow(flows.retrain, workspace=str(workspace), retry_backoff_seconds=0.2)
    return record, before, (git(workspace, "rev-parse", "HEAD").strip(), git(workspace, "tag").split())


# --------------------------------------------------------------------------- retrain


def test_retrain_runs_dvc_stages_on_ray_and_makes_the_first_model_champion(stages, workspace, first_run):
    record, run_id = first_run
    assert record.state.is_completed(), record.state.message
    result = record.result
    # one task run per stage of `dvc repro evaluate`, named after it, in DVC's order, then the gate, git, push
    assert result["stages"] == stages and [s["step"] for s in result["steps"]] == [*stages, "dvc-push"]
    assert record.task_run_names()[:len(stages)] == stages
    assert [n.rsplit("-", 1)[0] for n in record.task_run_names()[len(stages):]] == [
        "register", "promote", "commit-lock", "dvc-push", "git-push"]
    assert [s["command"] for s in result["steps"]] == [f"dvc repro --single-item {s}" for s in stages] + ["dvc push"]
    # DVC decided: the data stages committed by the fixture were up to date, the rest ran
    assert {s["step"]: s.get("outcome") for s in result["steps"][:len(stages)]} == {
        "ingest": "up to date", "detect": "ran", "objects": "up to date", "cooccurrence": "up to date",
        "embeddings": "up to date", "train": "ran", "evaluate": "ran"}
    # every step ran as a Ray task (RayTaskRunner), the stages went through DVC
    assert all(s["ray_task_id"] for s in result["steps"]) and result["registered"]["ray_task_id"]
    assert "Data and pipelines are up to date" in dvc(workspace, "status", "train", "evaluate")

    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert {"train", "evaluate"} <= set(lock)
    assert result["run_id"] == run_id and result["version"] == "1" and result["champion"] == "1"
    decision = result["decision"]
    assert decision["promote"] and decision["applied"] and decision["champion"] is None

    client = registry.client_for(None, workspace)
    assert champion_version(client) == "1"
    version = client.get_model_version(MODEL_NAME, "1")
    metrics = json.loads((workspace / "reports/metrics.json").read_text())
    assert version.run_id == run_id and float(version.tags["metric.mAP"]) == metrics["mAP"]
    assert decision["challenger"]["value"] == metrics["mAP"]
    manifest_md5 = next(o["md5"] for o in lock["ingest"]["outs"] if o["path"] == "data/manifest")
    assert version.tags["data_md5.data/manifest"] == manifest_md5
    # the version of the test data the evaluation scored, read from the data itself
    from core.workspace import Workspace

    now = registry.current_data_version(Workspace.at(workspace))
    assert now is not None and version.tags["data_version"] == metrics["test_data_version"] == now


def test_the_promotion_commits_dvc_lock_and_the_uncached_outputs_and_tags_it(workspace, first_run):
    record, _ = first_run
    tag = f"retrain-{record.flow_run_name}-v1"
    head = git(workspace, "rev-parse", "HEAD").strip()
    # DVC's `cache: false` outputs of the stages that ran: git's to keep, as `dvc push` never uploads them
    uncached = ["data/graph/cooccurrence.png", "reports/ingest.json", "reports/metrics.json", "reports/metrics_per_class.json", "reports/plots",
                "reports/train/history.json", "reports/train/summary.json"]
    assert record.result["git"] == {"commit": head, "committed": True, "tag": tag, "files": ["dvc.lock", *uncached],
                                    "push": {"tag": tag, "remote": "origin", "pushed": True}}
    assert git(workspace, "rev-parse", f"{tag}^{{commit}}").strip() == head
    origin = git(workspace, "remote", "get-url", "origin").strip()
    assert git(Path(origin), "rev-parse", f"{tag}^{{commit}}").strip() == head  # after `dvc push`
    assert "Everything is up to date" in dvc(workspace, "push")
    subject, body = git(workspace, "log", "-1", "--format=%s%n%b").split("\n", 1)
    assert subject == f"retrain {record.flow_run_name}: dvc.lock of {MODEL_NAME} version 1"
    assert record.result["run_id"] in body and "promoted it to champion" in body
    committed = git(workspace, "show", "--name-only", "--format=", "HEAD").split()
    # exactly these (the files of reports/plots/ counted as their folder)
    assert {re.sub(r"^reports/plots/.*", "reports/plots", c) for c in committed} == {"dvc.lock", *uncached}
    assert git(workspace, "show", "HEAD:dvc.lock") == (workspace / "dvc.lock").read_text()
    assert int(git(workspace, "rev-list", "--count", "HEAD")) == 2
    # nothing else: the model, DVC's .gitignore entries and the code stay out of the commit
    assert "?? artifacts/" in git(workspace, "status", "--porcelain", "--untracked-files=normal")
    assert f"dvc.lock committed as {head[:12]}, tagged {tag}" in record.logs


def test_a_failed_commit_of_dvc_lock_leaves_the_promotion_standing(tmp_path, test_api):
    from prefect import flow

    @flow
    def record_promotion() -> dict[str, Any]:
        return flows._record_promotion(tmp_path, "calm-fox", "id", MODEL_NAME, {"version": "2", "run_id": "r"}, 0.01)

    not_git = record_promotion(return_state=True)  # no git repository: logged and skipped
    assert not_git.is_completed() and not_git.result()["skipped"].startswith(f"{tmp_path} is not a git repository")
    broken = faults.Fault("flow.step", when={"step": "commit-lock"}, times=10)  # fails the step for good
    with faults.inject(broken):
        state = record_promotion(return_state=True)
    assert state.is_completed() and "injected fault at flow.step (step='commit-lock'" in state.result()["skipped"]


def test_a_second_run_with_nothing_changed_finds_every_stage_up_to_date(stages, unchanged_run):
    record, before, after = unchanged_run
    assert record.state.is_completed(), record.state.message
    assert record.task_run_names()[:len(stages)] == stages
    assert [(s["step"], s["outcome"]) for s in record.result["steps"]] == [(s, "up to date") for s in stages]
    assert all(record.task_run(s).run_count == 1 for s in stages)
    # the same model: registered once, nothing promoted, nothing committed or tagged
    assert record.result["version"] == "1" and not record.result["decision"]["promote"]
    assert record.result["git"] is None and not record.ran("commit-lock") and after == before


def test_a_run_on_a_workspace_another_run_holds_is_refused_naming_both(workspace, first_run, test_api):
    holder = "retrain flow run 'the-other-one'"
    with dvc_stages.workspace_lock(workspace, holder):
        record = run_flow(flows.retrain, workspace=str(workspace), retry_backoff_seconds=0.2)
    assert record.state.is_failed()
    assert f"workspace {workspace} is busy: {holder} (pid {os.getpid()} on" in record.state.message
    assert "ctxemo-retrain.lock" in record.state.message and record.task_runs == []
    with dvc_stages.workspace_lock(workspace, "the next run"):  # the refused run took nothing with it
        pass


def test_scaling_workers_actors_and_retries_makes_nothing_stale(workspace, first_run):
    # what dvc.yaml leaves out (core/params.py SCHEDULING_KEYS): a run scaled from 1 worker to 4 reruns nothing
    original = (workspace / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["train"].update(num_workers=4, loader_workers=3, max_failures=5, use_gpu=False)
    params["objects"].update(num_actors=8, batch_size=16, shard_size=64)
    params["detect"].update(batch_size=3, engine="ray", ray_min_images=1, ray_min_cpus=1)
    try:
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert "Data and pipelines are up to date" in dvc(workspace, "status", "train", "evaluate")
        params["train"]["lr"] = params["train"]["lr"] / 2  # a setting that changes results still does
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert "train.lr" in dvc(workspace, "status", "train")
    finally:
        (workspace / "params.yaml").write_text(original)


def test_a_step_that_fails_once_succeeds_on_its_retry(stages, first_run):
    from prefect.client.schemas.objects import StateType

    record, _ = first_run
    evaluate = record.task_run("evaluate")
    assert evaluate.run_count == 2 and evaluate.state.type == StateType.COMPLETED
    # only the stage the fault hit failed and was retried
    for stage in stages[:-1]:
        assert record.task_run(stage).run_count == 1 and record.task_run(stage).state.type == StateType.COMPLETED
    assert "injected fault at flow.step (step='evaluate', attempt=1)" in record.logs
    assert set(re.findall(r"injected fault at flow\.step \(step='([^']+)'", record.logs)) == {"evaluate"}


# --------------------------------------------------------------------------- a real Prefect server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def failed_run(workspace, first_run, unchanged_run, prefect_server):
    """A second model (new learning rate) whose evaluation stage is broken for real; on a real server."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] * 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    evaluate_py = workspace / "stages/evaluate.py"
    original = evaluate_py.read_text()
    entry = 'if __name__ == "__main__":'
    assert original.count(entry) == 1
    evaluate_py.write_text(original.replace(entry, BROKEN_EVALUATION + entry))
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            record = run_flow(flows.retrain, wait_for_log="evaluation broke", workspace=str(workspace),
                              retry_backoff_seconds=0.2)
            with get_client(sync_client=True) as client:  # the state as the server holds it
                stored = client.read_flow_run(record.state.state_details.flow_run_id)
                record.stored_state, record.flow_name = stored.state, client.read_flow(stored.flow_id).name
    finally:
        evaluate_py.write_text(original)
    return record, run_id_of(workspace)



def test_a_failed_evaluation_fails_the_flow_run_on_a_prefect_server_and_leaves_the_champion_untouched(
        workspace, first_run, failed_run):
    from prefect.client.schemas.objects import StateType

    record, new_run_id = failed_run
    assert record.flow_name == "retrain" and record.stored_state.type == StateType.FAILED
    # the stage's own error reaches the flow run's state and the Prefect logs
    message = record.stored_state.message
    assert "dvc repro --single-item evaluate` failed" in message and "evaluation broke" in message
    assert "RuntimeError: evaluation broke: test split unreadable" in record.logs
    assert record.task_run("evaluate").run_count == 1 + flows.STEPS["evaluate"].retries
    assert record.task_run("train").run_count == 1
    assert not record.ran("register") and not record.ran("promote") and not record.ran("commit-lock")

    assert new_run_id != first_run[1]  # a new model was trained ...
    client = registry.client_for(None, workspace)
    assert champion_version(client) == "1"  # ... and the champion did not move
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 1
    # DVC removed the old metrics.json before the failed stage: promoting by hand is refused too
    with pytest.raises(UserError, match="evaluate the model first"):
        registry.evaluated_model(Workspace.at(workspace), client)


def test_serving_the_schedule_registers_a_weekly_deployment_the_server_schedules(workspace, prefect_server):
    """`ctxemo retrain --serve --cron ...` (a long-running process) against the real server."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    serving = subprocess.Popen([str(Path(sys.executable).parent / "ctxemo"), "retrain", "--serve", "--cron", "0 3 * * 1"],
                               cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            deployment = runs = None
            while time.monotonic() < deadline and serving.poll() is None:
                if deployment is None:
                    found = client.read_deployments()
                    deployment = next((d for d in found if d.name == "retrain-weekly"), None)
                if deployment is not None:  # the server's scheduler turns the cron into upcoming runs
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                    if runs:
                        break
                time.sleep(1)
            assert serving.poll() is None, serving.stdout.read()
            assert client.read_flow(deployment.flow_id).name == "retrain"
    finally:
        serving.terminate()
        try:
            serving.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serving.kill()
    assert deployment.parameters == {"workspace": str(workspace), "pull": False, "push": False, "promote": True}
    assert deployment.global_concurrency_limit.limit == 1  # one run at a time: the server queues the next
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
    assert runs and all(r.state.type == StateType.SCHEDULED for r in runs)
    assert all(r.expected_start_time.weekday() == 0 and r.expected_start_time.hour == 3 for r in runs)


# --------------------------------------------------------------------------- ablations fanned out on Ray


@pytest.mark.slow  # two trainings: ~60 s here; the retrain tests cover RayTaskRunner on the fast path
def test_ablation_variants_run_side_by_side_as_ray_tasks(workspace, ray_local, test_api):
    record = run_flow(flows.ablations, workspace=str(workspace), variants=["full", "no_eld"],
                      out_root="artifacts/ablations-flow", report_dir="reports/ablations-flow")
    assert record.state.is_completed(), record.state.message
    rows = {row["variant"]: row for row in record.result["rows"]}
    assert set(rows) == {"full", "no_eld"}
    for variant in rows:
        metrics = json.loads((workspace / f"artifacts/ablations-flow/{variant}/seed0/metrics.json").read_text())
        assert rows[variant]["test_mAP"] == metrics["mAP"]
    assert rows["full"]["delta_vs_full"] == 0.0
    assert rows["no_eld"]["delta_vs_full"] == pytest.approx(rows["no_eld"]["test_mAP"] - rows["full"]["test_mAP"])
    report = json.loads((workspace / "reports/ablations-flow/ablations.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["no_eld", "full"]  # the paper's column order
    # fanned out: the two variant tasks overlapped in time
    full, no_eld = record.task_run("ablation-full-seed0"), record.task_run("ablation-no_eld-seed0")
    assert full.start_time < no_eld.end_time and no_eld.start_time < full.end_time
