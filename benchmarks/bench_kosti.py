"""Kosti two-stream training throughput at the public code's shapes, and its share of the CPU's peak.

    python benchmarks/bench_kosti.py [--workspace DIR] [--steps 5] [--threads 2] [--loader-workers N]

Trains the Kosti baseline (models/kosti.py) in-process (no Ray) with the training stage's
`EpochLoop` (core/training/loop.py) on an existing workspace where the data stages ran
(data/manifest, data/detections, data/labels.json; `ctxemo demo` makes one; default: the
current directory), at the shapes of the public PyTorch code: two ResNet-18 streams, body crops
128x128, whole images 224x224, batch 52, on CPU with --threads torch threads. Measures:

- real data loading: samples/s of --steps training steps (after --warmup steps), each the
  loop's step (forward + criterion + backward + clip + optimizer step) on batches of the real
  DataLoader (JPEG decode + crop + resize in --loader-workers processes);
- in-memory: the same steps with every item decoded beforehand (`config["preload"]`);
- the loader alone: samples/s of iterating the real DataLoader without training (two epochs'
  batches by default: it is cheap next to a step);
- FLOPs of one training step per sample (torch.utils.flop_counter: matmuls and convolutions,
  forward + backward), hence the achieved GFLOP/s and its fraction of the machine's fp32
  matmul peak (best of --matmul-reps n x n @ n x n products with the same thread count);
- the peak memory (PSS) of this process and its DataLoader workers, per phase.

Each timed step is split into waiting for the batch and computing it, so the figures also say
whether loading or compute bounds a step. Prints the figures and writes them, with the machine,
the shapes and the settings, to reports/bench_kosti.json. `--small` shrinks the views (64/96)
for a quick smoke run; its figures are not the paper-code shapes'. No figure is asserted.

Cost: a paper-shape step is about 14 GFLOP per sample (forward + backward), so on a 2-core
machine one step of 52 takes on the order of a minute and the default run (2 x (1 + 5) steps)
some 10-15 minutes. Other load on the machine distorts every figure: the load averages at the
start and the end are in the report.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import threading
import time
from pathlib import Path

import psutil
from perf import achieved, machine, matmul_peak, step_flops

PAPER_SHAPES = {"body": 128, "image": 224}
SMALL_SHAPES = {"body": 64, "image": 96}
BATCH = 52  # the public code's batch (model.kosti.train.batch_size in params.yaml)


class PeakMemory:
    """Peak PSS (and RSS sum) of this process and its children (DataLoader workers), sampled
    every `interval` s. PSS splits shared pages (forked workers' copy-on-write memory, shared
    tensors) between the processes sharing them; the RSS sum counts them once per process."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak_rss, self.peak_pss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        rss = pss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:  # exited between listing and reading
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def as_dict(self) -> dict:
        return {"peak_pss_mib": round(self.peak_pss / 2**20), "peak_rss_sum_mib": round(self.peak_rss / 2**20)}


def kosti_params(params_dict: dict, shapes: dict, batch: int, loader_workers: int | None,
                 precision: str | None = None):
    """The workspace's params with the Kosti model at `shapes`, batch `batch`, one CPU worker
    (and train.precision `precision`, when given)."""
    from core.params import apply_overrides, params_from_dict

    overrides = {
        "model.name": "kosti",
        "model.kosti.views.body.size": shapes["body"],
        "model.kosti.views.image.size": shapes["image"],
        "model.kosti.body_backbone.name": "resnet18",
        "model.kosti.context_backbone.name": "resnet18",
        "train.num_workers": 1,
        "train.use_gpu": False,
    }
    if loader_workers is not None:
        overrides["train.loader_workers"] = loader_workers
    data = apply_overrides(params_dict, overrides)
    kosti = data["model"]["kosti"]
    family_train = {"batch_size": batch, **({"precision": precision} if precision else {})}
    kosti["train"] = {**(kosti.get("train") or {}), **family_train}  # the family's overrides win
    params = params_from_dict(data).for_model("kosti")
    assert params.train.batch_size == batch, params.train.batch_size
    return params


def build_loop(params, workspace: Path, threads: int, preload: bool):
    from core.training import inputs
    from core.training.loop import EpochLoop
    from core.workspace import Workspace

    paths = Workspace.at(workspace, data_root=params.data.root)
    config = inputs.worker_config(params, paths)
    config["preload"] = preload
    config["torch_threads"] = threads
    loop = EpochLoop(config, device="cpu")
    loop.prepare()
    return loop


