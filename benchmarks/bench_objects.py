"""Benchmark of the objects stage: Ray Data actor pool vs a plain in-process loop.

    python benchmarks/bench_objects.py [--images 48] [--out reports/bench_objects.json]

Generates a demo data set (core.synth, 320x240 images), ingests it into a manifest, then
runs `core.features.objects.run` on all its images with the params.yaml objects settings
(dataset boxes), with engine="local" (one process, torch using every core) and with
engine="ray" (Ray Data map_batches, one single-threaded actor per CPU). Reports images/s (wall
time of run(), model construction and Ray actor start-up included; ray.init timed separately;
the fastest of --repeats runs) and CPU seconds per image summed over all processes,
checks both engines wrote identical arrays, and samples memory every 0.2 s: RSS and PSS summed
over the driver and every process it started (Ray's raylet/GCS and the actor workers). PSS
counts shared pages (the object store in /dev/shm, shared libraries) once, RSS once per process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.data import ingest
from core.data.manifest import SPLITS  # noqa: E402
from core.features import objects  # noqa: E402
from core.features.execution import resolve_engine  # noqa: E402
from core.features.inputs import read_split_manifest  # noqa: E402
from core.features.shards import ARRAY_NAMES, fp16_steps_apart  # noqa: E402
from core.params import load_params  # noqa: E402
from core.ray_utils import init_ray  # noqa: E402
from core.synth import generate  # noqa: E402
from perf import machine  # noqa: E402

MIB = 1024 * 1024


class MemorySampler:
    """Peak memory of this process and all its descendants, sampled on a background thread."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = {"rss_total": 0, "pss_total": 0, "driver_rss": 0, "workers_rss": 0, "processes": 0}
        self.peak_rss_by_name: dict[str, int] = {}   # e.g. ray::MapWorker, ray::IDLE, raylet, gcs_server
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user+system) all sampled processes spent while sampled (misses <interval at exits)."""
        return sum(self._cpu_last[pid] - self._cpu_first[pid] for pid in self._cpu_last)

    def sample(self) -> None:
        driver = psutil.Process()
        procs = [driver] + driver.children(recursive=True)
        rss = pss = workers = 0
        by_name: dict[str, int] = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
                self._cpu_first.setdefault(proc.pid, times.user + times.system)
                self._cpu_last[proc.pid] = times.user + times.system
                info = proc.memory_full_info()
                name = "driver" if proc.pid == driver.pid else proc.name().split("(")[0]
                by_name[name] = by_name.get(name, 0) + info.rss
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                if proc.pid != driver.pid and proc.name().startswith("ray::"):
                    workers += info.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        current = {"rss_total": rss, "pss_total": pss, "driver_rss": driver.memory_info().rss,
                   "workers_rss": workers, "processes": len(procs)}
        self.peak = {k: max(self.peak[k], v) for k, v in current.items()}
        for name, value in by_name.items():
            self.peak_rss_by_name[name] = max(self.peak_rss_by_name.get(name, 0), value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def report(self) -> dict[str, float]:
        out = {f"peak_{k}_mib" if k != "processes" else "max_processes": round(v / MIB, 1) if k != "processes" else v
               for k, v in self.peak.items()}
        out["cpu_seconds"] = round(self.cpu_seconds, 1)
        out["peak_rss_by_process_name_mib"] = {k: round(v / MIB, 1) for k, v in sorted(self.peak_rss_by_name.items())}
        return out


def timed_run(params, work: Path, engine: str) -> dict:
    out_dir, shard_root = work / f"objects_{engine}", work / f"shards_{engine}"
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(shard_root, ignore_errors=True)
    with MemorySampler() as sampler:
        start = time.perf_counter()
        summary = objects.run(params, SPLITS, out_dir, manifest_dir=work / "data" / "manifest",
                              shard_root=shard_root, engine=engine, log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "execution": summary["execution"], **sampler.report(), "out_dir": out_dir}


def best_of(params, work: Path, engine: str, repeats: int) -> dict:
    """The fastest of `repeats` runs: other processes on a shared machine only ever slow a run down."""
    runs = [timed_run(params, work, engine) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    best["seconds"] = round(best["seconds"], 2)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench_objects.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine; the fastest is reported")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_objects_"))
    base = load_params(REPO / "params.yaml")
    raw = work / "raw"
    generate(raw, args.images, base.synth.seed, "emotic")
    params = dataclasses.replace(base, data=dataclasses.replace(base.data, root=str(raw), verify_images=False))
    ingest.run(params.data, params.seed, work / "data")
    n_images = sum(len(set(read_split_manifest(s, work / "data" / "manifest")["image_path"]))
                   for s in SPLITS)
    n_persons = sum(len(read_split_manifest(s, work / "data" / "manifest")) for s in SPLITS)

    load_before = os.getloadavg()
    local = best_of(params, work, "local", args.repeats)
    local["torch_threads"] = __import__("torch").get_num_threads()

    start = time.perf_counter()
    init_ray()
    ray_init_seconds = time.perf_counter() - start
    distributed = best_of(params, work, "ray", args.repeats)
    distributed["ray_init_seconds"] = round(ray_init_seconds, 2)
    import ray

    ray.shutdown()
    load_after = os.getloadavg()

    identical = all(
        np.array_equal(np.load(local["out_dir"] / s / f"{name}.npy"), np.load(distributed["out_dir"] / s / f"{name}.npy"))
        for s in SPLITS for name in ARRAY_NAMES)
    # Different torch thread counts may round differently; say by how much, also in fp16 steps.
    feature_diff, feature_steps = 0.0, 0.0
    for s in SPLITS:
        loop_features, ray_features = (np.load(run["out_dir"] / s / "features.npy") for run in (local, distributed))
        difference = np.abs(loop_features.astype(np.float32) - ray_features.astype(np.float32))
        feature_diff = max(feature_diff, float(difference.max(initial=0.0)))
        feature_steps = max(feature_steps, float(fp16_steps_apart(loop_features, ray_features).max(initial=0.0)))
    for result in (local, distributed):
        result["images_per_s"] = round(n_images / result["seconds"], 3)
        result["cpu_seconds_per_image"] = round(result["cpu_seconds"] / n_images, 3)
        result["out_dir"] = str(result["out_dir"])
    cfg = params.objects
    auto_engine, auto_reason = resolve_engine(cfg, "auto", n_images)
    chosen = distributed if auto_engine == "ray" else local
    report = {
        "benchmark": "objects stage, dataset boxes, random-init ResNet-50 C4 + res5",
        "machine": {**machine(local["torch_threads"]), "load_avg_1m_before": round(load_before[0], 2),
                    "load_avg_1m_after": round(load_after[0], 2)},
        "data": {"images": n_images, "persons": n_persons, "image_size": "320x240 (generated demo)"},
        "settings": {"top_n": cfg.top_n, "image_size": cfg.image_size, "shard_size": cfg.shard_size},
        "local": local,
        "ray": distributed,
        "ray_speedup": round(local["seconds"] / distributed["seconds"], 3),
        # what `objects.engine: auto` runs here at this size, against the plain loop (goal #20: >= 1)
        "auto": {"engine": auto_engine, "reason": auto_reason,
                 "over_local": round(local["seconds"] / chosen["seconds"], 3)},
        "identical_arrays": identical,
        "max_abs_feature_difference": feature_diff,
        # in float16 steps at each feature vector's scale: <= 1 is the same vector to fp16 rounding
        "max_feature_fp16_steps_apart": round(feature_steps, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
