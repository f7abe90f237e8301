"""Prefect flows: scheduled retraining through DVC on Ray, and the ablations fanned out over Ray.

    ctxemo retrain                              # one run now (Prefect's ephemeral API, or PREFECT_API_URL)
    ctxemo retrain --pull --push                # with the DVC remote (and the git remote) around it
    ctxemo retrain --serve                      # this process serves deployment retrain/retrain-weekly on the
                                                # schedule in infra/prefect/prefect.yaml (--cron overrides it)
    prefect deploy --prefect-file infra/prefect/prefect.yaml --all    # the same flow on a work pool
    ctxemo ablate-flow --variant full --variant no_eld

`retrain`:  [dvc pull] -> one task per DVC stage `evaluate` depends on (ingest ... train, evaluate)
            -> register -> promote -> [commit dvc.lock, tag it] -> [dvc push -> git push <tag>]
The stages and their order are DVC's own plan of `dvc repro evaluate` (pipelines/dvc_stages.py);
each is a task run named after its stage running `dvc repro --single-item <stage>`, so the Prefect
UI shows each stage's state, logs and retries while DVC decides what is stale (a week without new
data reruns nothing and registers nothing new; the summary's "steps" say per stage whether DVC ran
it). No task uses Prefect's input caching (`cache_policy=NO_CACHE`). Each step has retries
(exponential backoff from `retry_backoff_seconds`) and a timeout (STEPS; a stage without an entry
gets `stage`'s); a step that still fails fails the flow run, with its output tail in the error and
every output line in the Prefect logs. Registration (pipelines/registry.py) only accepts a model
whose evaluation is fresh (the run id of artifacts/model must own reports/metrics.json), and
`promote` only runs after it, so a failed or half-finished evaluation never moves `champion`.
A run holds the workspace's lock for its whole duration (a second one is refused, naming the
holder; deployments have `concurrency_limit: 1`, so Prefect queues theirs), and after an applied
promotion commits dvc.lock (with the uncached metrics and summaries) to the workspace's git
repository and tags it `retrain-<flow run>-v<version>`: pipelines/dvc_stages.py says how and why.

Both flows run their tasks on Ray through prefect-ray's `RayTaskRunner`: `RAY_ADDRESS` joins a
cluster (e.g. `ray://ctxemo-head-svc:10001`), otherwise a local Ray starts (no dashboard). Steps
are submitted with `num_cpus=0`: they orchestrate, and the work inside them asks Ray for its own
CPUs/GPUs (the stage subprocesses join the same cluster, training through Ray Train), so a
2-CPU machine can run two ablation variants side by side without the orchestrating tasks
starving the trainers. Stage subprocesses run `python -m dvc` with this interpreter, the
workspace as cwd and the venv's bin first on PATH (dvc.yaml says `python -m stages.X`); they get
the flow's MLflow/S3/DVC settings (never a secret: credentials come from each node's own
environment, as core/storage.py explains). The git steps run in the flow's process (its git identity).

Every task starts at the fault point `flow.step` (step name, attempt; core/faults.py), where drills
and tests inject failures from outside: a plan fault {"point": "flow.step", "when": {"step":
"evaluate"}, "times": 1} fails that step's first attempt (then the retry runs it), a large `times`
makes it fail for good. A stage's step name is the stage's name.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from core import env
from core.errors import UserError
from core.faults import fault_point
from core.workspace import Workspace
from pipelines import dvc_stages

# Settings the stage subprocesses must share with the flow run. Secrets are never forwarded.
FORWARDED_PREFIXES = ("MLFLOW_", "CTXEMO_", "DVC_", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
SENSITIVE_ENV_NAME = re.compile(r"SENSITIVE_ENV_NAME|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
OUTPUT_TAIL_LINES = 40


@dataclass(frozen=True)
class StepPolicy:
    retries: int
    timeout_seconds: float


RETRAIN_TARGET = "evaluate"   # the DVC stage `retrain` reproduces, with every stage it depends on

STEPS: dict[str, StepPolicy] = {
    "dvc-pull": StepPolicy(retries=3, timeout_seconds=2 * 3600),
    "stage": StepPolicy(retries=2, timeout_seconds=6 * 3600),     # a DVC stage without an entry of its own
    "train": StepPolicy(retries=1, timeout_seconds=24 * 3600),
    "evaluate": StepPolicy(retries=2, timeout_seconds=4 * 3600),
    "register": StepPolicy(retries=3, timeout_seconds=15 * 60),
    "promote": StepPolicy(retries=3, timeout_seconds=2 * 3600),   # may re-score the champion
    "commit-lock": StepPolicy(retries=1, timeout_seconds=10 * 60),
    "dvc-push": StepPolicy(retries=3, timeout_seconds=2 * 3600),
    "git-push": StepPolicy(retries=3, timeout_seconds=15 * 60),
    "ablation": StepPolicy(retries=1, timeout_seconds=24 * 3600),
}


class StepFailed(RuntimeError):
    """A shelled-out step exited non-zero or ran out of time; the message holds its output tail."""


def ray_task_runner():
    """RayTaskRunner joining RAY_ADDRESS, else starting a local Ray like core/ray_utils.py does."""
    import ray  # noqa: F401  (whole: after prefect_ray's lazy import, `ray._private.x` alone half-imports it)
    from prefect_ray import RayTaskRunner

    from core.ray_utils import default_object_store_bytes, quiet_ray_env, serve_loopback_only
    quiet_ray_env()
    address = env.ray_address()
    if address:
        return RayTaskRunner(address=address)  # ray.init refuses resource arguments for an existing cluster
    serve_loopback_only()  # as init_ray's embedded cluster: 127.0.0.1 only, for the stages that join it too
    return RayTaskRunner(init_kwargs={"include_dashboard": False, "object_store_memory": default_object_store_bytes()})


def forwarded_environment(workspace: Path) -> dict[str, str]:
    """The non-secret settings of this process the stage subprocesses need, resolved once, here.

    The MLflow tracking URI is made explicit so every Ray worker (whatever environment it started
    with) logs to and registers in the store this flow run reads.
    """
    from core import tracking

    forwarded = {k: v for k, v in env.current().items()
                 if k.startswith(FORWARDED_PREFIXES) and not SENSITIVE_ENV_NAME.search(k)}
    forwarded["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(workspace)
    if "CTXEMO_MLFLOW_ARTIFACT_ROOT" not in forwarded:
        # Resolved here, where the embedded default (the workspace's mlartifacts/) is known: with an
        # explicit tracking URI the subprocesses would otherwise leave artifacts to MLflow's default.
        root = tracking.artifact_location(workspace)
        if root is not None:
            forwarded["CTXEMO_MLFLOW_ARTIFACT_ROOT"] = root
    for key, value in env.EMBEDDED_DEFAULTS.items():
        forwarded.setdefault(key, value)
    return forwarded


def _step_fault_point() -> None:
    """The fault point `flow.step` of the running task (see the module docstring)."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is not None:
        fault_point("flow.step", step=context.task.name, attempt=context.task_run.run_count)


