"""The DVC graph: stages, dependencies and params as dvc.yaml declares them, and real repro.

The repro test runs the real dvc.yaml on a copy of the project with tiny params: every
stage runs once, a second `dvc repro` does nothing, and a hyperparameter change of the
trained model (model.rrla) makes train (and through its output, evaluate) and that model's
compare branch stale and nothing upstream; a change of another model's section only its
compare branch.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO  # noqa: E402

from core.params import read_yaml

PIPELINE = ["ingest", "detect", "objects", "cooccurrence", "embeddings", "train", "evaluate"]
INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


def _lookup(tree, dotted: str):
    node = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"${{{dotted}}}: {part!r} is not in params.yaml"
        node = node[part]
    return node


def _resolve(text: str, params: dict, item: dict) -> str:
    """dvc.yaml's ${...}: a params.yaml value, or ${item.<key>} of a matrix stage."""
    def value(match):
        key = match.group(1)
        return str(item[key[len("item."):]] if key.startswith("item.") else _lookup(params, key))

    return INTERPOLATION.sub(value, text)


def expanded_stages(spec: dict, params: dict):
    """(name as DVC names it, stage name in dvc.yaml, stage, matrix item) for every stage DVC runs."""
    for name, stage in spec["stages"].items():
        matrix = stage.get("matrix")
        if matrix is None:
            yield name, name, stage, {}
            continue
        axes = {key: _lookup(params, values[2:-1]) if isinstance(values, str) else values
                for key, values in matrix.items()}
        for combo in itertools.product(*axes.values()):
            item = dict(zip(axes, combo))
            yield f"{name}@{'-'.join(map(str, combo))}", name, stage, item


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
                                 ("embeddings", "train"), ("detect", "train"), ("train", "evaluate")]:
        assert f'"{upstream}" -> "{downstream}"' in edges, (upstream, downstream)
    # the comparison: one branch per compare.models entry, each fed by the data stages
    for model in read_yaml(REPO / "params.yaml")["compare"]["models"]:
        for upstream in ("objects", "detect", "cooccurrence", "embeddings"):
            assert f'"{upstream}" -> "compare@{model}"' in edges, (upstream, model)
        assert f'"compare@{model}" -> "compare_report"' in edges, model


def test_every_declared_dependency_and_param_exists():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = read_yaml(REPO / "params.yaml")
    names = []
    for name, base, stage, item in expanded_stages(spec, params):
        names.append(name)
        assert _resolve(stage["cmd"], params, item) == " ".join([f"python -m stages.{base}", *map(str, item.values())])
        for dep in stage["deps"]:
            dep = _resolve(dep, params, item)
            if dep.startswith(("stages/", "core/", "models")):
                assert (REPO / dep).exists(), f"{name}: {dep} does not exist"
        for key in stage.get("params", []):
            _lookup(params, _resolve(key, params, item))
    assert [f"compare@{m}" for m in params["compare"]["models"]] == [n for n in names if n.startswith("compare@")]
    # train and each compare branch read only their own model's section (plus model.name for train)
    train_params = [_resolve(k, params, {}) for k in spec["stages"]["train"]["params"]]
    assert f"model.{params['model']['name']}" in train_params and "model" not in train_params
    for model in params["compare"]["models"]:
        branch = [_resolve(k, params, {"model": model}) for k in spec["stages"]["compare"]["params"]]
        assert f"model.{model}" in branch and not [k for k in branch if k.startswith("model.") and k != f"model.{model}"]
    # code a stage imports is a dependency of that stage
    assert "models" in spec["stages"]["train"]["deps"] and "core/evaluation" in spec["stages"]["evaluate"]["deps"]
    assert "models" in spec["stages"]["compare"]["deps"] and "core/data/person_inputs.py" in spec["stages"]["train"]["deps"]


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
    models = yaml.safe_load((root / "params.yaml").read_text())["compare"]["models"]
    for stage in [*PIPELINE, "people", *(f"compare@{m}" for m in models), "compare_report"]:
        assert f"Running stage '{stage}'" in first.stdout, stage
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["task"] == "multilabel"
    assert "reports/metrics.json" in dvc("metrics", "show", "--json", cwd=root).stdout

    second = dvc("repro", cwd=root)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["model"]["name"] == "rrla"
    heads = params["model"]["rrla"]["boa"]["heads"]
    assert heads != 4
    params["model"]["rrla"]["boa"]["heads"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc("status", "--json", cwd=root).stdout)
    # only the params of the trained model (and its compare branch) changed; evaluate then reruns
    # because its dep artifacts/model does
    assert set(stale) == {"train", "compare@rrla"}
    # train depends on the whole `model.rrla` section, so DVC names the section, not the key
    assert stale["train"] == [{"changed deps": {"params.yaml": {"model.rrla": "modified"}}}]
    assert stale["compare@rrla"] == [{"changed deps": {"params.yaml": {"model.rrla": "modified"}}}]
    assert "artifacts/model" in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["evaluate"]["deps"]

    # another model's section is read by its compare branch only (the locked rrla value restored)
    params["model"]["rrla"]["boa"]["heads"] = heads
    params["model"]["kosti"]["fusion_dim"] = params["model"]["kosti"]["fusion_dim"] + 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc("status", "--json", cwd=root).stdout)
    assert stale == {"compare@kosti": [{"changed deps": {"params.yaml": {"model.kosti": "modified"}}}]}


def test_scheduling_settings_are_not_dvc_params_and_every_other_key_is():
    from core.params import SCHEDULING_KEYS

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = read_yaml(REPO / "params.yaml")
    readers = {"detect": ["detect"], "objects": ["objects"], "people": ["people"], "train": ["train", "compare"]}
    for section, stages in readers.items():
        for stage in stages:
            tracked = set(spec["stages"][stage]["params"])
            assert section not in tracked, f"{stage} tracks the whole {section} section"
            for key in params[section]:
                dotted = f"{section}.{key}"
                assert (dotted in SCHEDULING_KEYS) != (dotted in tracked), (stage, dotted)


def test_a_raw_data_set_can_be_dvc_added_and_only_its_dvc_file_is_tracked(tmp_path):
    """infra/README.md's `dvc add data/raw/<name>`: git must see the .dvc file, and nothing else under data/."""
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)

    assert run("git", "init", "-q").returncode == 0
    assert run(sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    (tmp_path / "data/raw/emotic").mkdir(parents=True)
    (tmp_path / "data/raw/emotic/a.jpg").write_bytes(b"not really a jpeg")
    added = run(sys.executable, "-m", "dvc", "add", "data/raw/emotic")
    assert added.returncode == 0, added.stderr
    ignored = {path: run("git", "check-ignore", "-q", path).returncode == 0 for path in (
        "data/raw/emotic.dvc", "data/raw/.gitignore", "data/raw/emotic/a.jpg", "data/raw/demo/images/synth_00000.jpg",
        "data/manifest/train.parquet", "data/objects/train/features.npy", "data/cache/body/x/train.body.npy")}
    assert ignored == {"data/raw/emotic.dvc": False, "data/raw/.gitignore": False, "data/raw/emotic/a.jpg": True,
                       "data/raw/demo/images/synth_00000.jpg": True, "data/manifest/train.parquet": True,
                       "data/objects/train/features.npy": True, "data/cache/body/x/train.body.npy": True}
    # the repository's .gitignore already keeps the data out, so DVC has no .gitignore of its own to add
    untracked = run("git", "status", "--porcelain", "--untracked-files=all", "data").stdout.split()
    assert untracked == ["??", "data/raw/emotic.dvc"]
