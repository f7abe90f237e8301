"""Training throughput with real data loading vs the same steps on in-memory tensors.

    python benchmarks/bench_train.py [--workspace DIR] [--epochs 2]

Runs the training stage's Ray Train loop (core/training/loop.py) for params.yaml's model.name (with
its model.<name>.train overrides, as the training stage applies them) on an existing workspace (one
where `dvc repro detect objects cooccurrence embeddings` has run; default: the current directory)
for 1 and 2 Ray workers, each with the real DataLoader (JPEG decode + crop + resize in
loader workers, memmapped object features) and with every item pre-decoded in memory.
Reports samples/s of the last epoch, the loader overhead ratio and the peak resident memory
(PSS, and the RSS sum) of all Ray processes, to reports/bench_train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil


class PeakMemory:
    """Peak memory of this process and every Ray process (incl. their DataLoader workers),
    sampled every 0.5 s.

    Two sums: RSS, which counts a shared page once per process that maps it (torch's shared
    tensors, forked loader workers, the object store), so it overstates; and PSS, which
    splits every shared page between the processes sharing it: the memory really in use.
    """

    def __init__(self):
        self.peak_rss, self.peak_pss, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self):
        me = psutil.Process()
        found = {me.pid: me}
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "ray/_private" in cmd:
                found[proc.pid] = proc
                try:
                    found.update({child.pid: child for child in proc.children(recursive=True)})
                except psutil.Error:
                    pass
        return found.values()

    def _run(self):
        while not self._stop.is_set():
            rss = pss = 0
            for proc in self._processes():
                try:
                    info = proc.memory_full_info()
                except psutil.Error:  # exited between listing and reading
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(params_dict: dict, workers: int, preload: bool, epochs: int) -> dict:
    import dataclasses

    import ray

    from core.params import params_from_dict
    from core.training import inputs, loop, trainer
    from core.workspace import Workspace

    # as the training stage: the model's own train overrides (core/training/trainer.py), then the bench's
    params = params_from_dict(params_dict).for_model()
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, num_workers=workers, epochs=epochs))
    paths = Workspace.at(data_root=params.data.root, ray_storage=Path(".ray_results/bench"))
    config = inputs.worker_config(params, paths)
    config["preload"] = preload
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config["torch_threads"] = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = TorchTrainer(
            loop.train_loop_per_worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
            run_config=RunConfig(name=trainer.ray_run_name(f"bench-{workers}w"),
                                 storage_path=str(paths.resolved().ray_storage)),
        ).fit()
        seconds = time.perf_counter() - started
    last = result.metrics
    return {"workers": workers, "loader": "in-memory" if preload else "dataloader",
            "samples_per_s": round(last["train_samples_per_s"], 2), "wall_s": round(seconds, 1),
            "peak_pss_mib": round(memory.peak_pss / 2**20), "peak_rss_sum_mib": round(memory.peak_rss / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("reports/bench_train.json"))
    args = parser.parse_args()
    out = args.out.resolve()
    os.chdir(args.workspace)

    from core.env import apply_embedded_defaults
    from core.params import params_from_dict, read_yaml
    from core.ray_utils import init_ray

    apply_embedded_defaults()
    init_ray(include_dashboard=True)
    params_dict = read_yaml("params.yaml")
    trained = params_from_dict(params_dict).for_model()  # the model and train values the rows ran with
    rows = []
    for workers in args.workers:
        for preload in (False, True):
            rows.append(measure(params_dict, workers, preload, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
    for workers in args.workers:
        real = next(r for r in rows if r["workers"] == workers and r["loader"] == "dataloader")
        memory = next(r for r in rows if r["workers"] == workers and r["loader"] == "in-memory")
        real["loader_overhead_ratio"] = round(memory["samples_per_s"] / max(real["samples_per_s"], 1e-9), 3)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "params": {k: getattr(trained.train, k) for k in ("batch_size", "loader_workers")},
              "model": {"name": trained.model.name, trained.model.name: params_dict["model"][trained.model.name]},
              "epochs": args.epochs, "rows": rows,
              "note": "samples/s of the last epoch; loader_overhead_ratio = in-memory / dataloader samples/s; "
                      "peak_pss_mib: proportional set size summed over this process and all Ray processes "
                      "(shared pages split between sharers); peak_rss_sum_mib counts shared pages per process"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
