"""Running the shard worker over the pending shards: Ray Data actor pool, or a plain in-process loop.

With GPUs every actor gets one; without, one actor per CPU with a single torch thread each, so the
actors, not torch's thread pool, share the cores (and results match the single-threaded local
loop bit for bit). The weights travel once through the object store, not once per actor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from core import ray_utils
from core.features.inputs import ShardPlan
from core.features.worker import ShardWorker, plan_row
from core.params import ObjectsConfig


def run_local(plans: Sequence[ShardPlan], worker_kwargs: dict[str, Any], shard_root: str,
              on_shard: Callable[[dict], None], on_persons: Callable[[int], None]) -> None:
    worker = ShardWorker(shard_root, **worker_kwargs)
    for plan in plans:
        on_shard(worker.compute(plan, on_persons))


def run_ray(plans: Sequence[ShardPlan], worker_kwargs: dict[str, Any], shard_root: str, cfg: ObjectsConfig,
            on_shard: Callable[[dict], None]) -> dict[str, Any]:
    """One Ray Data row per shard; each actor computes its shards and writes them where it runs."""
    import ray

    from core.ray_utils import autoscaling_pool, cluster_cpus, cluster_gpus

    gpus = cluster_gpus()
    if gpus:
        actors, resources = cfg.num_actors or gpus, {"num_gpus": 1}
        worker_kwargs = {**worker_kwargs, "device": "cuda"}
    else:
        # One thread per actor, one actor per CPU: the actors, not torch's thread pool, use the cores.
        actors, resources = cfg.num_actors or cluster_cpus(), {"num_cpus": 1}
        worker_kwargs = {**worker_kwargs, "device": "cpu", "torch_threads": 1}
    actors = max(1, min(actors, len(plans)))
    if worker_kwargs["state_dict"] is not None:
        worker_kwargs["state_dict"] = ray.put(worker_kwargs["state_dict"])
    quiet_ray_data()
    # A block per shard, and one shard at a time per actor: a shard is minutes of work on a big
    # data set, and an actor with a queue of them would leave the others idle at the end.
    dataset = ray.data.from_items([plan_row(plan) for plan in plans], override_num_blocks=len(plans))
    summaries = dataset.map_batches(
        ShardWorker,
        fn_constructor_kwargs={"shard_root": shard_root, **worker_kwargs},
        batch_size=1,
        batch_format="numpy",
        compute=autoscaling_pool(actors, tasks_in_flight=1),
        **resources,
    )
    for batch in summaries.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["shard_key"])):
            on_shard({name: values[i] for name, values in batch.items()})
    return {"actors": actors, "gpus_per_actor": resources.get("num_gpus", 0)}


def quiet_ray_data() -> None:
    """The objects stage counts its persons itself (core/progress.py, in objects.run): Ray Data's
    own progress (a block of lines every 10 s when stdout is not a terminal) and its execution
    plan at the start are off. Two loggers are turned down: the progress module's, which would
    announce as a warning that its bars are off, and the executor's INFO line at the end (it lands
    in the middle of our bar); their warnings and Ray Data's others stay."""
    import logging

    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)


def choose_engine(cfg: ObjectsConfig, images: int, *, cluster_address: str | None, cpus: int, gpu: bool
                  ) -> tuple[str, str]:
    """(engine, why) for `objects.engine: auto`: Ray Data where it pays, the in-process loop elsewhere.

    Ray Data spreads the images over actors (one per CPU, or per GPU) on every node of a cluster;
    on one small machine the same worker in-process is as fast without Ray's start-up and
    object-store copies (measured on 2 cores, 320 images: 4.27 vs 4.08 images/s, 0.97 vs 2.87 GB;
    48 images: Ray 0.32x), so a cluster, a GPU or `ray_min_cpus` CPUs are needed, and at least
    `ray_min_images` images to compute.
    """
    return ray_utils.choose_engine("objects", cfg.engine, images, min_images=cfg.ray_min_images,
                                   min_cpus=cfg.ray_min_cpus, cluster_address=cluster_address, cpus=cpus, gpu=gpu)


def resolve_engine(cfg: ObjectsConfig, engine: str, images: int) -> tuple[str, str]:
    """`engine` ("auto", "ray", "local"; auto reads objects.engine) for this machine and these images."""
    import os

    import torch

    if engine != "auto":
        return engine, f"--engine {engine}"
    return choose_engine(cfg, images, cluster_address=os.environ.get("RAY_ADDRESS") or None,
                         cpus=os.cpu_count() or 1, gpu=torch.cuda.is_available())


def compute_shards(plans: Sequence[ShardPlan], worker_kwargs: dict[str, Any], shard_root: Path, cfg: ObjectsConfig,
                   engine: str, on_shard: Callable[[dict], None], on_persons: Callable[[int], None]) -> dict[str, Any]:
    """Compute and write `plans` on `engine` ("ray" or "local"; "auto": `resolve_engine`).

    `on_shard` gets each written shard's summary (core/features/worker.py ShardWorker.compute);
    `on_persons` counts persons as they are done, in-process only (from Ray, a shard at a time).
    """
    if not plans:
        return {"engine": engine}  # nothing to compute: Ray is never started
    engine, why = resolve_engine(cfg, engine, sum(len(plan.frame) for plan in plans))
    execution: dict[str, Any] = {"engine": engine, "engine_reason": why}
    # "auto" was resolved above; objects.run resolves it first to say which before the work starts
    writers: dict[str, int] = {}

    def count_writer(summary: dict) -> None:
        where = f"node {summary['node_id']}" if summary["node_id"] else "in-process"
        writers[f"{where} pid {summary['pid']}"] = writers.get(f"{where} pid {summary['pid']}", 0) + 1
        on_shard(summary)

    if engine == "ray":
        from core.ray_utils import ray_session

        with ray_session():
            execution.update(run_ray(plans, worker_kwargs, str(Path(shard_root).resolve()), cfg, count_writer))
    else:
        run_local(plans, worker_kwargs, str(shard_root), count_writer, on_persons)
    execution["shards_written_by"] = writers
    return execution
