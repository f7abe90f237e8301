"""A cluster on one machine, on 127.0.0.1 only: two Ray nodes, an S3 server and an MLflow tracking server.

    python tests/cluster_harness.py up [--root /tmp/ctxemo-cluster]    # all three; prints the exports;
                                                                       # Ctrl-C (or `stop`) stops them all

tests/test_cluster.py runs the cluster path end to end on it; README.md ("The cluster path on a
laptop") shows how a user tries it. What each piece is:

- Ray: a head node and a worker node, each its own raylet with `cpus_per_node` CPUs, started with
  `ray.cluster_utils.Cluster` in a process of their own (`ray-nodes` mode). `ray start` cannot
  do this on loopback: Ray on Linux rewrites a node address of 127.0.0.1 to the routable one, and
  with its switch against that (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) `ray start` refuses worker
  nodes. That process takes commands on stdin and answers each with a JSON line: `kill-worker`
  (SIGKILL to the worker node's raylet, as when a machine is lost; its workers die with it),
  `add-worker` (a replacement node) and `stop`. Its RAY_TMPDIR is its own folder, so Ray's
  "current cluster" file does not send a later `ray.init()` on this machine to it. The GCS declares
  a lost node dead after about 3 s (health checks every 0.5 s) instead of Ray's default 30 s or so.
  Token authentication is off: everything listens on 127.0.0.1 only.
- S3: SeaweedFS (`weed mini`, tests/s3_fixture.py), with a key pair made up for the session.
- MLflow: `mlflow server` with a SQLite backend store and its artifact store on that S3
  (`--artifacts-destination s3://BUCKET/PREFIX/mlflow`): clients reach artifacts through the server.
  Its GenAI job runner is off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): eight processes ctxemo never uses.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# The GCS marks a node dead after `failure_threshold` missed checks `period_ms` apart.
FAST_NODE_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                   "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def cluster_env() -> dict[str, str]:
    """What every process of the loopback cluster and every driver joining it needs."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 (see the module docstring)
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# --------------------------------------------------------------------------- Ray: the nodes' own process


def serve_ray_nodes(root: Path, cpus_per_node: int, object_store_bytes: int) -> None:
    """The `ray-nodes` process: start the head and one worker node, then obey stdin until `stop`."""
    from ray.cluster_utils import Cluster

    def node_args(**extra: Any) -> dict[str, Any]:
        return {"node_ip_address": LOOPBACK, "num_cpus": cpus_per_node, "object_store_memory": object_store_bytes,
                **extra}

    cluster = Cluster(initialize_head=True, head_node_args=node_args(
        include_dashboard=True, dashboard_host=LOOPBACK, temp_dir=str(root)))
    workers = [cluster.add_node(**node_args())]

    def say(**message: Any) -> None:
        print(json.dumps(message), flush=True)

    def node_id(node) -> str:
        return node.node_id

    say(event="up", address=cluster.address, head=node_id(cluster.head_node), workers=[node_id(w) for w in workers],
        session_dir=cluster.head_node.get_session_dir_path())
    for line in sys.stdin:
        command = line.strip()
        if command == "kill-worker":
            node = workers.pop(0)
            pid = node.all_processes["raylet"][0].process.pid
            node.kill_raylet()  # SIGKILL: no draining, no goodbye to the GCS
            say(event="killed", node=node_id(node), raylet_pid=pid)
        elif command == "add-worker":
            workers.append(cluster.add_node(**node_args()))
            say(event="added", node=node_id(workers[-1]))
        elif command == "stop":
            break
        elif command:
            say(event="error", message=f"unknown command {command!r}")
    cluster.shutdown()
    say(event="stopped")


# --------------------------------------------------------------------------- Ray: the handle tests hold


