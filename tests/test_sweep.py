"""The Ray Tune sweep (pipelines/sweep/) and its frozen-backbone body cache (core/training/body_cache.py)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core import faults
from core.errors import UserError
from core.params import apply_overrides, params_from_dict
from core.training import body_cache
from pipelines import sweep

PAPER_PATHS = {"model.rrla.boa.heads", "model.rrla.eld.p", "model.rrla.eld.t", "model.rrla.boa.dim",
               "model.rrla.boa.max_objects", "train.lr"}
# The paper's space at tiny sizes: heads x 2048 x 2048 weights would make 32-head trials slow.
TINY_SPACE = {
    "model.rrla.boa.heads": {"choice": [1, 2, 4]}, "model.rrla.eld.p": {"uniform": [0.0, 1.0]},
    "model.rrla.eld.t": {"uniform": [0.05, 0.5]}, "model.rrla.boa.dim": {"choice": [8, 16]},
    "model.rrla.boa.max_objects": {"choice": [2, 4]}, "train.lr": {"loguniform": [0.001, 0.1]},
}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CTXEMO_MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    return uri


def _tiny_sweep_params(workspace, **tune_overrides) -> dict:
    data = copy.deepcopy(workspace.params_dict)
    data["tune"] = {**data["tune"], "space": {"rrla": copy.deepcopy(TINY_SPACE)}, **tune_overrides}
    return data


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        out.update(_flatten(value, path) if isinstance(value, dict) else {path: value})
    return out


# --------------------------------------------------------------------------- the space


def test_space_from_params_yaml_is_exactly_the_papers_paths_each_a_typed_field(repo_params_dict):
    from ray.tune.search.sample import Categorical, Float

    params = params_from_dict(repo_params_dict)
    space = sweep.build_space(params)
    assert set(space) == PAPER_PATHS

    for path, domain in space.items():
        section, *rest = path.split(".")
        node = getattr(params, section)
        for key in rest:
            node = getattr(node, key)  # the path is a field of the typed config
        spec = repo_params_dict["tune"]["space"]["rrla"][path]
        (kind, args), = spec.items()
        if kind == "choice":
            assert isinstance(domain, Categorical) and list(domain.categories) == args
        else:
            assert isinstance(domain, Float) and (domain.lower, domain.upper) == tuple(args)
            assert type(domain.sampler).__name__ == ("_LogUniform" if kind == "loguniform" else "_Uniform")
    # no default is repeated in the space: the defaults still live in their own sections
    assert repo_params_dict["model"]["rrla"]["boa"]["heads"] == params.model.rrla.boa.heads


@pytest.mark.parametrize("path, spec, message", [
    ("model.rrla.boa.headz", {"choice": [4]}, r"model\.rrla\.boa has no 'headz'"),
    ("model.rrla.boa", {"choice": [4]}, "whole section"),
    ("model.rrla", {"choice": [4]}, "whole section"),
    ("model.boa.heads", {"choice": [4]}, r"'model\.boa\.heads'.*model\.rrla\.\*"),  # the pre-family path
    ("model.kosti.fusion_dim", {"choice": [8, 16]}, r"not a setting of the model the sweep trains \(model\.name: rrla\)"),
    ("objects.top_n", {"choice": [10, 50]}, r"model\.rrla\.boa\.max_objects"),
    ("model.rrla.views.body.size", {"choice": [112, 224]}, "cached body maps"),
    ("model.rrla.backbone.name", {"choice": ["resnet18", "resnet50"]}, "cached body maps"),
    ("model.rrla.person_view", {"choice": ["body", "face"]}, "cached body maps"),
    ("train.epochs", {"choice": [2, 4]}, "tune.max_epochs"),
    ("model.rrla.eld.p", {"normal": [0, 1]}, "unknown distribution 'normal'"),
    ("train.lr", {"loguniform": [0.0, 0.1]}, "low > 0"),
    ("model.rrla.eld.t", {"uniform": [0.5, 0.1]}, "low < high"),
])
def test_space_errors_name_the_bad_entry(repo_params_dict, path, spec, message):
    data = copy.deepcopy(repo_params_dict)
    data["tune"]["space"] = {"rrla": {path: spec}}
    with pytest.raises(UserError, match=message):
        sweep.build_space(params_from_dict(data))


def test_a_view_size_is_searchable_when_the_backbone_is_not_frozen(repo_params_dict):
    # the crop size (model.rrla.views.body.size, formerly model.backbone.input_size) changes the cached
    # maps only: without tune.frozen_backbone it is a params path like any other
    data = copy.deepcopy(repo_params_dict)
    data["tune"]["frozen_backbone"] = False
    data["tune"]["space"] = {"rrla": {"model.rrla.views.body.size": {"choice": [112, 224]}}}
    space = sweep.build_space(params_from_dict(data))
    assert list(space) == ["model.rrla.views.body.size"] and list(space["model.rrla.views.body.size"].categories) == [
        112, 224]
    data["tune"]["space"] = {"rrla": {"model.rrla.views.body.sise": {"choice": [112, 224]}}}
    with pytest.raises(UserError, match="is not a params path"):
        sweep.build_space(params_from_dict(data))


def test_a_train_value_the_model_sets_itself_is_refused(repo_params_dict):
    # model.kosti.train sets lr, which wins over the train section: searching train.lr would change nothing
    data = copy.deepcopy(repo_params_dict)
    data["model"]["name"] = "kosti"
    assert "lr" in data["model"]["kosti"]["train"]
    data["tune"]["space"] = {"kosti": {"train.lr": {"loguniform": [0.001, 0.1]}}}
    with pytest.raises(UserError, match=r"'train\.lr' is set by model\.kosti\.train"):
        sweep.build_space(params_from_dict(data))
    data["tune"]["space"] = {"kosti": {"train.weight_decay": {"loguniform": [1e-5, 1e-3]}}}  # not one of kosti's
    assert set(sweep.build_space(params_from_dict(data))) == {"train.weight_decay"}


def test_the_sweep_searches_the_space_of_model_name_and_says_when_it_has_none(repo_params_dict):
    data = copy.deepcopy(repo_params_dict)
    data["tune"]["space"] = {"rrla": {"model.rrla.eld.p": {"uniform": [0.0, 1.0]}},
                             "caernet": {"model.caernet.dropout": {"uniform": [0.0, 0.5]}}}
    assert list(sweep.build_space(params_from_dict(data))) == ["model.rrla.eld.p"]
    data["model"]["name"] = "caernet"
    assert list(sweep.build_space(params_from_dict(data))) == ["model.caernet.dropout"]
    data["model"]["name"] = "kosti"
    with pytest.raises(UserError, match=r"no space for model 'kosti'.*add tune\.space\.kosti"):
        sweep.build_space(params_from_dict(data))
    data["tune"]["space"] = {"model.rrla.eld.p": {"uniform": [0.0, 1.0]}}  # the flat form of before
    with pytest.raises(UserError, match="must map each model name to its space"):
        sweep.build_space(params_from_dict(data))


def test_object_counts_beyond_the_stored_top_n_are_refused(tiny_workspace):
    data = _tiny_sweep_params(tiny_workspace)
    data["tune"]["space"]["rrla"]["model.rrla.boa.max_objects"] = {"choice": [2, 10]}  # the tiny store keeps 4
    with pytest.raises(UserError, match=r"offers \[10\] but the objects stage stored only 4"):
        sweep.check_object_prefix(params_from_dict(data), tiny_workspace.data / "objects")


# --------------------------------------------------------------------------- the body cache


def test_two_builders_of_the_same_cache_at_once_both_finish_with_the_same_maps(tiny_workspace, tmp_path):
    """An ablation and a sweep (or two sweeps) may build one fingerprint at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)
    paths = tiny_workspace.train_paths("cache-race").resolved()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(body_cache.run, tiny_workspace.params, paths, cache_root=tmp_path / "cache",
                               dtype="float32", log=lambda _: None) for _ in range(2)]
        summaries = [f.result() for f in futures]
    assert summaries[0]["dir"] == summaries[1]["dir"]
    folder = Path(summaries[0]["dir"])
    assert sorted(p.name for p in folder.iterdir()) == ["fingerprint.json", "train.body.npy", "train.json",
                                                         "val.body.npy", "val.json"]  # no partial file left
    again = body_cache.run(tiny_workspace.params, paths, cache_root=tmp_path / "cache", dtype="float32",
                           log=lambda _: None)
    assert again["built"] == [] and again["reused"] == ["train", "val"]


