"""Two Ray instances on one machine do not interfere (#18, item 11).

Ray code inside workers that looks for "the" cluster by itself (Ray Train's placement-group
cleaner asks the state API with no address) used to grep the machine for GCS processes: with a
second instance running it failed with "Found multiple active Ray instances", or read the other
instance's state and removed its own run's placement group. core/ray_utils.py pins every worker
of the embedded cluster to its own address; here a training run goes on while another Ray
instance is up, in processes of their own as `python -m stages.train` would run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from support import REPO

OTHER_INSTANCE = ("import ray, time; ray.init(num_cpus=1, include_dashboard=False); "
                  "print('up', flush=True); time.sleep(900)")

TRAIN_BESIDE_IT = textwrap.dedent("""
    import json, os, sys, ray
    sys.path.insert(0, {tests!r})
    from core.params import apply_overrides, params_from_dict
    from core.ray_utils import init_ray
    from core.training import trainer
    from tiny_pipeline import build

    workspace = build(__import__("pathlib").Path({root!r}))
    params = params_from_dict(apply_overrides(workspace.params_dict, {{"train.epochs": 2}}))
    init_ray(num_cpus=2, include_dashboard=True, object_store_memory=200 * 1024**2)
    summary = trainer.run(params, workspace.train_paths("beside"), track=False)

    @ray.remote
    class Probe:
        def own_cluster(self, actor_id):
            from ray.util.state import get_actor  # no address: what Ray Train's cleaner does
            state = get_actor(actor_id, timeout=20)
            return os.environ.get("RAY_ADDRESS"), None if state is None else state.state

    probe = Probe.remote()
    address, state = ray.get(probe.own_cluster.remote(probe._actor_id.hex()))
    print("RESULT " + json.dumps({{"epochs": summary["epochs"], "worker_address": address, "state": state,
                                  "gcs": ray.get_runtime_context().gcs_address}}), flush=True)
""")


def test_training_succeeds_and_stays_on_its_own_cluster_while_another_ray_instance_runs(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    other = subprocess.Popen([sys.executable, "-c", OTHER_INSTANCE], stdout=subprocess.PIPE, text=True,
                             env=environment, cwd=tmp_path)
    try:
        assert other.stdout.readline().strip() == "up"
        script = TRAIN_BESIDE_IT.format(tests=str(REPO / "tests"), root=str(tmp_path / "ws"))
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True,
                              text=True, timeout=600)
    finally:
        other.kill()
        other.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["epochs"] == 2
    # a worker's own view: its cluster's address, and the state API finds its own actors there
    assert result["worker_address"] == result["gcs"] and result["state"] == "ALIVE"
    for symptom in ("Found multiple active Ray instances", "placement group was removed",
                    "Failed to query Ray Train Controller actor state"):
        assert symptom not in output, symptom
