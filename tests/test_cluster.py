"""The cluster path as a whole, on one machine (tests/cluster_harness.py): two Ray nodes, S3 and MLflow.

One run, in the order a user meets it:
1. A git + DVC workspace of the tiny generated data set: the raw data `dvc add`-ed, DVC's remote on
   S3 (`ctxemo storage dvc-remote`), code, dvc.yaml, params.yaml and raw.dvc committed and pushed
   to a bare git remote. No stage has run.
2. `ctxemo retrain --push` with RAY_ADDRESS, MLFLOW_TRACKING_URI and the S3 settings exported: every
   stage through DVC as a Prefect task on the cluster (the objects stage on Ray Data, its actors
   writing the shards), training with 2 Ray Train workers, one per node (each node has 1 CPU,
   each worker reserves 1).
3. Mid-training, once epoch 0's checkpoint is in S3, the worker node's raylet is killed (a lost
   machine) and a replacement node joins; Ray Train's FailureConfig restarts the worker group from
   that checkpoint on the head and the new node, and the run finishes: evaluate, register, promote,
   commit dvc.lock (with the uncached outputs), dvc push to S3, git push of the tag.
4. A fresh clone of the tag elsewhere: `dvc pull --with-deps evaluate` from S3, `dvc status` of the
   same finds nothing stale (the `people` and `compare` stages are not retrain's to run), and
   `ctxemo predict --model models:/<name>@champion` there, with only the MLflow server and S3,
   gives the scores the workspace's own model gives.
Every server it started is stopped (the fixtures' finalizers), and the test checks no Ray process
of its cluster is left.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cluster_harness import RayNodes, start_mlflow_server
from s3_fixture import list_keys
from support import REPO

from core import faults

MODEL_NAME = "ctxemo-cluster-test"
RETRAIN_TIMEOUT_S = 1500
EPOCHS = 3
# The first worker to finish epoch 0 (its checkpoint committed) holds there: the test kills its node
# meanwhile, or the head's worker sleeps until Ray Train stops the group. Fires once in all.
HOLD_AFTER_FIRST_EPOCH = faults.Fault("train.after_epoch", when={"epoch": 0}, action="sleep", seconds=600)
BIN = Path(sys.executable).parent


def run(cwd: Path, *command: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def cluster_root():
    """A short folder directly in /tmp: Ray's socket paths under it must stay within AF_UNIX's 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="ccl-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(s3_settings, cluster_root):
    server = start_mlflow_server(cluster_root / "mlflow", f"s3://{s3_settings.bucket}/{s3_settings.prefix}/mlflow",
                                 dict(os.environ))
    yield server
    server.stop()
    assert server.process.poll() is not None


