"""pipelines/flows.py without running a flow: its shell steps, and the retrain deployment as
infra/prefect/prefect.yaml and `ctxemo retrain --serve` declare it (the flow runs are in test_flows.py)."""
from __future__ import annotations

import os
import sys
import time

import pytest
import yaml
from support import REPO

from core.errors import UserError
from pipelines import flows


def test_shell_steps_report_the_exit_code_with_the_output_tail_and_stop_at_their_timeout(tmp_path):
    import logging

    logger = logging.getLogger("test-flows")
    with pytest.raises(flows.StepFailed, match=r"exit code 3; last output:\nbefore the error"):
        flows.run_command([sys.executable, "-c", "print('before the error'); raise SystemExit(3)"], tmp_path,
                          dict(os.environ), 60, logger)
    marker = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(flows.StepFailed, match="ran past its 2 s timeout"):
        flows.run_command(["bash", "-c", f"sleep 60 & echo $! > {marker}; wait"], tmp_path, dict(os.environ), 2,
                          logger)
    assert time.monotonic() - started < 30
    child = int(marker.read_text())
    time.sleep(0.2)
    # the command's children went with it: gone, or a killed zombie awaiting a reaper
    # (in a container whose PID 1 does not reap orphans)
    import psutil

    try:
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_the_work_pool_deployment_matches_the_flow():
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((REPO / "infra/prefect/prefect.yaml").read_text())
    deployment = next(d for d in config["deployments"] if d["entrypoint"] == "pipelines/flows.py:retrain")
    loaded = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert loaded.name == "retrain"
    validated = loaded.validate_parameters(deployment["parameters"])
    assert validated["workspace"] == deployment["work_pool"]["job_variables"]["working_dir"]
    assert validated["pull"] and validated["push"] and validated["promote"]
    assert all(s["cron"] for s in deployment["schedules"])
    # one run at a time, the next queued: what `ctxemo retrain --serve` sets too
    assert deployment["concurrency_limit"] == {"limit": flows.RETRAIN_CONCURRENCY, "collision_strategy": "ENQUEUE"}
    assert flows.RETRAIN_CONCURRENCY == 1


def test_the_retrain_schedule_has_one_home_the_work_pool_deployment(tmp_path):
    from pipelines import flows

    config = yaml.safe_load((REPO / "infra/prefect/prefect.yaml").read_text())
    weekly = next(d for d in config["deployments"] if d["name"] == "retrain-weekly")["schedules"][0]
    assert flows.deployment_schedule("retrain-weekly", REPO) == (weekly["cron"], weekly["timezone"])
    deployment = flows.retrain_deployment("retrain-weekly", *flows.deployment_schedule("retrain-weekly", REPO))
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [(weekly["cron"],
                                                                                       weekly["timezone"])]
    assert deployment.concurrency_limit == 1
    with pytest.raises(UserError, match="has no cron schedule: pass --cron"):
        flows.deployment_schedule("no-such-deployment", REPO)


@pytest.mark.parametrize("ray_address", [None, "127.0.0.1:6379"])
def test_the_flows_own_ray_serves_loopback_only_and_a_joined_cluster_keeps_its_settings(ray_address):
    """Without RAY_ADDRESS the flows' task runner starts a local Ray on 127.0.0.1, as init_ray does (the
    stage subprocesses join it there); with it, nothing is switched. Checked in a fresh interpreter:
    the switch is read when the flows module is imported."""
    import subprocess

    probe = ("import os, pipelines.flows, ray._private.ray_constants as c; from ray import tune; "  # tune: ray whole
             "print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'), c.ENABLE_RAY_CLUSTER)")
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    if ray_address:
        environment["RAY_ADDRESS"] = ray_address
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == (["None", "True"] if ray_address else ["0", "False"])