def _ray_placement() -> dict[str, str | None]:
    """The Ray task and node this code runs in (None outside Ray): where the task runner put the step."""
    import ray

    context = ray.get_runtime_context() if ray.is_initialized() else None
    return {"ray_task_id": context and context.get_task_id(), "ray_node_id": context and context.get_node_id()}


def _subprocess_env(forwarded: dict[str, str]) -> dict[str, str]:
    # dvc.yaml runs `python -m stages.X`: that must be this interpreter.
    child = env.with_path_first(Path(sys.executable).parent, {**env.current(), **forwarded})
    if "RAY_ADDRESS" not in child:
        import ray

        if ray.is_initialized():  # inside a Ray task: the stages join this cluster instead of starting one
            child["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return child


def run_command(command: list[str], cwd: Path, environment: dict[str, str], timeout_seconds: float, logger,
                on_line: Callable[[str], None] | None = None) -> float:
    """Run `command`, streaming its output to `logger` (and `on_line`); StepFailed with the output tail on failure."""
    started = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    shown = " ".join(command[2:] if command[:2] == [sys.executable, "-m"] else command)
    logger.info(f"$ {shown}  (in {cwd})")
    process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        _kill_group(process)

    watchdog = threading.Timer(timeout_seconds, stop)
    watchdog.start()
    try:
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info(line)
            if on_line is not None:
                on_line(line)
        code = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:  # interrupted (Prefect's own timeout, cancellation): leave no orphan
            _kill_group(process)
    if timed_out.is_set():
        raise StepFailed(f"`{shown}` ran past its {timeout_seconds:.0f} s timeout and was stopped; last output:\n"
                         + "\n".join(tail))
    if code != 0:
        raise StepFailed(f"`{shown}` failed with exit code {code}; last output:\n" + "\n".join(tail))
    return time.perf_counter() - started


def _kill_group(process: subprocess.Popen) -> None:
    """Stop the command and its children (its own session), first politely."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- tasks


@task(cache_policy=NO_CACHE)
def dvc_step(args: list[str], workspace: str, forwarded: dict[str, str],
             timeout_seconds: float = 24 * 3600) -> dict[str, Any]:
    """`python -m dvc ARGS` in the workspace."""
    _step_fault_point()
    seconds = run_command([sys.executable, "-m", "dvc", *args], Path(workspace), _subprocess_env(forwarded),
                          timeout_seconds, get_run_logger())
    return {"command": f"dvc {' '.join(args)}", "seconds": round(seconds, 1), **_ray_placement()}


@task(cache_policy=NO_CACHE)
def stage_step(stage: str, workspace: str, forwarded: dict[str, str], timeout_seconds: float) -> dict[str, Any]:
    """`python -m dvc repro --single-item STAGE` in the workspace: DVC runs the stage if it is stale."""
    _step_fault_point()
    args, outcome = ["repro", "--single-item", stage], dvc_stages.OutcomeReader(stage)
    seconds = run_command([sys.executable, "-m", "dvc", *args], Path(workspace), _subprocess_env(forwarded),
                          timeout_seconds, get_run_logger(), on_line=outcome)
    return {"step": stage, "command": f"dvc {' '.join(args)}", "outcome": outcome.outcome,
            "seconds": round(seconds, 1), **_ray_placement()}


@task(cache_policy=NO_CACHE)
def register_step(workspace: str, tracking_uri: str, model_name: str) -> dict[str, Any]:
    """Register the freshly evaluated model as a new version with the `challenger` alias."""
    from pipelines import registry

    _step_fault_point()
    client = registry.client_for(tracking_uri)
    model = registry.evaluated_model(Workspace.at(workspace), client)
    version = registry.register(client, model_name, model)
    get_run_logger().info(f"registered {model_name} version {version.version} from run {model.run_id} "
                          f"(test {model.metric} {model.value:.4f}, data {model.data_version}) as challenger")
    return {"version": str(version.version), "run_id": model.run_id, "metric": model.metric, "value": model.value,
            "data_version": model.data_version, **_ray_placement()}


@task(cache_policy=NO_CACHE)
def promote_step(workspace: str, tracking_uri: str, model_name: str, version: str, metric: str,
                 min_improvement: float, apply: bool) -> dict[str, Any]:
    """The gate: move `champion` to `version` when it beats the champion by `min_improvement`."""
    from pipelines import registry

    _step_fault_point()
    client = registry.client_for(tracking_uri)
    registered = client.get_model_version(model_name, version)
    challenger = registry.candidate_of(client, registered)
    decision = registry.decide(client, model_name, challenger, metric, min_improvement,
                               Workspace.at(workspace), challenger_version=registered)
    if apply:
        decision = registry.apply(client, decision)
    explanation = decision.explain()
    get_run_logger().info(explanation)
    return {**decision.as_dict(), "explanation": explanation}


@task(cache_policy=NO_CACHE)
def commit_lock_step(workspace: str, message: str, tag: str) -> dict[str, Any]:
    """Commit dvc.lock and the uncached outputs to the workspace's git repository and tag it (skipped,
    logged, without git)."""
    _step_fault_point()
    return dvc_stages.commit_lock_file(Path(workspace), message, tag, get_run_logger())


@task(cache_policy=NO_CACHE)
def git_push_step(workspace: str, tag: str) -> dict[str, Any]:
    """`git push <remote> <tag>` (no remote: the tag stays local)."""
    _step_fault_point()
    return dvc_stages.push_tag(Path(workspace), tag, get_run_logger())


@task(cache_policy=NO_CACHE)
def ablation_step(base_params: dict[str, Any], variant: str, seed: int, out_root: str, workspace: str,
                  forwarded: dict[str, str]) -> dict[str, Any]:
    """Train and evaluate one ablation variant (pipelines/ablation.py) inside the workspace."""
    from pipelines import ablation

    _step_fault_point()
    with _inside(Path(workspace), _subprocess_env(forwarded)):
        row = ablation.run_variant(base_params, variant, Path(out_root), seed)
    get_run_logger().info(f"ablation {variant} seed {seed}: {row['test'].get('mAP', row['test'].get('accuracy'))} "
                          f"in {row['seconds']} s")
    return row


@contextlib.contextmanager
def _inside(workspace: Path, variables: dict[str, str]) -> Iterator[None]:
    """cwd and environment of a stage run, for code that resolves paths and settings from them.

    Process-wide, which is safe here: a Ray worker runs one task at a time.
    """
    previous_cwd = Path.cwd()
    os.chdir(workspace)
    try:
        with env.temporarily(variables):
            yield
    finally:
        os.chdir(previous_cwd)


def _step(base, name: str, retry_backoff_seconds: float, **options):
    """`base` as step `name` (its task and fault-point name) with STEPS' policy (`stage`'s for a DVC stage)."""
    policy = STEPS.get(name, STEPS["stage"])
    return base.with_options(
        name=name, retries=policy.retries, **options,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_backoff_seconds)(policy.retries),
        retry_jitter_factor=0.2, timeout_seconds=policy.timeout_seconds,
    )


def _ray_options():
    """Ray options of every step: no CPU of its own (see the module docstring), and the Prefect API.

    The Ray workers report task runs and logs to the flow run's API (with the ephemeral API that
    only works on this machine: use a Prefect server with a Ray cluster). Ray keeps a pool of
    worker processes per runtime environment. A worker's Prefect event and log
    senders are bound to the first API it reported to, so tasks of flow runs reporting to another
    API (one driver running flows against two servers, as the tests do) must not reuse it: the
    API URL in the runtime environment gives them workers of their own.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL
    from prefect_ray.context import remote_options

    options: dict[str, Any] = {"num_cpus": 0}
    url = PREFECT_API_URL.value()
    context = FlowRunContext.get()
    if not url and context is not None and context.client is not None:
        # Prefect's ephemeral API (no server configured) lives in this process: without its URL
        # every Ray worker would start an ephemeral server of its own.
        url = str(context.client.api_url)
    if url:
        options["runtime_env"] = {"env_vars": {"PREFECT_API_URL": str(url)}}
    return remote_options(**options)


