"""MLflow model registry: register each evaluated model as a challenger, promote it past a gate.

    ctxemo promote --dry-run     # explain what the gate would decide for the workspace's model
    ctxemo promote               # register it (if not yet) and move `champion` when it passes

A workspace's model is promotable only when its evaluation is fresh: `artifacts/model/
mlflow_run.json` names the training run, and `reports/metrics.json` must be the very file the
evaluation stage logged into that run (`evaluation/metrics.json`) with the run's `test_<metric>`
equal to it. A model whose evaluation failed, was skipped or belongs to an older model never
reaches the registry.

Registration creates a new version of `registry.model_name` from the run's `model` artifact (the
MLflow pyfunc model the train stage logs, pipelines/mlflow_model.py: weights-only model.pt, signature,
input example, code version; `mlflow.pyfunc.load_model("models:/NAME@champion")` loads it), tagged
with the test data version (the evaluation's `test_data_version`: a digest of the test data
itself, core/evaluation/test_data.py), the DVC hashes of the train stage's data dependencies in
dvc.lock (provenance only), the git commit, the params hash and the test metrics, and points the
`challenger` alias at it. The objects stage's meta.json (which weights computed the object
features) goes into the run as `registry/objects_meta.json` (the model carries its own copy;
`ctxemo predict` falls back to this one).

The gate compares the challenger with the current `champion` on the primary test metric (mAP for
EMOTIC, accuracy for CAER-S): promotion needs `challenger - champion >= registry.min_improvement`;
the first model becomes champion. Test metrics are comparable only on the same test data, so
both sides are held against the workspace's test data as it is now: a champion recorded on other
(or unknown) test data is re-scored on it through the evaluation stage's own scoring path; a
workspace model whose evaluation predates the data is refused with the command that re-evaluates
it; a registered challenger is re-scored like the champion. Without a workspace to re-score in,
only recorded metrics on the same test data version are compared. Aliases only (`challenger`,
`champion`), never the deprecated stages API.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.workspace import Workspace

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
OBJECTS_META_ARTIFACT = "registry/objects_meta.json"
PRIMARY_METRIC = {"multilabel": "mAP", "multiclass": "accuracy"}
# dvc.lock dependencies of the train stage that are code, not data.
CODE_PREFIXES = ("stages/", "core/", "models", "pipelines/")
TAG_DATA_VERSION = "data_version"
TAG_PRIMARY_METRIC = "primary_metric"
TAG_PRIMARY_VALUE = "primary_value"


@dataclass(frozen=True)
class EvaluatedModel:
    """A trained model whose evaluation is verified fresh: everything registration records."""

    run_id: str
    task: str
    metric: str                          # primary metric name in metrics.json (mAP | accuracy)
    value: float
    metrics: dict[str, float]            # every scalar of metrics.json
    data_version: str | None
    data_hashes: dict[str, str]
    params_hash: str | None
    git_commit: str | None
    objects_meta: Path | None

    def tags(self) -> dict[str, str]:
        tags = {
            TAG_DATA_VERSION: self.data_version or "unknown",
            "git_commit": self.git_commit or "unknown",
            "params_hash": self.params_hash or "unknown",
            "task": self.task,
            TAG_PRIMARY_METRIC: self.metric,
            TAG_PRIMARY_VALUE: repr(self.value),
        }
        tags.update({f"data_md5.{path}": md5 for path, md5 in self.data_hashes.items()})
        tags.update({f"metric.{name}": repr(value) for name, value in self.metrics.items()})
        return tags


@dataclass(frozen=True)
class Candidate:
    """One side of the gate."""

    version: str | None                  # None: not registered (dry run)
    run_id: str
    value: float                         # primary test metric as recorded by its evaluation
    data_version: str | None


@dataclass(frozen=True)
class Decision:
    model_name: str
    metric: str
    challenger: Candidate
    champion: Candidate | None
    champion_value: float | None         # what the gate compared: recorded, or re-scored on current data
    basis: str
    delta: float | None
    min_improvement: float
    promote: bool
    reason: str
    applied: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        """A human account: both metrics, the delta, the threshold, the decision."""
        lines = [f"registered model: {self.model_name}   primary metric: test {self.metric}"]
        ch = self.challenger
        lines.append(f"challenger: {_describe(ch)}  test {self.metric} = {ch.value:.4f}")
        if self.champion is None:
            lines.append("champion:   none yet")
        else:
            lines.append(f"champion:   {_describe(self.champion)}  test {self.metric} = {self.champion_value:.4f}"
                         + ("" if self.champion_value == self.champion.value
                            else f" (recorded {self.champion.value:.4f} on data {self.champion.data_version})"))
        lines.append(f"basis:      {self.basis}")
        if self.delta is not None:
            lines.append(f"delta:      {self.delta:+.4f}   required: >= {self.min_improvement:+.4f}")
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        suffix = "" if not self.promote else (" (applied)" if self.applied else " (not applied: dry run)")
        lines.append(f"decision:   {verdict}{suffix}: {self.reason}")
        return "\n".join(lines)


def _describe(candidate: Candidate) -> str:
    version = f"version {candidate.version}" if candidate.version else "unregistered"
    return f"{version} (run {candidate.run_id}, data {candidate.data_version or 'unknown'})"


# --------------------------------------------------------------------------- workspace facts


def data_hashes(dvc_lock: Path, stage: str = "train") -> dict[str, str]:
    """{path: md5} of the data dependencies `stage` was last run with, from dvc.lock ({} if none)."""
    import yaml

    if not Path(dvc_lock).is_file():
        return {}
    lock = yaml.safe_load(Path(dvc_lock).read_text()) or {}
    deps = (lock.get("stages", {}).get(stage) or {}).get("deps", [])
    hashes = {}
    for dep in deps:
        path = str(dep["path"])
        if path.endswith(".py") or path.startswith(CODE_PREFIXES):
            continue
        md5 = dep.get("md5") or dep.get("hash")
        if md5 and md5 != "md5":  # dvc.lock 3.x writes `hash: md5` next to `md5: <value>`
            hashes[path] = str(md5)
    return hashes


def _scalar_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in results.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def evaluated_model(layout: Workspace, client) -> EvaluatedModel:
    """The workspace's model with its evaluation checked fresh; UserError (saying why) otherwise."""
    run_file = layout.model_dir / "mlflow_run.json"
    metrics_file = layout.metrics_file
    if not run_file.is_file():
        raise UserError(f"{run_file} is missing: the model was not trained with MLflow tracking "
                        "(run the train stage: dvc repro train)")
    if not metrics_file.is_file():
        raise UserError(f"{metrics_file} is missing: evaluate the model first (dvc repro evaluate)")
    run_id = json.loads(run_file.read_text())["run_id"]
    results = json.loads(metrics_file.read_text())
    task = results.get("task")
    if task not in PRIMARY_METRIC:
        raise UserError(f"{metrics_file}: unknown task {task!r}; expected one of {sorted(PRIMARY_METRIC)}")
    metric = PRIMARY_METRIC[task]
    value = results.get(metric)
    if value is None:
        raise UserError(f"{metrics_file} has no {metric}: the evaluation could not compute it")

    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise UserError(f"training run {run_id} (from {run_file}) is not in the MLflow store "
                        f"{client.tracking_uri}: {exc.message}") from None
    logged = run.data.metrics.get(f"test_{metric}")
    stale = (f"{metrics_file} is not the evaluation of the model in {layout.model_dir} "
             f"(MLflow run {run_id})")
    if logged is None:
        raise UserError(f"{stale}: the run has no test_{metric}; the evaluation of this model did not finish "
                        "(run dvc repro evaluate)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            logged_file = Path(client.download_artifacts(run_id, "evaluation/metrics.json", tmp))
            logged_results = json.loads(logged_file.read_text())
    except (MlflowException, OSError) as exc:
        raise UserError(f"{stale}: the run holds no evaluation/metrics.json ({exc})") from None
    if logged_results != results or not math.isclose(logged, float(value), rel_tol=1e-9, abs_tol=1e-12):
        raise UserError(f"{stale}: it differs from the run's evaluation/metrics.json; it belongs to another "
                        "model or an older evaluation (run dvc repro evaluate)")

    hashes = data_hashes(layout.dvc_lock)
    objects_meta = layout.objects_meta
    return EvaluatedModel(
        run_id=run_id, task=task, metric=metric, value=float(value), metrics=_scalar_metrics(results),
        data_version=results.get("test_data_version"), data_hashes=hashes,
        params_hash=run.data.tags.get("ctxemo.params_hash"), git_commit=run.data.tags.get("ctxemo.git_commit"),
        objects_meta=objects_meta if objects_meta.is_file() else None,
    )


# --------------------------------------------------------------------------- registry


def client_for(tracking_uri: str | None = None, workspace: Path | None = None):
    """An MlflowClient on `tracking_uri`, or on the workspace's store (core/tracking.py)."""
    from mlflow import MlflowClient

    from core import tracking

    uri = tracking_uri or tracking.tracking_uri(workspace)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def logged_model(client, run_id: str, name: str = MODEL_ARTIFACT):
    """The model logged as `name` by run `run_id` (the latest, if it logged several)."""
    run = client.get_run(run_id)
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    if not found:
        raise UserError(f"run {run_id} logged no {name!r} model (the train stage logs one: `dvc repro train`)")
    return max(found, key=lambda m: m.creation_timestamp)


def version_by_alias(client, model_name: str, alias: str):
    """The ModelVersion an alias points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def version_of_run(client, model_name: str, run_id: str):
    """The version already registered from `run_id`, or None."""
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register(client, model_name: str, model: EvaluatedModel):
    """Register the run's model as a new version (once per run), tag it, alias it `challenger`."""
    from mlflow.exceptions import MlflowException

    existing = version_of_run(client, model_name, model.run_id)
    if existing is None:
        if model.objects_meta is not None:
            client.log_text(model.run_id, model.objects_meta.read_text(), OBJECTS_META_ARTIFACT)
        logged = logged_model(client, model.run_id)
        try:
            client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # The version points at the run's logged model with the run as its lineage, like
        # mlflow.register_model("runs:/<id>/model"). The source is the model's artifact location, not
        # `models:/<id>`: MLflow resolves that form through its process-wide tracking URI, which need
        # not be this client's store.
        version = client.create_model_version(model_name, source=logged.artifact_location, run_id=model.run_id,
                                              tags=model.tags(), model_id=logged.model_id)
    else:
        version = existing
        for key, value in model.tags().items():
            client.set_model_version_tag(model_name, version.version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    return client.get_model_version(model_name, version.version)


def candidate_of(client, version) -> Candidate:
    """Gate input from a registered version: its tags, else its run's test metric."""
    tags = version.tags or {}
    value = tags.get(TAG_PRIMARY_VALUE)
    if value is None:
        run = client.get_run(version.run_id)
        metric = tags.get(TAG_PRIMARY_METRIC) or next(
            (m for m in PRIMARY_METRIC.values() if f"test_{m}" in run.data.metrics), None)
        if metric is None:
            raise UserError(f"{version.name} version {version.version} has no recorded test metric")
        value = run.data.metrics[f"test_{metric}"]
    data_version = tags.get(TAG_DATA_VERSION)
    return Candidate(version=str(version.version), run_id=version.run_id, value=float(value),
                     data_version=None if data_version in (None, "unknown") else data_version)


# --------------------------------------------------------------------------- the gate


def with_data_root(layout: Workspace) -> Workspace:
    """`layout` as given, with the images' folder from its params.yaml when it names none."""
    if layout.data_root is not None or not Path(layout.params_file).is_file():
        return layout
    from core.params import load_params

    root = Path(load_params(layout.params_file).data.root)
    return replace(layout, data_root=root if root.is_absolute() else layout.root / root)


def rescore_version(client, version, layout: Workspace, metric: str) -> float:
    """The version's primary test metric on the workspace's current data, through the evaluation path."""
    from core.data.manifest import read_labels
    from core.evaluation import evaluate
    from core.inference import load_model_package
    from core.params import load_params

    params = load_params(layout.params_file)
    paths = with_data_root(layout)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(client.download_artifacts(version.run_id, "checkpoint", tmp))
        package = load_model_package(checkpoint)
    classes = read_labels(paths.labels_json)
    if list(package.classes) != list(classes):
        raise UserError(f"{version.name} version {version.version} predicts other classes than the workspace's "
                        f"{paths.labels_json}: its test metric cannot be compared with the challenger's")
    results, _, _ = evaluate.evaluate_model(package, paths, params.train.batch_size)
    return float(results[metric])


REEVALUATE = "ctxemo stage evaluate (or dvc repro --force evaluate)"


def current_data_version(layout: Workspace | None) -> str | None:
    """The version of the workspace's test data now (None without a workspace or a test split)."""
    if layout is None:
        return None
    from core.evaluation.test_data import test_data_version

    return test_data_version(with_data_root(layout))


def _held_to_current(client, side: str, candidate: Candidate, version, current: str | None,
                     layout: Workspace | None, metric: str) -> tuple[float, str]:
    """(the metric to compare, how it was obtained) for one side of the gate."""
    if candidate.data_version is not None and candidate.data_version == current:
        return candidate.value, f"{side} recorded on it"
    if current is None:  # nothing to re-score on: recorded figures compare only on one known version
        return candidate.value, f"{side} recorded on data {candidate.data_version or 'unknown'}"
    if version is None:  # the workspace's own, unregistered model: its evaluation is older than the data
        raise UserError(f"the workspace's evaluation (reports/metrics.json, test data "
                        f"{candidate.data_version or 'unknown'}) is not of its test data now ({current}): "
                        f"re-evaluate the model with `{REEVALUATE}`, then promote again")
    return rescore_version(client, version, layout, metric), (
        f"{side} re-scored on it (recorded on data {candidate.data_version or 'unknown'})")


def decide(client, model_name: str, challenger: Candidate, metric: str, min_improvement: float,
           layout: Workspace | None = None, challenger_version=None) -> Decision:
    """Compare `challenger` with the current champion on the workspace's test data; nothing is changed here.

    `challenger_version` is the registered version to re-score the challenger from; None for the
    workspace's own model, whose evaluation must then be of the data as it is now.
    """
    if min_improvement < 0:
        raise UserError(f"registry.min_improvement must be >= 0, got {min_improvement}")
    champion_version = version_by_alias(client, model_name, CHAMPION)
    common = dict(model_name=model_name, metric=metric, challenger=challenger, min_improvement=min_improvement)
    if champion_version is None:
        return Decision(**common, champion=None, champion_value=None, basis="no champion yet", delta=None,
                        promote=True, reason="the first evaluated model becomes champion")
    champion = candidate_of(client, champion_version)
    if challenger.version is not None and champion.version == challenger.version:
        return Decision(**common, champion=champion, champion_value=champion.value, basis="same version",
                        delta=0.0, promote=False, reason=f"version {champion.version} is already champion")
    if champion.run_id == challenger.run_id:
        return Decision(**common, champion=champion, champion_value=champion.value, basis="same training run",
                        delta=0.0, promote=False, reason="the champion is this very model")
    current = current_data_version(layout)
    if current is None and (challenger.data_version is None or challenger.data_version != champion.data_version):
        raise UserError(f"the champion was evaluated on test data {champion.data_version or 'unknown'}, the "
                        f"challenger on {challenger.data_version or 'unknown'}: their test metrics do not compare; "
                        "run the gate in the workspace (ctxemo promote) so both can be re-scored on the current test "
                        "split")
    challenger_value, challenger_basis = _held_to_current(client, "challenger", challenger, challenger_version,
                                                          current, layout, metric)
    champion_value, champion_basis = _held_to_current(client, "champion", champion, champion_version, current,
                                                      layout, metric)
    basis = (f"test data {current}: {challenger_basis}, {champion_basis}" if current is not None
             else f"recorded test metrics on the same test data {current or champion.data_version}")
    challenger = replace(challenger, value=challenger_value)
    delta = challenger_value - champion_value
    # A tolerance far below any metric's resolution: 0.6 - 0.5 must pass a 0.1 gate.
    passes = delta >= min_improvement - 1e-9
    reason = (f"improves test {metric} by {delta:+.4f} >= {min_improvement:.4f}" if passes else
              f"test {metric} changes by {delta:+.4f}, less than the required {min_improvement:.4f}")
    return Decision(model_name=model_name, metric=metric, challenger=challenger, min_improvement=min_improvement,
                    champion=champion, champion_value=champion_value, basis=basis, delta=delta,
                    promote=passes, reason=reason)


def apply(client, decision: Decision) -> Decision:
    """Move `champion` to the challenger when the decision says so; returns the decision marked applied."""
    if not decision.promote:
        return decision
    if decision.challenger.version is None:
        raise UserError("an unregistered model cannot be promoted: register it first")
    client.set_registered_model_alias(decision.model_name, CHAMPION, decision.challenger.version)
    client.set_model_version_tag(decision.model_name, decision.challenger.version, "promoted_over",
                                 decision.champion.version if decision.champion else "none")
    return replace(decision, applied=True)


@dataclass
class PromotionResult:
    decision: Decision
    registered_version: str | None
    model: EvaluatedModel


def register_and_promote(workspace: Path, model_name: str, min_improvement: float, *, dry_run: bool = False,
                         tracking_uri: str | None = None, layout: Workspace | None = None) -> PromotionResult:
    """The workspace's freshly evaluated model: register it, gate it, move `champion` if it passes.

    With `dry_run` nothing is written: the decision is computed for the model as it would be registered.
    """
    layout = layout or Workspace.at(workspace)
    client = client_for(tracking_uri, Path(workspace))
    model = evaluated_model(layout, client)
    current = current_data_version(layout)
    if current is not None and model.data_version != current:  # before anything is registered
        raise UserError(f"{layout.metrics_file} was computed on test data {model.data_version or 'unknown'}, not on "
                        f"the workspace's test data now ({current}): re-evaluate the model with `{REEVALUATE}`, "
                        "then promote again")
    if dry_run:
        existing = version_of_run(client, model_name, model.run_id)
        version = None if existing is None else str(existing.version)
    else:
        version = str(register(client, model_name, model).version)
    challenger = Candidate(version=version, run_id=model.run_id, value=model.value, data_version=model.data_version)
    decision = decide(client, model_name, challenger, model.metric, min_improvement, layout)
    if not dry_run:
        decision = apply(client, decision)
    return PromotionResult(decision=decision, registered_version=version, model=model)


def gate_version(model_name: str, version: str, min_improvement: float, *, dry_run: bool = False,
                 tracking_uri: str | None = None, workspace: Path | None = None) -> Decision:
    """Gate an already registered version (e.g. `ctxemo promote --version 7`)."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri, workspace)
    try:
        registered = client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise UserError(f"{model_name} version {version}: {exc.message}") from None
    challenger = candidate_of(client, registered)
    metric = (registered.tags or {}).get(TAG_PRIMARY_METRIC) or "mAP"
    layout = Workspace.at(workspace) if workspace is not None else None
    decision = decide(client, model_name, challenger, metric, min_improvement, layout, challenger_version=registered)
    return decision if dry_run else apply(client, decision)