class RayNodes:
    """The `ray-nodes` process seen from outside: its address, node ids and commands."""

    def __init__(self, root: Path, cpus_per_node: int = 1, object_store_bytes: int = 200 * 1024**2,
                 extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        (root / "ray").mkdir(parents=True, exist_ok=True)  # RAY_TMPDIR/ray: Ray's "current cluster" file
        environment = {**os.environ, **cluster_env(), **FAST_NODE_DEATH, "RAY_TMPDIR": str(root), **(extra_env or {})}
        environment.pop("RAY_ADDRESS", None)
        self.log_file = root / "ray-nodes.log"
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "ray-nodes", "--root", str(root),
                 "--cpus-per-node", str(cpus_per_node), "--object-store-bytes", str(object_store_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
                start_new_session=True)
        up = self._answer("up")
        self.address: str = up["address"]
        self.head: str = up["head"]
        self.workers: list[str] = up["workers"]
        self.killed: list[str] = []

    def _answer(self, event: str) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=STOP_TIMEOUT_S)
            raise RuntimeError(f"the Ray nodes' process exited ({self.process.returncode}) before saying "
                               f"{event!r}:\n{_tail(self.log_file)}")
        answer = json.loads(line)
        if answer.get("event") != event:
            raise RuntimeError(f"the Ray nodes' process said {answer}, not {event!r}")
        return answer

    def _command(self, command: str, event: str) -> dict[str, Any]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer(event)

    def kill_worker(self) -> dict[str, Any]:
        """SIGKILL the (first) worker node's raylet: the node is lost, with the workers it ran."""
        killed = self._command("kill-worker", "killed")
        self.workers.remove(killed["node"])
        self.killed.append(killed["node"])
        return killed

    def add_worker(self) -> str:
        added = self._command("add-worker", "added")["node"]
        self.workers.append(added)
        return added

    def env(self) -> dict[str, str]:
        """What a driver on this machine sets to join the cluster."""
        return {**cluster_env(), "RAY_ADDRESS": self.address}

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self._command("stop", "stopped")
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.process.poll() is None:
            _kill_group(self.process)
        # whatever a killed node left behind (its workers are in the raylet's session)
        subprocess.run(["pkill", "-9", "-f", str(self.root)], check=False)


# --------------------------------------------------------------------------- MLflow


@dataclass
class MlflowServer:
    process: subprocess.Popen
    url: str
    log_file: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            _kill_group(self.process)


def start_mlflow_server(root: Path, artifacts_destination: str, environment: dict[str, str]) -> MlflowServer:
    """`mlflow server` on a free loopback port: SQLite store under `root`, artifacts proxied to the destination."""
    from s3_fixture import free_ports

    root.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    log_file = root / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", artifacts_destination, "--workers", "1"]
    # No job runner (MLflow 3's GenAI evaluation jobs: a runner and a pool of consumer processes)
    environment = {**environment, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=environment,
                                   start_new_session=True)
    server = MlflowServer(process, f"http://{LOOPBACK}:{port}", log_file)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{_tail(log_file)}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server not up after {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log_file)}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- all three


@contextmanager
def loopback_cluster(root: Path, cpus_per_node: int = 1) -> Iterator[dict[str, Any]]:
    """S3, MLflow on it and two Ray nodes, all stopped on leaving; yields the exports and the handles."""
    from s3_fixture import start_seaweedfs, stop_seaweedfs

    with ExitStack() as stack:
        weed, s3 = start_seaweedfs(root / "s3")
        stack.callback(stop_seaweedfs, weed)
        prefix = "ctxemo"
        exports = {**s3.env(), "CTXEMO_S3_PREFIX": prefix}
        mlflow = start_mlflow_server(root / "mlflow", f"s3://{s3.bucket}/{prefix}/mlflow", {**os.environ, **exports})
        stack.callback(mlflow.stop)
        ray_nodes = RayNodes(root / "ray", cpus_per_node=cpus_per_node, extra_env=exports)
        stack.callback(ray_nodes.stop)
        exports.update({**ray_nodes.env(), "MLFLOW_TRACKING_URI": mlflow.url})
        yield {"exports": exports, "s3": s3, "mlflow": mlflow, "ray": ray_nodes}


def _kill_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    nodes = sub.add_parser("ray-nodes", help="(internal) the Ray nodes' process")
    nodes.add_argument("--root", type=Path, required=True)
    nodes.add_argument("--cpus-per-node", type=int, default=1)
    nodes.add_argument("--object-store-bytes", type=int, default=200 * 1024**2)
    up = sub.add_parser("up", help="start S3, MLflow and two Ray nodes; print the exports; Ctrl-C stops them")
    up.add_argument("--root", type=Path, default=None, help="state folder (default: a new one in /tmp)")
    up.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode == "ray-nodes":
        serve_ray_nodes(args.root, args.cpus_per_node, args.object_store_bytes)
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="ctxemo-cluster-", dir="/tmp"))
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    with loopback_cluster(root, args.cpus_per_node) as cluster:
        print("# the cluster is up; in another shell:")
        for key, value in sorted(cluster["exports"].items()):
            print(f"export {key}={value}")
        print("# Ctrl-C here stops S3, MLflow and both Ray nodes", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