# --------------------------------------------------------------------------- flows


@flow(name="retrain", task_runner=ray_task_runner(), log_prints=True)
def retrain(workspace: str = ".", pull: bool = False, push: bool = False, promote: bool = True,
            retry_backoff_seconds: float = 10.0) -> dict[str, Any]:
    """Scheduled retraining: rerun what DVC finds stale, register the evaluated model, gate it, promote it.

    workspace: the DVC workspace (absolute on a cluster: Ray nodes share it).
    pull / push: `dvc pull` first / `dvc push` (and `git push` of the promotion's tag) last.
    promote: False registers the challenger and explains the gate without moving `champion`.
    """
    from prefect.runtime import flow_run

    env.apply_embedded_defaults()  # telemetry off for what this run starts (the CLI did it already)
    ws = Path(workspace).resolve()
    with dvc_stages.workspace_lock(ws, f"retrain flow run {flow_run.name!r} ({flow_run.id})"):
        return _retrain(ws, flow_run.name, flow_run.id, pull, push, promote, retry_backoff_seconds)


def _retrain(ws: Path, run_name: str | None, run_id: str | None, pull: bool, push: bool, promote: bool,
             backoff: float) -> dict[str, Any]:
    """The body of `retrain`, under the workspace's lock."""
    from core.params import load_params

    logger = get_run_logger()
    params = load_params(Workspace.at(ws).params_file)
    forwarded = forwarded_environment(ws)
    tracking_uri = forwarded["MLFLOW_TRACKING_URI"]
    name = params.registry.name_for(params.model.name)
    stages = dvc_stages.stage_plan(ws, RETRAIN_TARGET)
    summary: dict[str, Any] = {"workspace": str(ws), "flow_run": run_name, "model_name": name,
                               "tracking_uri": tracking_uri, "stages": stages, "steps": [], "git": None}

    def shell(step: str, base, *args) -> None:
        done = _step(base, step, backoff).submit(*args, str(ws), forwarded, STEPS[step].timeout_seconds).result()
        summary["steps"].append({"step": step, **done})

    logger.info(f"retraining in {ws}: stages {' -> '.join(stages)}; MLflow {tracking_uri}; registered model {name}")
    with _ray_options():
        if pull:
            shell("dvc-pull", dvc_step, ["pull"])
        for stage in stages:
            policy = STEPS.get(stage, STEPS["stage"])
            summary["steps"].append(_step(stage_step, stage, backoff, task_run_name=stage).submit(
                stage, str(ws), forwarded, policy.timeout_seconds).result())
        registered = _step(register_step, "register", backoff).submit(str(ws), tracking_uri, name).result()
        decision = _step(promote_step, "promote", backoff).submit(
            str(ws), tracking_uri, name, registered["version"], registered["metric"],
            params.registry.min_improvement, promote).result()
        applied = decision["promote"] and decision["applied"]
        if applied:
            summary["git"] = _record_promotion(ws, run_name, run_id, name, registered, backoff)
        if push:
            shell("dvc-push", dvc_step, ["push"])
            if (summary["git"] or {}).get("tag"):
                summary["git"]["push"] = _step(git_push_step, "git-push", backoff)(str(ws), summary["git"]["tag"])
    champion = decision["challenger"]["version"] if applied else (
        decision["champion"]["version"] if decision["champion"] else None)
    summary.update(version=registered["version"], run_id=registered["run_id"], champion=champion,
                   registered=registered, decision=decision)
    return summary


