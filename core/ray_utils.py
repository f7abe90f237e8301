"""One place that starts (or joins) Ray, so every stage uses the same settings.

Locally `init_ray()` starts an embedded single-node cluster (no dashboard, no usage
stats, an object store sized for a laptop-class machine) that serves this machine only:
its node address is 127.0.0.1, so the GCS, the raylet, the workers, the agents and the
dashboard (when on) listen on the loopback interface and nothing else. Ray binds its servers
to the node's address; on Linux it picks the routable one (and rewrites an explicit
127.0.0.1) unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its switch for single-node
machines, says the node never joins a cluster. Ray's token authentication
(`RAY_AUTH_MODE=token`, on by default for local clusters since Ray 2.59) stays on as well;
ctxemo says so explicitly (`embedded_cluster_env`), which also spares the start-up warning.

With `RAY_ADDRESS` set it joins that cluster instead and passes no resource arguments (Ray
refuses them when connecting); the node then keeps its routable address, which the cluster
needs (infra/README.md says which ports a cluster must reach). Worker processes import the
project by name, so on a real cluster the project must be installed in the workers' image
(or shipped with a `runtime_env` working_dir).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from core import env
from core.errors import UserError

LOOPBACK = "127.0.0.1"
# Ray's switch for a node that never joins a cluster (read once, when ray_constants is imported).
SINGLE_NODE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# The object store lives in /dev/shm; Ray's default (30% of RAM) is more than the stages
# here ever hold at once and starves the DataLoader workers on small machines.
OBJECT_STORE_FRACTION = 0.15
OBJECT_STORE_MAX_BYTES = 4 * 1024**3
OBJECT_STORE_MIN_BYTES = 256 * 1024**2


def choose_engine(section: str, setting: str, images: int, *, min_images: int, min_cpus: int,
                  cluster_address: str | None, cpus: int, gpu: bool | None = None) -> tuple[str, str]:
    """(engine, why) for a stage's `<section>.engine`: "ray" (Ray Data) where it pays, else "local".

    `auto` needs at least `min_images` images to compute, and then a Ray cluster, a GPU (`gpu`
    None: the stage runs on CPU, a GPU does not count) or `min_cpus` CPUs: on a small machine
    Ray's start-up, its actors' imports and the object store's copies cost more than the actors'
    parallelism gives back (README, Benchmarks).
    """
    if setting != "auto":
        return setting, f"{section}.engine: {setting}"
    if images < min_images:
        return "local", f"{images} images < {section}.ray_min_images {min_images}"
    if cluster_address:
        return "ray", f"a Ray cluster at {cluster_address}"
    if gpu:
        return "ray", "a GPU"
    if cpus >= min_cpus:
        return "ray", f"{cpus} CPUs >= {section}.ray_min_cpus {min_cpus}"
    return "local", f"{cpus} CPUs < {section}.ray_min_cpus {min_cpus},{' no GPU,' if gpu is not None else ''} no cluster"


def quiet_ray_env() -> None:
    """Environment every Ray process should see; set before `ray.init` (workers inherit it).

    RAY_TRAIN_ENABLE_PRINT_PATCH=0: Ray Train replaces `print` in its workers with a function
    that logs the line to the console and, because every Ray worker's sys.stdout is a wrapper
    (not sys.__stdout__), also prints it: each epoch line arrived twice. Ray Train passes the
    variable on to its controller and workers, also on a cluster that ctxemo joins.
    """
    env.set_default("RAY_USAGE_STATS_ENABLED", "0")
    env.set_default("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def embedded_cluster_env() -> None:
    """Environment of the embedded local cluster only (a joined cluster keeps its own settings).

    RAY_AUTH_MODE=token (`env.embedded_ray_auth`, only while `ray` is not imported yet: Ray
    reads it into its configuration at import, and a driver whose configuration says
    otherwise cannot reach its own token-protected GCS). RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0:
    the watcher follows nodes that an autoscaler drains, which a single-node embedded cluster
    never has; its actor only made Ray log an error at every training start (its constructor
    arguments live in the object store).
    """
    if "ray" not in sys.modules:
        env.embedded_ray_auth()
    env.set_default("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def serve_loopback_only() -> None:
    """Make the next embedded cluster listen on 127.0.0.1 only (see the module docstring).

    The environment variable reaches the processes Ray starts; the module constant is set as
    well because Ray reads the variable once, at import, and `ray` may already be imported.
    A user who exported the variable keeps their value.
    """
    # The whole package first: after prefect_ray's lazy `import ray`, importing the submodule alone
    # left ray half-imported, and a later `from ray import tune` failed (ray._private.accelerators).
    import ray  # noqa: F401
    import ray._private.ray_constants as ray_constants

    env.set_default(SINGLE_NODE_SWITCH, "0")
    if os.environ[SINGLE_NODE_SWITCH].lower() in ("0", "false"):
        ray_constants.ENABLE_RAY_CLUSTER = False


def pin_workers_to_their_cluster() -> None:
    """Worker-process setup hook of the embedded cluster: RAY_ADDRESS = this worker's own cluster.

    Ray code that runs inside workers and finds "the" cluster by itself (Ray Train's
    placement-group cleaner asks the state API with no address) otherwise greps the machine for
    GCS processes: with a second Ray instance on the machine it fails with "Found multiple
    active Ray instances", or reads the other instance's state, misses its own controller there
    and removes its own run's placement group, killing the training workers.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def default_object_store_bytes() -> int:
    import psutil

    total = psutil.virtual_memory().total
    return int(min(OBJECT_STORE_MAX_BYTES, max(OBJECT_STORE_MIN_BYTES, total * OBJECT_STORE_FRACTION)))


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None,
             object_store_memory: int | None = None, temp_dir: str | None = None,
             include_dashboard: bool = False) -> bool:
    """Start or join Ray unless it is already up. Returns True when this call started it.

    `include_dashboard=True` also serves Ray's state API, which Ray Train V2's placement-group
    cleaner polls every second (without it, it logs a warning each time). The resource arguments only apply to an embedded cluster; they are ignored (not an
    error) when `RAY_ADDRESS` names an existing one.
    """
    if not env.ray_address():
        embedded_cluster_env()  # before `import ray` (see there)
    import ray

    if ray.is_initialized():
        return False
    quiet_ray_env()
    if env.ray_address():
        ray.init(log_to_driver=True)
        return True
    serve_loopback_only()
    kwargs = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "object_store_memory": object_store_memory or default_object_store_bytes(),
        "include_dashboard": include_dashboard,
        "dashboard_host": LOOPBACK,
        "runtime_env": {"worker_process_setup_hook": f"{__name__}.pin_workers_to_their_cluster"},
    }
    if temp_dir is not None:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    return True


@contextlib.contextmanager
def ray_session(**init_kwargs) -> Iterator[None]:
    """Ray for the duration of a block; shut down afterwards only if this block started it."""
    import ray

    started = init_ray(**init_kwargs)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def autoscaling_pool(max_actors: int, tasks_in_flight: int | None = None):
    """An actor pool that starts working with its first actor and grows to `max_actors` while work
    is queued and resources allow.

    A fixed pool of N waits for its N actors; this one asks for more as it goes, and the actors
    still waiting for resources are the demand an autoscaling cluster adds nodes for. N is the
    stage's `num_actors` when set (set it on an autoscaling cluster), else what the cluster has now.
    `tasks_in_flight`: batches queued per actor (None: Ray Data's default, 4); 1 for long batches.
    """
    import ray.data

    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(max_actors)),
                                      max_tasks_in_flight_per_actor=tasks_in_flight)


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError a Ray task or actor raised, found in the exceptions Ray wraps it in (None: none)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # a RayTaskError's: what the task raised
        if isinstance(error, UserError) and cause is None:
            return error
        stack += [cause, error.__cause__, error.__context__]
    return None