def batches(loop):
    """The loop's training batches, epoch after epoch (as `run_epoch` sets each epoch's order)."""
    epoch = 0
    while True:
        loop.train_loader.sampler.set_epoch(epoch)
        yield from loop.train_loader
        epoch += 1


def train_step(loop, batch) -> int:
    """One training step exactly as `EpochLoop.run_epoch` takes it (`EpochLoop.train_step`, the loss
    read back as run_epoch does); returns the batch size."""
    batch = {key: value.to(loop.device, non_blocking=True) for key, value in batch.items()}
    float(loop.train_step(batch))
    return len(batch["target"])


def timed_training(loop, steps: int, warmup: int) -> dict:
    """samples/s over `steps` training steps after `warmup` steps; wait vs compute seconds."""
    loop.model.train()
    it = batches(loop)
    for _ in range(warmup):
        train_step(loop, next(it))
    seen, wait, compute = 0, 0.0, 0.0
    started = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        seen += train_step(loop, batch)
        t2 = time.perf_counter()
        wait, compute = wait + (t1 - t0), compute + (t2 - t1)
    seconds = time.perf_counter() - started
    it.close()
    return {"steps": steps, "samples": seen, "seconds": round(seconds, 3),
            "samples_per_s": round(seen / seconds, 3),
            "compute_samples_per_s": round(seen / max(compute, 1e-9), 3),
            "wait_s": round(wait, 3), "compute_s": round(compute, 3),
            "wait_fraction": round(wait / max(seconds, 1e-9), 3),
            "s_per_step": round(seconds / steps, 3)}


def timed_loader(loop, steps: int, warmup: int) -> dict:
    """samples/s of iterating the training DataLoader alone (decode + crop + resize + collate)."""
    it = batches(loop)
    for _ in range(warmup):
        next(it)
    seen, started = 0, time.perf_counter()
    for _ in range(steps):
        seen += len(next(it)["target"])
    seconds = time.perf_counter() - started
    it.close()
    return {"batches": steps, "samples": seen, "seconds": round(seconds, 3),
            "samples_per_s": round(seen / seconds, 3)}


def side_by_side(loops: dict, shapes: dict, batch: int, steps: int, warmup: int, rounds: int) -> dict:
    """Ours (each loop's step on in-memory batches; `loops` by train.precision) against the public
    code's step (public_kosti.py, in-memory tensors of the same shapes), alternating `rounds` times
    so that a change in the machine's load hits all alike; samples/s of each round, the best, and
    each of ours over the public code (best over best, and by round)."""
    from public_kosti import PublicKostiStep, random_batch

    ours_batches = {name: [b for b, _ in zip(batches(loop), range(max(warmup, 1) + 1), strict=False)]
                    for name, loop in loops.items()}
    public = PublicKostiStep()
    public_batch = random_batch(batch, shapes["body"], shapes["image"])
    for loop in loops.values():
        loop.model.train()

    def timed(step, make_batch) -> float:
        for i in range(warmup):
            step(make_batch(i))
        seen, started = 0, time.perf_counter()
        for i in range(steps):
            seen += step(make_batch(i))
        return round(seen / (time.perf_counter() - started), 3)

    theirs, ours = [], {name: [] for name in loops}
    for _ in range(rounds):
        theirs.append(timed(public, lambda i: public_batch))
        for name, loop in loops.items():
            own = ours_batches[name]
            ours[name].append(timed(lambda b, loop=loop: train_step(loop, b), lambda i, own=own: own[i % len(own)]))
    return {"rounds": rounds, "steps_per_round": steps, "warmup": warmup,
            "public_code_samples_per_s": theirs, "public_code_best": max(theirs),
            "ours": {name: {"samples_per_s": runs, "best": max(runs),
                            "over_public_code": round(max(runs) / max(theirs), 3),
                            "over_public_code_by_round": [round(a / b, 3) for a, b in zip(runs, theirs, strict=True)]}
                     for name, runs in ours.items()}}