def _record_promotion(ws: Path, run_name: str | None, run_id: str | None, model_name: str,
                      registered: dict[str, Any], backoff: float) -> dict[str, Any]:
    """Commit and tag dvc.lock in the flow's own process (its git identity); never fails the flow run."""
    version = registered["version"]
    tag = dvc_stages.release_tag(run_name, version)
    message = (f"retrain {run_name or tag}: dvc.lock of {model_name} version {version}\n\n"
               f"Prefect flow run {run_name} ({run_id}) registered {model_name} version {version} "
               f"(MLflow run {registered['run_id']}) and promoted it to champion.")
    state = _step(commit_lock_step, "commit-lock", backoff)(str(ws), message, tag, return_state=True)
    if state.is_completed():
        return state.result()
    reason = f"dvc.lock not committed: {state.message}"
    get_run_logger().warning(f"{reason} (the promotion stands)")
    return {"skipped": reason}


@flow(name="ablations", task_runner=ray_task_runner(), log_prints=True)
def ablations(workspace: str = ".", variants: list[str] | None = None, seeds: list[int] | None = None,
              params_file: str = "params.yaml", out_root: str = "artifacts/ablations", report_dir: str = "reports",
              retry_backoff_seconds: float = 10.0, frozen_backbone: bool = False) -> dict[str, Any]:
    """The paper's ablations, one Ray task per (variant, seed), side by side; writes reports/ablations.{md,json}
    (reports/ablations_frozen_backbone.{md,json} with a frozen backbone)."""
    from core.params import read_yaml
    from pipelines import ablation

    env.apply_embedded_defaults()
    ws = Path(workspace).resolve()
    variants = ablation.check_variants(variants or ablation.VARIANTS)
    base = ablation.with_backbone_mode(read_yaml(ws / params_file), frozen_backbone)
    seeds = list(seeds) if seeds else [base.get("seed", 0)]
    forwarded = forwarded_environment(ws)
    step = _step(ablation_step, "ablation", retry_backoff_seconds)
    out = ws / out_root / ablation.output_names(base)[0]
    with _ray_options():
        futures = [step.with_options(task_run_name=f"ablation-{v}-seed{s}").submit(
            base, v, s, str(out), str(ws), forwarded) for s in seeds for v in variants]
        rows = [future.result() for future in futures]
    markdown, table = ablation.comparison(rows)
    report = ablation.write_report(markdown, table, base, ws / report_dir,
                                   persons=ablation.persons_per_split(Workspace.at(ws).manifest_dir))
    return {"markdown": markdown, "rows": table, "report": str(report)}


