"""core/training/backend.py: Ray Train's torch backend with torch only where tensors live.

The driver that builds the run and the Train controller stay without torch (about 0.33 GiB of PSS
each under TorchTrainer); two workers still get torch.distributed's process group, one gets none.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import REPO

# In a fresh process (pytest itself has torch loaded): one 1-worker and one 2-worker run. Each
# worker reports whether it has a process group, the sum of an all_reduce over the group, and
# whether the live Train controller process (found by its process title among the worker's raylet's
# children) has libtorch mapped.
PROBE = textwrap.dedent("""
    import json, pathlib, sys
    import ray
    from ray.train import RunConfig, ScalingConfig
    from core.ray_utils import init_ray
    from core.training.backend import data_parallel_trainer

    def probe(config):
        import pathlib, psutil, torch, torch.distributed as dist, ray.train

        raylet = psutil.Process().parent()  # this cluster's: another Ray may run on the machine
        controllers = [p for p in raylet.children() if (p.cmdline() or [""])[0].startswith("ray::TrainController")]
        mapped = [open(f"/proc/{p.pid}/maps").read() for p in controllers]
        rank = ray.train.get_context().get_world_rank()
        grouped = dist.is_available() and dist.is_initialized()
        total = torch.tensor([rank + 1.0])
        if grouped:
            dist.all_reduce(total)
        seen = {"controllers": len(controllers), "controller_torch": any("libtorch" in m for m in mapped),
                "process_group": grouped, "backend": dist.get_backend() if grouped else None, "rank_sum": float(total)}
        pathlib.Path(config["out"], f"rank{rank}.json").write_text(json.dumps(seen))

    init_ray(num_cpus=2, object_store_memory=100 * 1024**2)
    runs = {}
    for workers in (1, 2):
        out = pathlib.Path(sys.argv[1], f"{workers}w")
        out.mkdir(parents=True)
        data_parallel_trainer(probe, train_loop_config={"out": str(out)}, scaling_config=ScalingConfig(num_workers=workers),
                              run_config=RunConfig(name=f"backend-{workers}w", storage_path=sys.argv[1])).fit()
        runs[workers] = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(workers)]
    print(json.dumps({"driver_torch": "torch" in sys.modules, "runs": runs}))
""")


def test_one_worker_runs_without_torch_in_driver_or_controller_and_two_get_a_gloo_group(tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "ray")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["driver_torch"] is False
    [one], two = report["runs"]["1"], report["runs"]["2"]
    assert one["controllers"] == 1 and one["controller_torch"] is False
    assert one["process_group"] is False and one["rank_sum"] == 1.0
    # two workers: Ray's torch backend (imported by the controller then) joins them over gloo
    assert len(two) == 2
    assert all(rank["process_group"] is True and rank["backend"] == "gloo" and rank["rank_sum"] == 3.0 for rank in two)