@pytest.fixture(scope="module")
def ray_nodes(s3_settings, cluster_root):
    """Head + worker, 1 CPU each; started after s3_settings so every node's workers find the S3 credentials."""
    nodes = RayNodes(cluster_root / "ray", cpus_per_node=1)
    yield nodes
    nodes.stop()
    left = subprocess.run(["pgrep", "-f", str(cluster_root / "ray")], capture_output=True, text=True).stdout.split()
    assert nodes.process.poll() is not None and not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def cluster_env(s3_settings, mlflow_server, ray_nodes, tmp_path_factory):
    """What a user exports on the machine they drive the cluster from."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("CTXEMO_MLFLOW_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    environment.update(ray_nodes.env())
    environment.update({"MLFLOW_TRACKING_URI": mlflow_server.url,
                        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
                        "DVC_SITE_CACHE_DIR": str(tmp_path_factory.mktemp("dvc-site")),
                        "PATH": f"{BIN}{os.pathsep}{environment.get('PATH', '')}"})
    return environment


@pytest.fixture(scope="module")
def workspace(tiny_workspace, cluster_env, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny data set as a git + DVC project with its DVC remote on S3; returns (workspace, git origin)."""
    ws = tmp_path_factory.mktemp("cluster-ws")
    shutil.copytree(tiny_workspace.root / "raw", ws / "raw")
    for code in ("core", "stages", "models"):
        shutil.copytree(REPO / code, ws / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    params = json.loads(json.dumps(tiny_workspace.params_dict))
    params["data"]["root"] = params["synth"]["out"] = "raw"
    params["train"].update({"epochs": EPOCHS, "num_workers": 2, "cpus_per_worker": 1, "max_failures": 2})
    params["objects"]["engine"] = "ray"  # auto would compute 16 images in-process
    params["registry"] = {"model_name": MODEL_NAME, "min_improvement": 0.005}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(ws, "git", "init", "-q", "-b", "main")
    run(ws, "git", "config", "user.name", "Cluster Test")
    run(ws, "git", "config", "user.email", "cluster-test@example.invalid")
    run(ws, sys.executable, "-m", "dvc", "init", "-q", env=cluster_env)
    run(ws, sys.executable, "-m", "dvc", "add", "-q", "raw", env=cluster_env)
    said = run(ws, str(BIN / "ctxemo"), "storage", "dvc-remote", env=cluster_env)
    assert "(default)" in said
    run(ws, "git", "add", "-A")
    run(ws, "git", "commit", "-q", "-m", "tiny data set, DVC remote on S3")
    origin = tmp_path_factory.mktemp("git-origin")
    run(origin, "git", "init", "-q", "--bare")
    run(ws, "git", "remote", "add", "origin", str(origin))
    run(ws, "git", "push", "-q", "origin", "main")
    return ws, origin


def test_retrain_on_two_nodes_survives_a_lost_node_and_a_fresh_clone_serves_the_champion(
        workspace, cluster_env, ray_nodes, s3_settings, tmp_path):
    ws, origin = workspace
    summary_file = tmp_path / "retrain-summary.json"
    log_file = tmp_path / "retrain.log"
    first_worker_node = ray_nodes.workers[0]
    started = time.monotonic()
    with faults.inject(HOLD_AFTER_FIRST_EPOCH) as injection, open(log_file, "w") as log:
        retrain = subprocess.Popen([str(BIN / "ctxemo"), "retrain", "--push", "--summary", str(summary_file)],
                                   cwd=ws, env=cluster_env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            held = _wait_for_hold(injection, retrain, log_file)
            keys_mid_training = list_keys(s3_settings, "ray")
            killed = ray_nodes.kill_worker()
            replacement = ray_nodes.add_worker()
            code = retrain.wait(timeout=RETRAIN_TIMEOUT_S)
        finally:
            if retrain.poll() is None:
                retrain.kill()
    seconds = time.monotonic() - started
    output = log_file.read_text(errors="replace")
    assert code == 0, output[-6000:]
    summary = json.loads(summary_file.read_text())
    print(json.dumps({"seconds": round(seconds, 1), "steps": [(s["step"], s.get("outcome"), s["seconds"],
                                                                 s.get("ray_node_id", "")[:8]) for s in summary["steps"]
                                                                if "seconds" in s]}, indent=1))

    # Every stage ran through DVC, as its own task
    stages = [s for s in summary["steps"] if "outcome" in s]
    assert [s["step"] for s in stages] == summary["stages"] and summary["stages"][-2:] == ["train", "evaluate"]
    # raw.dvc (the `dvc add`-ed data) is DVC's too: up to date, as committed; every pipeline stage ran
    assert [(s["step"], s["outcome"]) for s in stages if s["step"].endswith(".dvc")] == [("raw.dvc", "up to date")]
    assert all(s["outcome"] == "ran" for s in stages if not s["step"].endswith(".dvc")), stages
    nodes_of_steps = {s["ray_node_id"] for s in summary["steps"] if s.get("ray_node_id")}
    assert nodes_of_steps <= {ray_nodes.head, first_worker_node, replacement}
    # The objects stage's Ray Data actors wrote its shards themselves, on the cluster's nodes
    writers = re.findall(r"objects: shards written by (.*)", output)
    assert len(writers) == 1 and "in-process" not in writers[0], output[-6000:]
    assert set(re.findall(r"node ([0-9a-f]{56}) pid", writers[0])) <= {ray_nodes.head, first_worker_node}

    # Training: 2 workers on the 2 nodes; after the loss of one, the group restarted from epoch 1 on
    # the head and the replacement, from the checkpoint in S3
    assert killed["node"] == first_worker_node and held["epoch"] == 0
    train_summary = json.loads((ws / "reports/train/summary.json").read_text())
    before, after = train_summary["placement"]
    assert before["from_epoch"] == 0 and {w["node_id"] for w in before["workers"]} == {ray_nodes.head, first_worker_node}
    assert after["from_epoch"] == 1 and {w["node_id"] for w in after["workers"]} == {ray_nodes.head, replacement}
    assert all(w["node_ip"] == "127.0.0.1" for group in (before, after) for w in group["workers"])
    history = json.loads((ws / "reports/train/history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    run_name = re.escape(train_summary.get("ray_run", "")) or r"[^/]+"
    checkpoint_keys = [k for k in keys_mid_training if re.search(rf"/ray/{run_name}/checkpoint_[^/]+/checkpoint\.pt$", k)]
    assert checkpoint_keys, keys_mid_training

    # Registered, promoted, recorded in git and pushed: DVC's cache and MLflow's artifacts are in S3
    assert summary["version"] == "1" and summary["champion"] == "1"
    tag = summary["git"]["tag"]
    assert summary["git"]["push"]["pushed"] and run(origin, "git", "rev-parse", f"{tag}^{{commit}}")
    keys = list_keys(s3_settings)
    prefix = s3_settings.prefix
    assert any(k.startswith(f"{prefix}/dvc/files/md5/") for k in keys)
    assert any(k.startswith(f"{prefix}/mlflow/") and k.endswith("MLmodel") for k in keys)
    print("S3 keys:", json.dumps(_key_groups(keys, prefix), indent=1))

    # A fresh clone elsewhere: pull, nothing stale, and the champion from MLflow + S3 alone
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    run(clone, "git", "checkout", "-q", tag)
    elsewhere = {k: v for k, v in cluster_env.items() if k != "RAY_ADDRESS"}
    # `evaluate` and what it depends on: what retrain reproduces (people and compare are other targets)
    run(clone, sys.executable, "-m", "dvc", "pull", "--with-deps", "evaluate", env=elsewhere, timeout=600)
    status = run(clone, sys.executable, "-m", "dvc", "status", "--with-deps", "evaluate", env=elsewhere)
    assert "Data and pipelines are up to date." in status, status
    image = sorted((clone / "raw").rglob("*.jpg"))[0].relative_to(clone)
    champion = _predict(clone, elsewhere, image, f"models:/{MODEL_NAME}@champion")
    local = _predict(ws, elsewhere, image, "artifacts/model")
    assert champion["model_version"] == "1" and champion["people"][0]["box_source"] == local["people"][0]["box_source"]
    assert _scores(champion) == pytest.approx(_scores(local), abs=1e-6)


def _wait_for_hold(injection, retrain: subprocess.Popen, log_file: Path) -> dict:
    """The firing of the hold after epoch 0 (the epoch's checkpoint is committed by then)."""
    deadline = time.monotonic() + RETRAIN_TIMEOUT_S
    while not injection.fired("train.after_epoch"):
        if retrain.poll() is not None:
            pytest.fail(f"retrain ended ({retrain.returncode}) before training held after epoch 0:\n"
                        + log_file.read_text(errors="replace")[-6000:])
        if time.monotonic() > deadline:
            pytest.fail("training never reached the end of epoch 0")
        time.sleep(0.2)
    return injection.fired("train.after_epoch")[0]


def _predict(cwd: Path, environment: dict[str, str], image: Path, model: str) -> dict:
    done = subprocess.run([str(BIN / "ctxemo"), "predict", str(image), "--box", "10,10,120,200", "--model", model],
                          cwd=cwd, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _scores(prediction: dict) -> dict[str, float]:
    return {e["label"]: e["score"] for e in prediction["people"][0]["emotions"]}


def _key_groups(keys: list[str], prefix: str) -> dict[str, int]:
    """How many keys under each top folder of the prefix (dvc/, mlflow/, ray/)."""
    groups: dict[str, int] = {}
    for key in keys:
        top = key[len(prefix) + 1:].split("/", 1)[0]
        groups[top] = groups.get(top, 0) + 1
    return groups
