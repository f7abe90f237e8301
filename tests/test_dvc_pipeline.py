"""The DVC graph: stages, dependencies and params as dvc.yaml declares them, and real repro.

The repro test runs the real dvc.yaml on a copy of the project with tiny params: every
stage runs once, a second `dvc repro` does nothing, and a model hyperparameter change
makes train (and through its output, evaluate) stale and nothing upstream.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO  # noqa: E402

from core.params import read_yaml

PIPELINE = ["ingest", "detect", "objects", "cooccurrence", "embeddings", "train", "evaluate"]


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.setdefault("DVC_SITE_CACHE_DIR", str(cwd / ".dvc-site-cache"))
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def test_dvc_dag_has_every_stage_in_order():
    out = dvc("dag", "--md", cwd=REPO).stdout
    for stage in PIPELINE:
        assert stage in out
    edges = dvc("dag", "--dot", cwd=REPO).stdout
    for upstream, downstream in [("ingest", "objects"), ("ingest", "detect"), ("ingest", "cooccurrence"),
                                 ("ingest", "embeddings"), ("objects", "train"), ("cooccurrence", "train"),
                                 ("embeddings", "train"), ("train", "evaluate")]:
        assert f'"{upstream}" -> "{downstream}"' in edges, (upstream, downstream)


def test_every_declared_dependency_and_param_exists():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = read_yaml(REPO / "params.yaml")
    for name, stage in spec["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"
        for dep in stage["deps"]:
            if dep.startswith(("stages/", "core/", "models")):
                assert (REPO / dep).exists(), f"{name}: {dep} does not exist"
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"{name}: params key {key} is not in params.yaml"
                node = node[part]
    # code a stage imports is a dependency of that stage
    assert "models" in spec["stages"]["train"]["deps"] and "core/evaluation" in spec["stages"]["evaluate"]["deps"]


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """The project's dvc.yaml and code in a fresh git+DVC repo, with tiny params and demo data."""
    import tiny_pipeline

    from core.synth import generate

    root = tmp_path_factory.mktemp("dvcrepo")
    for item in ("core", "stages", "models", "dvc.yaml"):
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / item)
    params = tiny_pipeline.tiny_params_dict(root)
    params["data"]["root"] = params["synth"]["out"] = "data/raw/demo"
    params["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate(root / "data/raw/demo", images=params["synth"]["images"], seed=0, fmt="emotic")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc("init", "-q", cwd=root)
    return root


@pytest.mark.slow  # 2-5 min; tests/test_flows.py runs the same dvc.yaml through `dvc repro` in CI
def test_repro_runs_everything_then_nothing_and_a_model_change_touches_only_train_and_evaluate(project_copy):
    root = project_copy
    env_uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = env_uri
    try:
        first = dvc("repro", cwd=root)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    for stage in PIPELINE:
        assert f"Running stage '{stage}'" in first.stdout, stage
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["task"] == "multilabel"
    assert "reports/metrics.json" in dvc("metrics", "show", "--json", cwd=root).stdout

    second = dvc("repro", cwd=root)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["boa"]["heads"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc("status", "--json", cwd=root).stdout)
    # only train's own params changed; evaluate then reruns because its dep artifacts/model does
    assert set(stale) == {"train"}
    # train depends on the whole `model` section, so DVC names the section, not the key
    assert stale["train"] == [{"changed deps": {"params.yaml": {"model": "modified"}}}]
    assert "artifacts/model" in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["evaluate"]["deps"]