def test_cached_body_maps_equal_the_trial_models_backbone_on_the_crop(tiny_workspace, tmp_path):
    from core.data.dataset import body_tensor, open_rgb
    from core.data.manifest import read_manifest
    from core.training.inputs import worker_config
    from core.training.loop import EpochLoop

    torch.set_num_threads(1)
    params = tiny_workspace.params
    paths = tiny_workspace.train_paths("cache").resolved()
    summary = body_cache.run(params, paths, cache_root=tmp_path / "cache", dtype="float32", log=lambda _: None)
    assert summary["built"] == ["train", "val"] and summary["keys"] == ["body"] and summary["decoded"] == []
    cached = np.load(Path(summary["dir"]) / "val.body.npy", mmap_mode="r")
    manifest = read_manifest("val", paths.manifest_dir)
    assert cached.shape == (len(manifest), 512, 1, 1)  # resnet18 at 32 px: [C=512, 1, 1]

    # the model a trial trains, with the cache switched on
    config = {**worker_config(params, paths), "body_cache": summary["dir"]}
    loop = EpochLoop(config)
    model = loop.model.eval()
    row = 1
    crop = body_tensor(open_rgb(paths.data_root / manifest["image_path"][row]), manifest["person_box"][row],
                       params.model.rrla.views["body"].size)
    with torch.no_grad():
        direct = model.backbone(crop[None])[0].numpy()
    np.testing.assert_allclose(cached[row], direct, rtol=1e-5, atol=1e-5)

    # feature-map mode gives the same scores as running the backbone on the crop
    item = loop.val_set[row]
    assert model.person_view == "body"
    assert torch.equal(item["body"], torch.from_numpy(np.array(cached[row])))
    objects = {k: item[k][None] for k in ("obj_feats", "obj_boxes", "obj_mask", "person_box")}
    with torch.no_grad():
        from_map = model({"body": item["body"][None], **objects}).logits
        model.set_body_input("image")
        from_crop = model({"body": crop[None], **objects}).logits
        model.set_body_input("feature_map")
    torch.testing.assert_close(from_map, from_crop, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"backbone map \[B,512,h,w\]"):
        model({"body": crop[None], **objects})  # a crop where a map is expected is refused, not misread

    # the backbone is frozen: not optimised, unchanged by an epoch, while BPA learns
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    bpa_before = {k: v.clone() for k, v in model.bpa.state_dict().items()}
    optimised = {id(p) for group in loop.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in model.backbone.parameters())
    record = loop.run_epoch(0)
    assert 0.0 <= record["val_metric"] <= 1.0
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert any(not torch.equal(v, model.bpa.state_dict()[k]) for k, v in bpa_before.items())

    # same inputs: reused; a different view size or normalisation: a different folder
    again = body_cache.run(params, paths, cache_root=tmp_path / "cache", dtype="float32", log=lambda _: None)
    assert again["reused"] == ["train", "val"] and again["built"] == [] and again["dir"] == summary["dir"]
    for change in ({"model.rrla.views.body.size": 64}, {"model.rrla.views.body.norm": "unit"}):
        changed = params_from_dict(apply_overrides(tiny_workspace.params_dict, change))
        other = body_cache.fingerprint(body_cache.fingerprint_inputs(changed, paths.manifest_dir, paths.data_root,
                                                                      "float32"))
        assert other != summary["fingerprint"], change
    # the face view's settings are not the cached view's on EMOTIC: the same folder
    face = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"model.rrla.views.face.size": 64}))
    assert body_cache.fingerprint(body_cache.fingerprint_inputs(face, paths.manifest_dir, paths.data_root,
                                                                "float32")) == summary["fingerprint"]

    # the default float16 store holds the same maps to half precision
    half = body_cache.run(params, paths, cache_root=tmp_path / "cache", splits=("val",), log=lambda _: None)
    np.testing.assert_allclose(np.load(Path(half["dir"]) / "val.body.npy")[row].astype(np.float32), direct,
                               rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- sweeps on Ray


def test_four_trial_asha_sweep_tracks_children_survives_a_crash_and_writes_adoptable_params(
        tiny_workspace, ray_local, mlflow_store, tmp_path, repo_params_dict):
    import mlflow

    data = _tiny_sweep_params(tiny_workspace, num_samples=4, max_epochs=3, grace_period=1)
    # the first trial to finish an epoch crashes after every epoch it reports, retried or not
    crash = faults.Fault("sweep.trial_epoch", action="raise", times=None, stick_to="trial_id")
    with faults.inject(crash) as injected:
        result = sweep.run(data, tiny_workspace.train_paths("sweep"), report_dir=tmp_path / "reports",
                           cache_root=tmp_path / "cache", log=lambda _: None)
    crashed_trial = injected.fired()[0]["trial_id"]

    assert result["interrupted"] is False and result["scheduler"]["name"] == "ASHA"
    rows = result["rows"]
    assert len(rows) == 4 and {r["trial_id"] for r in rows} >= {crashed_trial}
    crashed = [r for r in rows if r["status"] == "error"]
    assert [r["trial_id"] for r in crashed] == [crashed_trial]
    assert "injected fault at sweep.trial_epoch" in crashed[0]["error"] and crashed[0]["epochs_run"] == 1
    for row in rows:
        assert 1 <= row["epochs_run"] <= 3 and 0.0 <= row["best_val_metric"] <= 1.0
        if row["status"] != "error":  # ASHA's stops are exactly the unfinished, uncrashed trials
            assert row["stopped_early"] == (row["epochs_run"] < 3)
            assert row["status"] == ("stopped early" if row["epochs_run"] < 3 else "completed")
    assert result["trials"] == {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped early", "error")}

    # the winner: the best uncrashed trial, written in params.yaml's shape and accepted by it
    healthy = [r for r in rows if r["status"] != "error"]
    winner = max(healthy, key=lambda r: r["best_val_metric"])
    best = yaml.safe_load((tmp_path / "reports" / "best_params.yaml").read_text())
    flat = _flatten(best)
    assert set(flat) == PAPER_PATHS and flat == {p: winner[p] for p in PAPER_PATHS}
    assert isinstance(flat["model.rrla.boa.heads"], int) and isinstance(flat["model.rrla.eld.p"], float)
    adopted = params_from_dict(apply_overrides(repo_params_dict, flat))
    assert adopted.model.rrla.boa.heads == winner["model.rrla.boa.heads"] and adopted.train.lr == winner["train.lr"]
    assert result["adopt"].startswith("dvc exp run -S model.name=rrla -S ")
    assert result["adopt"].count(" -S ") == len(PAPER_PATHS) + 1

    table = json.loads((tmp_path / "reports" / "sweep.json").read_text())
    assert table["rows"] == rows and table["best"]["trial_id"] == winner["trial_id"]
    markdown = (tmp_path / "reports" / "sweep.md").read_text()
    assert all(r["trial_id"] in markdown for r in rows) and "injected fault at sweep.trial_epoch" in markdown
    for path in PAPER_PATHS:
        png = tmp_path / "reports" / "sweep_plots" / f"sweep_{path.replace('.', '_')}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # finished trials gave their checkpoints back; only the crashed one keeps its own (for --resume)
    left = sorted(p.parent.name for p in Path(result["experiment_path"]).glob("trial_*/checkpoint_*"))
    assert left == [f"trial_{crashed[0]['trial_id']}"]

    # MLflow: one parent, one child per trial with its values and one val_metric per epoch run
    client = mlflow.MlflowClient(mlflow_store)
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["ctxemo.stage"] == "sweep"
    assert parent.data.metrics["best_val_map"] == pytest.approx(winner["best_val_metric"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_trial = {c.data.tags["ctxemo.trial_id"]: c for c in children}
    assert set(by_trial) == {r["trial_id"] for r in rows}
    for row in rows:
        child = by_trial[row["trial_id"]]
        assert child.info.status == ("FAILED" if row["status"] == "error" else "FINISHED")
        assert {p: child.data.params[p] for p in PAPER_PATHS} == {p: str(row[p]) for p in PAPER_PATHS}
        history = client.get_metric_history(child.info.run_id, "val_metric")
        assert sorted(m.step for m in history) == list(range(row["epochs_run"]))
        assert max(m.value for m in history) == pytest.approx(row["best_val_metric"])
        if row["status"] != "error":
            assert child.data.tags["ctxemo.stopped_early"] == str(row["stopped_early"]).lower()


# After a resume the re-run epoch reports its step to Optuna a second time; Optuna keeps the first.
@pytest.mark.filterwarnings("ignore:The reported value is ignored:UserWarning")
def test_an_interrupted_sweep_resumes_its_trials_from_their_checkpoints(
        tiny_workspace, ray_local, mlflow_store, tmp_path):
    import mlflow
    import pandas as pd
    from ray import tune

    # grace = max_epochs: ASHA stops nobody, so every trial must reach epoch 3
    data = _tiny_sweep_params(tiny_workspace, num_samples=2, max_epochs=3, grace_period=3)
    paths = tiny_workspace.train_paths("resume")
    # the driver is stopped (SIGUSR1: Tune saves the experiment and stops, like Ctrl-C) once, when a
    # trial reports epoch 1
    interrupt = faults.Fault("sweep.trial_result", when={"epoch": 1}, action="signal", signal="SIGUSR1")
    with faults.inject(interrupt) as injected:
        first = sweep.run(data, paths, report_dir=tmp_path / "reports", cache_root=tmp_path / "cache",
                          log=lambda _: None)
    assert first["interrupted"] is True and len(injected.fired()) == 1
    interrupted_trial = injected.fired()[0]["trial_id"]
    assert not (tmp_path / "reports" / "best_params.yaml").exists()
    assert tune.Tuner.can_restore(first["experiment_path"])

    resumed = sweep.run(data, paths, resume=True, log=lambda _: None)
    assert resumed["interrupted"] is False and resumed["name"] == first["name"]
    rows = resumed["rows"]
    assert len(rows) == 2 and all(r["status"] == "completed" and r["epochs_run"] == 3 for r in rows)
    assert (tmp_path / "reports" / "best_params.yaml").is_file()

    # The trial that reported epoch 1 when the driver stopped had its epoch-0 checkpoint
    # registered: it went on from there in a new process instead of starting again.
    progress = pd.read_csv(Path(first["experiment_path"]) / f"trial_{interrupted_trial}" / "progress.csv")
    assert progress["pid"].nunique() == 2
    assert list(progress["epoch"]).count(0) == 1 and sorted(set(progress["epoch"])) == [0, 1, 2]
    last = progress.iloc[-1]
    assert last["training_iteration"] == 3 and last["iterations_since_restore"] < 3

    client = mlflow.MlflowClient(mlflow_store)
    parent = client.get_run(resumed["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)  # resumed, not duplicated
    for child in children:
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_metric")}
        assert steps == {0, 1, 2}


def test_resume_without_a_previous_sweep_is_a_clear_error(tiny_workspace, tmp_path):
    paths = tiny_workspace.train_paths("none")
    paths = type(paths)(**{**paths.__dict__, "ray_storage": tmp_path / "empty"})
    with pytest.raises(UserError, match="nothing to resume"):
        sweep.run(tiny_workspace.params_dict, paths, resume=True)


def test_the_paper_column_reads_configs_paper_emotic_yaml(tmp_path):
    from support import REPO

    from pipelines.sweep.reports import paper_values

    paths = ["model.rrla.boa.heads", "model.rrla.eld.p", "model.rrla.boa.max_objects", "train.lr",
             "model.rrla.boa.geometry_dim"]
    paper = yaml.safe_load((REPO / "configs" / "paper-emotic.yaml").read_text())
    rrla = paper["model"]["rrla"]
    expected = {"model.rrla.boa.heads": rrla["boa"]["heads"], "model.rrla.eld.p": rrla["eld"]["p"],
                "model.rrla.boa.max_objects": paper["objects"]["top_n"], "train.lr": paper["train"]["lr"]}
    assert paper_values(paths) == expected == {"model.rrla.boa.heads": 16, "model.rrla.eld.p": 0.2,
                                               "model.rrla.boa.max_objects": 50, "train.lr": 0.01}
    other = tmp_path / "other.yaml"
    other.write_text("model: {rrla: {boa: {heads: 4, max_objects: 7}}}\n")
    assert paper_values(paths, other) == {"model.rrla.boa.heads": 4, "model.rrla.boa.max_objects": 7}


def test_a_sweep_trains_whichever_model_params_name(tiny_workspace, ray_local, tmp_path):
    """model.name dagnet: the trials search DAG-Net's partition N with its own lr (model.dagnet.train.lr)
    on its frozen trunks' cached outputs, one cache for every N."""
    data = copy.deepcopy(tiny_workspace.params_dict)
    data["model"]["name"] = "dagnet"
    space = {"model.dagnet.lsam.n": {"choice": [1, 2]}, "model.dagnet.train.lr": {"loguniform": [1e-4, 1e-3]}}
    data["tune"] = {**data["tune"], "space": {"dagnet": space}, "num_samples": 2, "max_epochs": 1, "grace_period": 1,
                    "searcher": "random", "frozen_backbone": True}
    logged: list[str] = []
    result = sweep.run(data, tiny_workspace.train_paths("sweep-dagnet"), report_dir=tmp_path / "reports",
                       cache_root=tmp_path / "cache", log=logged.append, track=False)
    assert any("[sweep] body cache" in line and "still decoded per step: ['body', 'patches']" in line
               for line in logged)
    rows = result["rows"]
    assert len(rows) == 2 and all(r["status"] == "completed" and 0.0 <= r["best_val_metric"] <= 1.0 for r in rows)
    assert {r["model.dagnet.lsam.n"] for r in rows} <= {1, 2}
    assert all(1e-4 <= r["model.dagnet.train.lr"] <= 1e-3 for r in rows)
    best = yaml.safe_load((tmp_path / "reports" / "best_params.yaml").read_text())
    assert set(_flatten(best)) == set(space)
    adopted = params_from_dict(apply_overrides(data, _flatten(best))).for_model()
    assert adopted.model.dagnet.lsam.n in (1, 2) and adopted.train.lr == best["model"]["dagnet"]["train"]["lr"]
    assert json.loads((tmp_path / "reports" / "sweep.json").read_text())["frozen_backbone"] is True
    assert len(list((tmp_path / "cache").glob("*/train.body_trunk.npy"))) == 1


def test_the_cli_sweeps_the_model_it_is_given_and_refuses_an_unknown_one(tmp_path, repo_params_dict):
    from typer.testing import CliRunner

    from pipelines.cli import app

    params_file = tmp_path / "params.yaml"
    data = copy.deepcopy(repo_params_dict)
    data["tune"]["space"] = {"rrla": data["tune"]["space"]["rrla"]}  # no space for DAG-Net
    params_file.write_text(yaml.safe_dump(data))
    unknown = CliRunner().invoke(app, ["sweep", "--model", "nope", "--params", str(params_file)])
    assert unknown.exit_code != 0 and "unknown model 'nope'" in unknown.output
    no_space = CliRunner().invoke(app, ["sweep", "--model", "dagnet", "--params", str(params_file)])
    assert no_space.exit_code != 0 and "add tune.space.dagnet" in no_space.output
    both = CliRunner().invoke(app, ["sweep", "--model", "dagnet", "--resume", "--params", str(params_file)])
    assert both.exit_code != 0 and "drop --model" in both.output