# --------------------------------------------------------------------------- schedules


PREFECT_FILE = Path("infra/prefect/prefect.yaml")
RETRAIN_CONCURRENCY = 1   # runs of a retrain deployment at once (infra/prefect/prefect.yaml says the same)


def deployment_schedule(name: str = "retrain-weekly", workspace: Path = Path(".")) -> tuple[str, str]:
    """(cron, timezone) of deployment `name` in infra/prefect/prefect.yaml.

    That file is the schedule's one home: `prefect deploy` reads it for a work pool, and
    `ctxemo retrain --serve` reads it here for one machine. It is looked for in the workspace,
    then beside this package's sources.
    """
    import yaml

    for candidate in (Path(workspace) / PREFECT_FILE, Path(__file__).resolve().parents[1] / PREFECT_FILE):
        if candidate.is_file():
            break
    else:
        raise UserError(f"no {PREFECT_FILE} in {Path(workspace).resolve()} to read the schedule of {name!r} from: "
                        "pass --cron")
    deployments = (yaml.safe_load(candidate.read_text()) or {}).get("deployments") or []
    deployment = next((d for d in deployments if d.get("name") == name), None)
    schedules = (deployment or {}).get("schedules") or []
    if not schedules or not schedules[0].get("cron"):
        raise UserError(f"{candidate}: deployment {name!r} has no cron schedule: pass --cron")
    return str(schedules[0]["cron"]), str(schedules[0].get("timezone") or "UTC")


def retrain_deployment(name: str, cron: str, timezone: str = "UTC", parameters: dict[str, Any] | None = None):
    """The `retrain` deployment with a cron schedule (what `serve_retrain` serves); one run at a time."""
    from prefect.schedules import Cron

    return retrain.to_deployment(name=name, schedules=[Cron(cron, timezone=timezone)], parameters=parameters or {},
                                 tags=["ctxemo"], concurrency_limit=RETRAIN_CONCURRENCY,
                                 description="Rerun what is stale with DVC on Ray, register and promote the model.")


def serve_retrain(name: str, cron: str, timezone: str = "UTC", parameters: dict[str, Any] | None = None) -> None:
    """Run the cron-scheduled `retrain` from this process until it is stopped (one machine, no work pool)."""
    from prefect import serve

    serve(retrain_deployment(name, cron, timezone, parameters))