def phase(name: str, fn):
    print(f"-- {name} ...", flush=True)
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - started
    result = {**result, "phase_wall_s": round(wall, 1), **memory.as_dict()}
    print(f"   {json.dumps({k: v for k, v in result.items() if k != 'flops'})}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="workspace where the data stages ran (default: current directory)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per phase")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each timed phase")
    parser.add_argument("--loader-batches", type=int, default=None,
                        help="timed batches of the loader alone (default: max(--steps, two epochs))")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="DataLoader processes (default: the params' train.loader_workers)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH}, the public code's)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of the public code's step and ours (each --steps steps)")
    parser.add_argument("--versus-precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="train.precision values of ours timed against the public code (default: both)")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--matmul-reps", type=int, default=5)
    parser.add_argument("--small", action="store_true",
                        help=f"smoke run: views {SMALL_SHAPES} instead of the paper-code {PAPER_SHAPES}")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_kosti.json"))
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1, --warmup >= 0")
    out = args.out.resolve()
    workspace = args.workspace.resolve()
    os.chdir(workspace)  # params.yaml's relative paths (data.root) are relative to the workspace

    from core.env import apply_embedded_defaults
    from core.params import read_yaml

    apply_embedded_defaults()
    import torch

    torch.set_num_threads(args.threads)
    shapes = SMALL_SHAPES if args.small else PAPER_SHAPES
    params = kosti_params(read_yaml(workspace / "params.yaml"), shapes, args.batch, args.loader_workers)
    info = machine(args.threads)
    kosti = params.model.kosti
    setup = {"model": "kosti", "body_backbone": kosti.body_backbone.name,
             "context_backbone": kosti.context_backbone.name, "body_size": kosti.views["body"].size,
             "image_size": kosti.views["image"].size, "fusion_dim": kosti.fusion_dim,
             "batch_size": params.train.batch_size, "optimizer": params.train.optimizer,
             "grad_clip_norm": params.train.grad_clip_norm, "loader_workers": params.train.loader_workers,
             "steps": args.steps, "warmup": args.warmup, "small": args.small, "workspace": str(workspace)}
    print(f"kosti training benchmark: {json.dumps(setup)}", flush=True)

    def real_phase():
        loop = build_loop(params, workspace, args.threads, preload=False)
        try:
            train = timed_training(loop, args.steps, args.warmup)
            loader_batches = args.loader_batches or max(args.steps, 2 * len(loop.train_loader))
            loader = timed_loader(loop, loader_batches, args.warmup)
            return {"train": train, "loader": loader, "train_items": len(loop.train_loader.dataset),
                    "batches_per_epoch": len(loop.train_loader)}
        finally:
            del loop
            gc.collect()

    real = phase("real data loading: training steps, then the loader alone", real_phase)

    def memory_phase():
        started = time.perf_counter()
        loop = build_loop(params, workspace, args.threads, preload=True)
        preload_s = time.perf_counter() - started
        try:
            return {**timed_training(loop, args.steps, args.warmup), "preload_s": round(preload_s, 1),
                    "flops": step_flops(loop)}
        finally:
            del loop
            gc.collect()

    in_memory = phase("in-memory tensors: training steps, FLOP count", memory_phase)
    flops = in_memory.pop("flops")
    def public_code_phase():
        loops = {precision: build_loop(kosti_params(read_yaml(workspace / "params.yaml"), shapes, args.batch,
                                                    args.loader_workers, precision), workspace, args.threads, True)
                 for precision in args.versus_precisions}
        try:
            return side_by_side(loops, shapes, args.batch, args.steps, args.warmup, args.rounds)
        finally:
            del loops
            gc.collect()

    versus = phase("side by side: the public code's step and ours, in-memory, alternating", public_code_phase)
    peak = phase(f"fp32 matmul peak ({args.matmul_n}^2, {args.threads} threads)",
                 lambda: matmul_peak(args.matmul_n, args.matmul_reps))

    train, loader = real.pop("train"), real.pop("loader")
    peak_gflops = peak["gflop_per_s"]
    per_sample = flops["flops_per_sample"]

    def achieved_at(samples_per_s: float) -> dict:
        return achieved(per_sample, samples_per_s, peak_gflops)

    figures = {
        "real_samples_per_s": train["samples_per_s"],
        "in_memory_samples_per_s": in_memory["samples_per_s"],
        "loader_only_samples_per_s": loader["samples_per_s"],
        "in_memory_compute_samples_per_s": in_memory["compute_samples_per_s"],
        "in_memory_over_real": round(in_memory["samples_per_s"] / max(train["samples_per_s"], 1e-9), 3),
        "loader_only_over_in_memory": round(loader["samples_per_s"] / max(in_memory["samples_per_s"], 1e-9), 3),
        "real_wait_fraction": train["wait_fraction"],
        "in_memory_wait_fraction": in_memory["wait_fraction"],
        "bound_by": "loading" if loader["samples_per_s"] < in_memory["compute_samples_per_s"] else "compute",
        "gflop_per_sample": flops["gflop_per_sample"],
        "matmul_peak_gflop_per_s": peak_gflops,
        "achieved_in_memory": achieved_at(in_memory["samples_per_s"]),
        "achieved_real": achieved_at(train["samples_per_s"]),
        "achieved_compute_only": achieved_at(in_memory["compute_samples_per_s"]),
        "public_code_samples_per_s": versus["public_code_best"],
        **{f"ours_{name}_over_public_code": ours["over_public_code"] for name, ours in versus["ours"].items()},
    }
    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "machine": info, "setup": setup, "figures": figures,
        "real_data": {**train, **real}, "loader_only": loader, "in_memory": in_memory,
        "flops": flops, "matmul_peak": peak, "versus_public_code": versus,
        "note": ("samples/s = samples of --steps timed training steps / their wall time, after --warmup "
                 "untimed steps, in one process (no Ray) with torch_threads; real_data: the training "
                 "DataLoader (decode + crop + resize in loader_workers processes); in_memory: every item "
                 "decoded beforehand (EpochLoop preload; batches still pass through the DataLoader's "
                 "collate and workers); loader_only: iterating the real DataLoader without training. "
                 "wait_s: time blocked on the next batch, compute_s: forward + loss + backward + clip + "
                 "step; compute_samples_per_s = samples / compute_s. flops: torch.utils.flop_counter "
                 "(matmul and convolution FLOPs of forward + backward; element-wise ops, BatchNorm and "
                 "the optimizer step are not counted), per sample of one batch; achieved GFLOP/s = "
                 "flops_per_sample x samples/s; fraction_of_matmul_peak divides by the best fp32 n x n "
                 "matmul GFLOP/s (2 n^3 / t) with the same thread count. Memory: PSS (and RSS sum) of "
                 "this process and its DataLoader workers, per phase. versus_public_code: the public code's "
                 "training step (benchmarks/public_kosti.py: its models, losses and Adam) on in-memory tensors "
                 "of the same shapes, and ours on in-memory batches, alternating rounds in one process; "
                 "ours at each train.precision in versus_public_code.ours; over_public_code = best round / best "
                 "round (goal #20: >= 1.2). load_avg_*: other load on the "
                 "machine distorts every figure."),
    }

    print()
    print(f"Kosti two-stream training, {setup['body_backbone']} x 2, body {setup['body_size']}, "
          f"context {setup['image_size']}, batch {setup['batch_size']}, {args.threads} torch threads, "
          f"{setup['loader_workers']} loader worker(s), {args.steps} steps ({info['cpus']} CPUs, torch {info['torch']})")
    print(f"  real data loading   {train['samples_per_s']:9.2f} samples/s  ({train['s_per_step']:.2f} s/step, "
          f"{100 * train['wait_fraction']:.0f}% waiting for batches)")
    print(f"  in-memory tensors   {in_memory['samples_per_s']:9.2f} samples/s  ({in_memory['s_per_step']:.2f} s/step, "
          f"{100 * in_memory['wait_fraction']:.0f}% waiting; compute alone {in_memory['compute_samples_per_s']:.2f})")
    print(f"  loader alone        {loader['samples_per_s']:9.2f} samples/s  (decode + crop + resize, "
          f"{loader['batches']} batches)")
    print(f"  in-memory / real    {figures['in_memory_over_real']:9.3f}x      bound by {figures['bound_by']}")
    print(f"  FLOPs / sample      {flops['gflop_per_sample']:9.3f} GFLOP (forward + backward, matmul + conv)")
    print(f"  fp32 matmul peak    {peak_gflops:9.2f} GFLOP/s ({args.matmul_n}^2, best of {args.matmul_reps})")
    for label, key in (("achieved, in-memory", "achieved_in_memory"), ("achieved, real data", "achieved_real"),
                       ("achieved, compute", "achieved_compute_only")):
        fig = figures[key]
        print(f"  {label:<19} {fig['gflop_per_s']:9.2f} GFLOP/s = {100 * fig['fraction_of_matmul_peak']:.1f}% of peak")
    print(f"  public code's step  {versus['public_code_best']:9.2f} samples/s  (fp32, best of {args.rounds} rounds: "
          f"{versus['public_code_samples_per_s']})")
    for name, ours in versus["ours"].items():
        print(f"  ours, {name:<4} / public {ours['over_public_code']:9.3f}x      ({ours['best']:.2f} samples/s; by round "
              f"{ours['over_public_code_by_round']})")
    print(f"  peak PSS            real {real['peak_pss_mib']} MiB, in-memory {in_memory['peak_pss_mib']} MiB")
    print(f"  load average        start {info['load_avg_start']}, end {info['load_avg_end']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
