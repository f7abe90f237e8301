"""What a Ray Train worker reserves and how many torch threads it runs (core/training/trainer.py
scaling_config, core/training/loop.py worker_threads): the reservation drives an autoscaler, and a
worker without one takes its node's share of CPUs, never the whole cluster's."""
from __future__ import annotations

import copy

import pytest

from core.params import SCHEDULING_KEYS, params_from_dict


def params_with(repo_params_dict, **train):
    data = copy.deepcopy(repo_params_dict)
    data["train"].update(train)
    return params_from_dict(data)


def test_a_cpu_reservation_per_worker_goes_to_ray_train_with_the_gpu(repo_params_dict):
    from core.training.trainer import scaling_config

    cpu = scaling_config(params_with(repo_params_dict, num_workers=4, cpus_per_worker=3), use_gpu=False)
    assert (cpu.num_workers, cpu.resources_per_worker, cpu.use_gpu) == (4, {"CPU": 3}, False)
    gpu = scaling_config(params_with(repo_params_dict, num_workers=2, cpus_per_worker=8), use_gpu=True)
    assert gpu.resources_per_worker == {"CPU": 8, "GPU": 1} and gpu.use_gpu
    default = scaling_config(params_with(repo_params_dict, cpus_per_worker=None), use_gpu=False)
    assert default.resources_per_worker is None and default._resources_per_worker_not_none == {"CPU": 1}
    assert "train.cpus_per_worker" in SCHEDULING_KEYS  # scaling it reruns nothing (tests/test_dvc_pipeline.py)


def test_cpus_per_worker_must_be_a_positive_count(repo_params_dict):
    from models.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.cpus_per_worker"):
        params_with(repo_params_dict, cpus_per_worker=0)


@pytest.mark.parametrize("node_cpus, workers, threads", [(8, 2, 4), (2, 1, 2), (1, 4, 1), (12, 5, 2), (0, 1, 1)])
def test_a_worker_without_a_reservation_takes_its_nodes_share(node_cpus, workers, threads):
    from core.training.loop import worker_threads

    assert worker_threads(node_cpus, workers) == threads


def test_a_worker_counts_the_cpus_of_its_own_node(ray_local):
    import ray

    from core.training.loop import _node_cpus

    @ray.remote(num_cpus=0)
    def cpus_here() -> float:
        return _node_cpus()

    assert ray.get(cpus_here.remote()) == ray.cluster_resources()["CPU"] == 2.0  # the one-node test cluster


def test_actor_pools_start_with_one_actor_and_may_grow_to_their_size():
    from core.ray_utils import autoscaling_pool

    pool = autoscaling_pool(6)
    assert (pool.min_size, pool.max_size) == (1, 6)
    assert (autoscaling_pool(0).min_size, autoscaling_pool(0).max_size) == (1, 1)


def test_a_sweep_without_a_trial_limit_leaves_the_rest_pending_for_the_autoscaler():
    from pipelines.sweep.reports import concurrency_text

    assert concurrency_text({"max_concurrent_trials": 3, "fits_now": 2}) == "up to 3 at once"
    assert concurrency_text({"max_concurrent_trials": None, "fits_now": 2}) == (
        "as many at once as the cluster fits (2 when the sweep started)")
