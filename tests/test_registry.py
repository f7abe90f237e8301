"""MLflow registry: freshness checks, registration with tags and aliases, the promotion gate, `ctxemo promote`.

The workspaces here are what the train and evaluate stages leave behind (artifacts/model/
mlflow_run.json, reports/metrics.json logged as the run's evaluation/metrics.json, dvc.lock),
with a small pickled `mlflow.pytorch` model in each run, as an older ctxemo logged (registration does not
look inside it; `ctxemo predict` refuses it); training and its pyfunc model are tested elsewhere
(tests/test_train.py, tests/test_predict.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from support import use_mlflow_store

from core.errors import UserError
from core.workspace import Workspace
from pipelines import registry

MANIFEST_MD5 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0.dir"
# These workspaces hold no test split to re-score on: the gate compares recorded metrics, and
# only on one test data version (the real re-score is tested in tests/test_predict.py).
TEST_DATA = "a1b2c3d4e5f60718"
LOCK = {
    "schema": "2.0",
    "stages": {"train": {"cmd": "python -m stages.train", "deps": [
        {"path": "stages/train.py", "hash": "md5", "md5": "11111111111111111111111111111111", "size": 10},
        {"path": "models", "hash": "md5", "md5": "22222222222222222222222222222222.dir", "size": 10, "nfiles": 3},
        {"path": "data/manifest", "hash": "md5", "md5": MANIFEST_MD5, "size": 10, "nfiles": 4},
        {"path": "data/objects", "hash": "md5", "md5": "33333333333333333333333333333333.dir", "size": 10, "nfiles": 9},
        {"path": "data/raw/demo", "hash": "md5", "md5": "44444444444444444444444444444444.dir", "size": 10, "nfiles": 5},
    ]}},
}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One MLflow store for the module: creating its SQLite schema takes seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        yield use_mlflow_store(patch, root)


@pytest.fixture
def store(shared_store):
    return shared_store


@pytest.fixture
def model_name(request) -> str:
    """A registered-model name of this test's own, in the shared store."""
    return "ctxemo-test-" + hashlib.md5(request.node.nodeid.encode()).hexdigest()[:10]


def trained_and_evaluated(workspace: Path, m_ap: float, *, lock: dict | None = LOCK, log_evaluation: bool = True,
                          metrics_override: dict | None = None, test_data: str = TEST_DATA) -> str:
    """A workspace state after train + evaluate: an MLflow run with a logged model and its test metrics."""
    import mlflow
    import torch

    from core import tracking

    experiment = tracking.setup(workspace)
    results = {"task": "multilabel", "split": "test", "num_examples": 5, "mAP": m_ap, "baseline_mAP": 0.3,
               "val_mAP": m_ap - 0.05, "c_f1": 0.2, "o_f1": 0.25, "jaccard": 0.2, "per_class": {},
               "test_data_version": test_data}
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "reports").mkdir(exist_ok=True)
    metrics_file = workspace / "reports" / "metrics.json"
    metrics_file.write_text(json.dumps(results, indent=2))
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.set_tags({"ctxemo.params_hash": f"hash{m_ap}", "ctxemo.git_commit": "abc123"})
        mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"])
        if log_evaluation:
            mlflow.log_metrics({f"test_{k}": v for k, v in results.items() if isinstance(v, (int, float))})
            mlflow.log_artifact(str(metrics_file), artifact_path="evaluation")
    model_dir = workspace / "artifacts" / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "mlflow_run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    if metrics_override is not None:
        metrics_file.write_text(json.dumps({**results, **metrics_override}, indent=2))
    if lock is not None:
        (workspace / "dvc.lock").write_text(yaml.safe_dump(lock))
    return run.info.run_id


