"""Measuring helpers the benchmarks share: a step's FLOPs, the machine's fp32 matmul peak, and
what the machine is (so a report says where its figures come from).

The benchmarks run as scripts (`python benchmarks/bench_X.py`), which puts this folder first on
sys.path: they `import perf`.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import psutil


def achieved(flops_per_sample: float, samples_per_s: float, peak_gflop_per_s: float) -> dict:
    """GFLOP/s a training rate achieves, and its fraction of the matmul peak."""
    gflops = flops_per_sample * samples_per_s / 1e9
    return {"gflop_per_s": round(gflops, 2), "fraction_of_matmul_peak": round(gflops / peak_gflop_per_s, 4)}


def step_flops(loop) -> dict:
    """FLOPs of one training step (forward + criterion + backward) on one training batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from core.data.dataset import model_inputs

    batch = next(iter(loop.train_loader))
    size = len(batch["target"])
    loop.model.train()
    with FlopCounterMode(display=False) as counter:
        loss = loop.loss_fn(loop.model(model_inputs(loop.model, batch, loop.device)), batch)
        loss.backward()
    loop.optimizer.zero_grad(set_to_none=True)
    total = counter.get_total_flops()
    by_op = {str(op): int(n) for op, n in sorted(counter.get_flop_counts().get("Global", {}).items(),
                                                 key=lambda kv: -kv[1])}
    return {"batch": size, "flops_per_step": int(total), "flops_per_sample": total / size,
            "gflop_per_sample": round(total / size / 1e9, 3), "by_op": by_op}


def matmul_peak(n: int, reps: int) -> dict:
    """Best fp32 n x n @ n x n time with the current torch thread count: 2 n^3 / t."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"n": n, "reps": reps, "best_s": round(best, 5), "median_s": round(sorted(times)[len(times) // 2], 5),
            "gflop_per_s": round(2 * n ** 3 / best / 1e9, 2)}


def machine(threads: int) -> dict:
    import torch

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu_model,
            "cpus": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__, "torch_threads": threads,
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
