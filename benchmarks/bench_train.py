"""Training throughput with real data loading vs the same steps on in-memory tensors.

    python benchmarks/bench_train.py [--workspace DIR] [--epochs 2]

Runs the training stage's epoch loop (core/training/loop.py EpochLoop) for params.yaml's model.name
(with its model.<name>.train overrides, as the training stage applies them) on an existing
workspace (one where `dvc repro detect objects cooccurrence embeddings` has run; default: the
current directory): driven in-process by a plain loop with Ray down, and under Ray Train with 1
and 2 workers, in rounds (`--repeats`; each round runs every row once); each with the real DataLoader (JPEG decode + crop + resize in loader
workers, memmapped object features) and with every item pre-decoded in memory. Reports samples/s
of the last epoch, the loader overhead ratio, Ray Train's samples/s over the in-process loop's (the
fastest runs, and per round), the step's FLOPs and share of the fp32 matmul peak, and
the peak memory (PSS, and the RSS sum) of this process, its children and all Ray processes, to
reports/bench_train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from perf import achieved, machine, matmul_peak, step_flops


class PeakMemory:
    """Peak memory of this process, its children (DataLoader workers) and every Ray process.

    Two sums: RSS, which counts a shared page once per process that maps it (torch's shared
    tensors, forked loader workers, the object store), so it overstates; and PSS, which
    splits every shared page between the processes sharing it: the memory really in use.
    Light on purpose, since it shares the cores with what it measures: the process list is
    refreshed every `list_s`, RSS (one read of /proc/<pid>/statm) every `rss_s`, PSS (the
    kernel walks the page tables for /proc/<pid>/smaps_rollup) every `pss_s`.
    """

    def __init__(self, rss_s: float = 0.5, pss_s: float = 2.0, list_s: float = 5.0):
        self.peak_rss, self.peak_pss, self._stop = 0, 0, threading.Event()
        self.peak_pss_by_label: dict[str, int] = {}  # MiB by kind of process, at the PSS peak
        self.rss_s, self.pss_s, self.list_s = rss_s, pss_s, list_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _processes() -> list[psutil.Process]:
        me = psutil.Process()
        found = {me.pid: me}
        roots = [me]
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "ray/_private" in cmd:
                roots.append(proc)
        for proc in roots:
            found[proc.pid] = proc
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.Error:
                pass
        return list(found.values())

    @staticmethod
    def _label(proc: psutil.Process) -> str:
        """What a process is: `ray::<actor or task>`, a Ray daemon, the bench itself or a child of it."""
        try:
            words = proc.cmdline() or [proc.name()]
        except psutil.Error:
            return "?"
        if words[0].startswith("ray::"):
            return words[0]
        if proc.pid == os.getpid():
            return "bench (driver / in-process loop)"
        if Path(__file__).name in " ".join(words):
            return "bench child (DataLoader worker)"
        script = next((Path(w).name for w in words if w.endswith(".py")), None)
        return script or ("python -c (a Ray helper)" if "-c" in words else Path(words[0]).name)

    def _sum(self, processes, pss: bool) -> int:
        total, by_label = 0, {}
        for proc in processes:
            try:
                used = proc.memory_full_info().pss if pss else proc.memory_info().rss
            except (psutil.Error, AttributeError):  # exited between listing and reading
                continue
            total += used
            if pss:
                label = self._label(proc)
                by_label[label] = by_label.get(label, 0) + used
        if pss and total > self.peak_pss:
            self.peak_pss_by_label = {k: round(v / 2**20) for k, v in sorted(by_label.items(), key=lambda kv: -kv[1])}
        return total

    def _run(self):
        listed = pss_read = 0.0
        processes: list[psutil.Process] = []
        while not self._stop.is_set():
            now = time.monotonic()
            if now - listed >= self.list_s:
                processes, listed = self._processes(), now
            self.peak_rss = max(self.peak_rss, self._sum(processes, pss=False))
            if now - pss_read >= self.pss_s:
                self.peak_pss, pss_read = max(self.peak_pss, self._sum(processes, pss=True)), now
            self._stop.wait(self.rss_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_params(params_dict: dict, workers: int, epochs: int):
    """The params the training stage would train with (the model's train overrides), for the bench."""
    import dataclasses

    from core.params import params_from_dict

    params = params_from_dict(params_dict).for_model()
    return dataclasses.replace(params, train=dataclasses.replace(params.train, num_workers=workers, epochs=epochs))


def measure_in_process(params_dict: dict, preload: bool, epochs: int, threads: int) -> dict:
    """The same EpochLoop the Ray Train worker runs, driven by a plain loop in this process (no Ray)."""
    from core.training import inputs
    from core.training.loop import EpochLoop
    from core.workspace import Workspace

    params = bench_params(params_dict, 1, epochs)
    paths = Workspace.at(data_root=params.data.root)
    config = {**inputs.worker_config(params, paths), "preload": preload, "torch_threads": threads}
    with PeakMemory() as memory:
        started = time.perf_counter()
        loop = EpochLoop(config)
        loop.prepare()
        for epoch in range(epochs):
            record = loop.run_epoch(epoch)
        seconds = time.perf_counter() - started
    return {"workers": 1, "runner": "in-process", "loader": "in-memory" if preload else "dataloader",
            "samples_per_s": round(record["train_samples_per_s"], 2), "wall_s": round(seconds, 1),
            "peak_pss_mib": round(memory.peak_pss / 2**20), "peak_rss_sum_mib": round(memory.peak_rss / 2**20),
            "peak_pss_by_process_mib": memory.peak_pss_by_label}


def measure_step_flops(params_dict: dict, threads: int) -> dict:
    """FLOPs per sample of the demo model's training step (one in-memory batch), and the machine's fp32
    matmul peak with the threads a lone worker trains with: what "the step at x % of the peak" divides by."""
    import torch

    from core.training import inputs
    from core.training.loop import EpochLoop
    from core.workspace import Workspace

    params = bench_params(params_dict, 1, 1)
    config = {**inputs.worker_config(params, Workspace.at(data_root=params.data.root)), "preload": True,
              "torch_threads": threads}
    loop = EpochLoop(config)
    loop.prepare()
    flops = step_flops(loop)
    torch.set_num_threads(threads)
    return {"flops": {k: v for k, v in flops.items() if k != "by_op"}, "matmul_peak": matmul_peak(2048, 5)}


def measure(params_dict: dict, workers: int, preload: bool, epochs: int) -> dict:
    import ray

    from core.training import inputs, loop, trainer
    from core.workspace import Workspace

    params = bench_params(params_dict, workers, epochs)
    paths = Workspace.at(data_root=params.data.root, ray_storage=Path(".ray_results/bench"))
    config = inputs.worker_config(params, paths)
    config["preload"] = preload
    from ray.train import RunConfig, ScalingConfig

    from core.training.backend import data_parallel_trainer

    config["torch_threads"] = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    name = trainer.ray_run_name(f"bench-{workers}w")
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = data_parallel_trainer(
            loop.train_loop_per_worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
            run_config=RunConfig(name=name, storage_path=str(paths.resolved().ray_storage)),
        ).fit()
        seconds = time.perf_counter() - started
    last = result.metrics
    # A checkpoint per epoch (the model and its momentum): kept, 12 rows filled 47 GB of disk
    shutil.rmtree(Path(paths.resolved().ray_storage) / name, ignore_errors=True)
    return {"workers": workers, "runner": "ray-train", "loader": "in-memory" if preload else "dataloader",
            "samples_per_s": round(last["train_samples_per_s"], 2), "wall_s": round(seconds, 1),
            "peak_pss_mib": round(memory.peak_pss / 2**20), "peak_rss_sum_mib": round(memory.peak_rss / 2**20),
            "peak_pss_by_process_mib": memory.peak_pss_by_label}


def best_of(runs: list[dict]) -> dict:
    """The fastest of repeated runs of a row, with every run's samples/s; memory from the hungriest run."""
    fastest, hungriest = max(runs, key=lambda r: r["samples_per_s"]), max(runs, key=lambda r: r["peak_pss_mib"])
    return {**fastest, "all_samples_per_s": [r["samples_per_s"] for r in runs],
            **{key: hungriest[key] for key in ("peak_pss_mib", "peak_rss_sum_mib", "peak_pss_by_process_mib")}}


def in_process_run(epochs: int, loader: str) -> dict:
    """One in-process run in a fresh interpreter: memory a finished loop leaves in a process's
    allocator would otherwise count against the runs after it."""
    done = subprocess.run([sys.executable, __file__, "--epochs", str(epochs), "--in-process-row", loader],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved_runs(params_dict: dict, workers: list[int], epochs: int, repeats: int) -> dict[tuple, list[dict]]:
    """Every row's runs, keyed (runner, workers, loader), taken in rounds: each round runs the
    in-process rows with Ray down (its idle processes are part of what Ray costs), then starts Ray,
    runs the Ray Train rows and shuts it down. A drift in the machine's speed over the minutes a
    bench takes then hits both runners alike, and each round gives a paired ratio."""
    import ray

    from core.ray_utils import init_ray

    runs: dict[tuple, list[dict]] = {}
    for round_ in range(repeats):
        for loader in ("dataloader", "in-memory"):
            runs.setdefault(("in-process", 1, loader), []).append(in_process_run(epochs, loader))
        init_ray(include_dashboard=True)
        try:
            for count in workers:
                for preload in (False, True):
                    run = measure(params_dict, count, preload, epochs)
                    runs.setdefault(("ray-train", count, run["loader"]), []).append(run)
        finally:
            ray.shutdown()
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(
            f"{k[0]} {k[1]}w {k[2]} {v[-1]['samples_per_s']}" for k, v in runs.items()), flush=True)
    return runs


def paired_ratios(runs: dict[tuple, list[dict]]) -> dict[str, dict]:
    """Per round, one Ray Train worker's samples/s over the in-process loop's of the same round."""
    out = {}
    for loader in ("dataloader", "in-memory"):
        ray1, local = runs.get(("ray-train", 1, loader)), runs.get(("in-process", 1, loader))
        if ray1 and local:
            by_round = sorted(round(r["samples_per_s"] / l["samples_per_s"], 3) for r, l in zip(ray1, local, strict=True))
            out[loader] = {"by_round": by_round, "median": by_round[len(by_round) // 2] if len(by_round) % 2
                           else round((by_round[len(by_round) // 2 - 1] + by_round[len(by_round) // 2]) / 2, 3)}
    return out


def with_peak_fraction(rows: list[dict], step: dict) -> None:
    """Adds each row's achieved GFLOP/s and its fraction of the matmul peak."""
    for row in rows:
        row["achieved"] = achieved(step["flops"]["flops_per_sample"], row["samples_per_s"],
                                   step["matmul_peak"]["gflop_per_s"])


def ratios_of(rows: list[dict], workers: list[int]) -> dict[str, float]:
    """Adds each row's loader overhead; returns Ray Train's samples/s over the in-process loop's."""
    def row(runner: str, count: int, loader: str) -> dict:
        return next(r for r in rows if (r["runner"], r["workers"], r["loader"]) == (runner, count, loader))

    for runner, count in [("in-process", 1)] + [("ray-train", w) for w in workers]:
        real, memory = row(runner, count, "dataloader"), row(runner, count, "in-memory")
        real["loader_overhead_ratio"] = round(memory["samples_per_s"] / max(real["samples_per_s"], 1e-9), 3)
    return {f"ray_train_vs_in_process_{loader}": round(row("ray-train", 1, loader)["samples_per_s"]
                                                        / max(row("in-process", 1, loader)["samples_per_s"], 1e-9), 3)
            for loader in ("dataloader", "in-memory") if 1 in workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_train.json"))
    parser.add_argument("--in-process-row", choices=("dataloader", "in-memory"), help=argparse.SUPPRESS)
    parser.add_argument("--step-flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    os.chdir(args.workspace)

    from core.env import apply_embedded_defaults
    from core.params import params_from_dict, read_yaml

    apply_embedded_defaults()
    params_dict = read_yaml("params.yaml")
    if args.in_process_row:
        # The threads a lone Ray Train worker gets on this machine: all its CPUs.
        print(json.dumps(measure_in_process(params_dict, args.in_process_row == "in-memory", args.epochs,
                                            os.cpu_count() or 1)))
        return
    if args.step_flops:
        print(json.dumps(measure_step_flops(params_dict, os.cpu_count() or 1)))
        return
    trained = params_from_dict(params_dict).for_model()  # the model and train values the rows ran with
    step = json.loads(subprocess.run([sys.executable, __file__, "--step-flops"], stdout=subprocess.PIPE, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    print(json.dumps(step), flush=True)
    runs = interleaved_runs(params_dict, args.workers, args.epochs, args.repeats)
    rows = [best_of(group) for group in runs.values()]
    ratios = ratios_of(rows, args.workers)
    with_peak_fraction(rows, step)
    report = {"machine": machine(os.cpu_count() or 1),
              "params": {k: getattr(trained.train, k) for k in ("batch_size", "loader_workers")},
              "model": {"name": trained.model.name, trained.model.name: params_dict["model"][trained.model.name]},
              "epochs": args.epochs, "repeats": args.repeats, "rows": rows, "ratios": ratios,
              "paired_ratios": paired_ratios(runs), "step": step,
              "note": "samples/s of the last epoch's training steps, the fastest of `repeats` runs taken in rounds "
                      "(in-process rows with Ray down, then Ray Train rows); "
                      "loader_overhead_ratio = in-memory / dataloader samples/s; ray_train_vs_in_process: one "
                      "Ray Train worker / the same EpochLoop driven in-process with Ray down, fastest over "
                      "fastest (goal #20: >= 0.9), and paired_ratios the same per round; peak_pss_mib: proportional set size summed over this process, its children and "
                      "all Ray processes (shared pages split between sharers), by kind of process in "
                      "peak_pss_by_process_mib; peak_rss_sum_mib counts shared pages per process; step: FLOPs per sample of one training "
                      "step (torch.utils.flop_counter: matmuls and convolutions, forward + backward) and the fp32 "
                      "2048^2 matmul peak with the machine's threads; each row's achieved = flops x samples/s "
                      "(goal #20: the in-process step >= 0.6 of the peak)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}x")
    for loader, paired in report["paired_ratios"].items():
        print(f"ray_train_vs_in_process_{loader} by round: {paired['by_round']} (median {paired['median']}x)")
    for row in rows:
        print(f"{row['runner']} {row['workers']} worker(s), {row['loader']}: {row['samples_per_s']} samples/s = "
              f"{row['achieved']['gflop_per_s']} GFLOP/s = {100 * row['achieved']['fraction_of_matmul_peak']:.1f}% "
              f"of the {step['matmul_peak']['gflop_per_s']} GFLOP/s matmul peak")
    print(f"written {out}")


if __name__ == "__main__":
    main()