def aliases(client, model_name: str) -> dict[str, str]:
    model = client.get_registered_model(model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_provenance_hashes_are_the_train_stages_data_dependencies(tmp_path):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    hashes = registry.data_hashes(tmp_path / "dvc.lock")
    assert hashes == {"data/manifest": MANIFEST_MD5, "data/objects": "33333333333333333333333333333333.dir",
                      "data/raw/demo": "44444444444444444444444444444444.dir"}
    assert registry.data_hashes(tmp_path / "missing.lock") == {}


def test_first_model_becomes_champion_with_tags_and_both_aliases(tmp_path, store, model_name):
    run_id = trained_and_evaluated(tmp_path, 0.60)
    (tmp_path / "data/objects/train").mkdir(parents=True)
    (tmp_path / "data/objects/train/meta.json").write_text(json.dumps({"weights": {"source": "random", "seed": 0}}))

    result = registry.register_and_promote(tmp_path, model_name, 0.005)

    decision = result.decision
    assert decision.promote and decision.applied and decision.champion is None and decision.delta is None
    client = registry.client_for(store)
    assert aliases(client, model_name) == {"champion": "1", "challenger": "1"}
    version = client.get_model_version(model_name, "1")
    assert version.run_id == run_id
    assert version.tags["data_version"] == TEST_DATA  # the evaluation's test_data_version
    assert version.tags["data_md5.data/manifest"] == MANIFEST_MD5
    assert version.tags["git_commit"] == "abc123" and version.tags["params_hash"] == "hash0.6"
    assert float(version.tags["metric.mAP"]) == 0.60 and float(version.tags["metric.baseline_mAP"]) == 0.3
    assert version.tags["primary_metric"] == "mAP"
    # predict rebuilds object features from this record, wherever the model is loaded
    meta = Path(client.download_artifacts(run_id, registry.OBJECTS_META_ARTIFACT, str(tmp_path / "dl")))
    assert json.loads(meta.read_text())["weights"] == {"source": "random", "seed": 0}
    # the registered model is the run's logged model, loadable by alias
    import mlflow
    import torch

    mlflow.set_tracking_uri(store)
    loaded = mlflow.pytorch.load_model(f"models:/{model_name}@champion")
    assert isinstance(loaded, torch.nn.Linear)


def test_a_pickled_model_registered_by_an_older_ctxemo_is_refused_in_one_line(tmp_path, store, model_name,
                                                                            monkeypatch):
    import torch

    from pipelines import predict

    trained_and_evaluated(tmp_path, 0.60)
    registry.register_and_promote(tmp_path, model_name, 0.005)

    def never(*args, **kwargs):
        raise AssertionError("nothing of a refused model is unpickled")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(UserError) as refused:
        predict.load_model(f"models:/{model_name}@champion", tmp_path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"models:/{model_name}@champion: not a ctxemo pyfunc model")
    assert "pytorch" in message and "ctxemo promote" in message


def test_gate_promotes_a_better_model_and_keeps_the_champion_for_a_worse_one(tmp_path, store, model_name):
    client = registry.client_for(store)
    trained_and_evaluated(tmp_path / "a", 0.60)
    registry.register_and_promote(tmp_path / "a", model_name, 0.005)

    trained_and_evaluated(tmp_path / "b", 0.61)
    better = registry.register_and_promote(tmp_path / "b", model_name, 0.005).decision
    assert better.promote and better.applied
    assert better.delta == pytest.approx(0.01) and better.champion.version == "1"
    assert better.basis == f"recorded test metrics on the same test data {TEST_DATA}"
    assert aliases(client, model_name) == {"champion": "2", "challenger": "2"}
    assert client.get_model_version(model_name, "2").tags["promoted_over"] == "1"

    trained_and_evaluated(tmp_path / "c", 0.614)           # +0.004: below the 0.005 minimum
    small = registry.register_and_promote(tmp_path / "c", model_name, 0.005).decision
    assert not small.promote and not small.applied and small.delta == pytest.approx(0.004)
    trained_and_evaluated(tmp_path / "d", 0.50)            # worse
    worse = registry.register_and_promote(tmp_path / "d", model_name, 0.005).decision
    assert not worse.promote and worse.delta == pytest.approx(-0.11)
    assert aliases(client, model_name) == {"champion": "2", "challenger": "4"}
    assert "KEEP CHAMPION" in worse.explain()
    # an already registered version can be gated again (`ctxemo promote --version 3`)
    regated = registry.gate_version(model_name, "3", 0.003, dry_run=True, workspace=tmp_path / "c")
    assert regated.promote and regated.delta == pytest.approx(0.004) and not regated.applied

    # the same model again: no second version, and it is not "promoted over itself"
    again = registry.register_and_promote(tmp_path / "b", model_name, 0.005)
    assert again.registered_version == "2" and not again.decision.promote
    assert again.decision.reason == "version 2 is already champion"
    assert len(client.search_model_versions(f"name='{model_name}'")) == 4


def test_dry_run_decides_without_registering_or_moving_aliases(tmp_path, store, model_name):
    client = registry.client_for(store)
    trained_and_evaluated(tmp_path / "a", 0.60)
    registry.register_and_promote(tmp_path / "a", model_name, 0.005)
    trained_and_evaluated(tmp_path / "b", 0.70)

    result = registry.register_and_promote(tmp_path / "b", model_name, 0.005, dry_run=True)

    assert result.decision.promote and not result.decision.applied and result.registered_version is None
    assert len(client.search_model_versions(f"name='{model_name}'")) == 1
    assert aliases(client, model_name) == {"champion": "1", "challenger": "1"}
    text = result.decision.explain()
    for expected in ("test mAP = 0.7000", "test mAP = 0.6000", "delta:      +0.1000", ">= +0.0050",
                     "PROMOTE (not applied: dry run)"):
        assert expected in text


@pytest.mark.parametrize("breakage, message", [
    ("no_evaluation", "the run has no test_mAP"),
    ("other_metrics", "differs from the run's evaluation/metrics.json"),
    ("no_metrics_file", "evaluate the model first"),
])
def test_a_model_without_a_fresh_evaluation_is_never_registered(tmp_path, store, breakage, message, model_name):
    client = registry.client_for(store)
    trained_and_evaluated(tmp_path / "a", 0.60)
    registry.register_and_promote(tmp_path / "a", model_name, 0.005)
    ws = tmp_path / "b"
    if breakage == "no_evaluation":          # the evaluate stage failed for the new model
        trained_and_evaluated(ws, 0.90, log_evaluation=False)
    elif breakage == "other_metrics":        # metrics.json left over from another model
        trained_and_evaluated(ws, 0.90, metrics_override={"mAP": 0.95})
    else:
        trained_and_evaluated(ws, 0.90)
        (ws / "reports/metrics.json").unlink()

    with pytest.raises(UserError, match=message):
        registry.register_and_promote(ws, model_name, 0.005)
    assert len(client.search_model_versions(f"name='{model_name}'")) == 1
    assert aliases(client, model_name) == {"champion": "1", "challenger": "1"}


def test_different_data_versions_are_not_compared_on_recorded_metrics(tmp_path, store, model_name):
    client = registry.client_for(store)
    trained_and_evaluated(tmp_path / "a", 0.60)
    registry.register_and_promote(tmp_path / "a", model_name, 0.005)
    trained_and_evaluated(tmp_path / "b", 0.90, test_data="feedfeedfeedfeed")  # dvc.lock unchanged
    model = registry.evaluated_model(Workspace.at(tmp_path / "b"), client)
    version = registry.register(client, model_name, model)
    challenger = registry.candidate_of(client, version)

    with pytest.raises(UserError, match="do not compare.*re-scored on the current test split"):
        registry.decide(client, model_name, challenger, "mAP", 0.005, layout=None)
    assert aliases(client, model_name)["champion"] == "1"


def test_promote_command_explains_the_decision(tmp_path, store, monkeypatch, repo_params_dict, model_name):
    from typer.testing import CliRunner

    from pipelines.cli import app

    trained_and_evaluated(tmp_path, 0.60)
    params = {**repo_params_dict, "registry": {"model_name": model_name, "min_improvement": 0.02}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    dry = runner.invoke(app, ["promote", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "champion:   none yet" in dry.output and "PROMOTE (not applied: dry run)" in dry.output
    client = registry.client_for(store)
    assert client.search_registered_models(filter_string=f"name='{model_name}'") == []

    done = runner.invoke(app, ["promote"])
    assert done.exit_code == 0, done.output
    assert "PROMOTE (applied)" in done.output and aliases(client, model_name) == {"champion": "1", "challenger": "1"}

    trained_and_evaluated(tmp_path, 0.61)      # +0.01 < 0.02 from params.yaml
    kept = runner.invoke(app, ["promote"])
    assert kept.exit_code == 0, kept.output
    assert "test mAP = 0.6100" in kept.output and "test mAP = 0.6000" in kept.output
    assert "delta:      +0.0100   required: >= +0.0200" in kept.output and "KEEP CHAMPION" in kept.output
    assert aliases(client, model_name) == {"champion": "1", "challenger": "2"}

    (tmp_path / "reports/metrics.json").unlink()
    failed = runner.invoke(app, ["promote"])
    assert failed.exit_code == 2 and "evaluate the model first" in failed.output
