"""Training through Ray Train on the tiny generated workspace: DDP, fault tolerance, MLflow."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from core import faults
from core.data.manifest import read_manifest
from core.params import apply_overrides, params_from_dict
from core.training import loop, trainer
from core.training.inputs import object_feature_stats, worker_config
from core.training.precision import bf16_warning, native_bf16, output_in_fp32
from core.workspace import Workspace

# Rank 0 exits hard after reporting epoch 0, once (like a lost node); Ray restarts the worker group.
KILL_AFTER_FIRST_EPOCH = faults.Fault("train.after_epoch", when={"epoch": 0, "rank": 0}, action="exit")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CTXEMO_MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    return uri


def _history(paths) -> list[dict]:
    return json.loads((Path(paths.train_report_dir) / "history.json").read_text())


def test_two_worker_ddp_run_trains_exports_and_tracks_in_mlflow(tiny_workspace, ray_local, mlflow_store):
    import mlflow

    from models import model_from_checkpoint

    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.num_workers": 2}))
    paths = tiny_workspace.train_paths("ddp")
    summary = trainer.run(params, paths)

    history = _history(paths)
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(np.isfinite(h["train_loss"]) and 0.0 <= h["val_map"] <= 1.0 for h in history)
    assert summary["val_map"] == max(h["val_map"] for h in history)
    assert summary["best_epoch"] == int(np.argmax([h["val_map"] for h in history]))
    # a finished run's Ray checkpoints are gone (the best model is exported and logged)
    assert summary["checkpoints_dropped"] >= 1
    assert not [p for p in Path(paths.ray_storage).glob("train-*/checkpoint_*") if p.is_dir()]

    package = torch.load(Path(paths.model_dir) / "model.pt", weights_only=False)
    assert package["task"] == "multilabel" and len(package["classes"]) == 26
    assert package["spec"]["name"] == "rrla" and summary["model"] == "rrla"
    model = model_from_checkpoint(package["spec"], package["state_dict"])
    assert package["params"]["train"]["channels_last"]  # scored in the layout it trained in, as evaluate does
    model = model.to(memory_format=torch.channels_last)

    client = mlflow.MlflowClient(mlflow_store)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.rrla.boa.heads"] == "2" and run.data.params["train.num_workers"] == "2"
    assert run.data.params["model.name"] == "rrla"
    assert len(client.get_metric_history(run.info.run_id, "val_map")) == 2
    assert run.data.metrics["best_val_map"] == pytest.approx(summary["val_map"])
    assert run.data.tags["ctxemo.stage"] == "train"

    # where the two ranks ran, gathered once at the start of the (only) worker group
    [group] = summary["placement"]
    assert group["from_epoch"] == 0 and [w["rank"] for w in group["workers"]] == [0, 1]
    node_ids = {n["NodeID"] for n in ray.nodes()}
    assert {w["node_id"] for w in group["workers"]} <= node_ids
    assert len({w["pid"] for w in group["workers"]}) == 2

    # the logged model is MLflow's pyfunc model (nothing pickled) and is the exported best checkpoint
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model().loaded.package.model
    generator = torch.Generator().manual_seed(0)
    inputs = {"body": torch.randn(2, 3, 32, 32, generator=generator),
              "obj_feats": torch.randn(2, 4, 2048, generator=generator),
              "obj_boxes": torch.tensor([[[0, 0, 10, 10]] * 4] * 2, dtype=torch.float32),
              "obj_mask": torch.ones(2, 4, dtype=torch.bool),
              "person_box": torch.tensor([[5.0, 5.0, 30.0, 40.0]] * 2)}
    with torch.no_grad():
        assert torch.allclose(logged(inputs).logits, model(inputs).logits, atol=1e-6)


def test_killed_worker_resumes_from_checkpoint_and_matches_an_uninterrupted_run(tiny_workspace, ray_local):
    """Ray's FailureConfig restarts the worker group from the last reported checkpoint.

    The worker exits hard after epoch 0 (once). The resumed run must finish and, being
    seeded and deterministic on CPU, end with exactly the numbers of a run never killed.
    """
    base = apply_overrides(tiny_workspace.params_dict, {"train.epochs": 3})
    clean = trainer.fit(params_from_dict(base), tiny_workspace.train_paths("clean"), run_name="clean")[0]
    assert clean.error is None

    params = params_from_dict(apply_overrides(base, {"train.max_failures": 1}))
    with faults.inject(KILL_AFTER_FIRST_EPOCH) as injected:
        result, _ = trainer.fit(params, tiny_workspace.train_paths("chaos"), run_name="chaos")
    assert len(injected.fired()) == 1, "the worker was never killed (or killed again after the restart)"
    assert result.error is None
    assert result.metrics["epoch"] == 2

    def final(res):
        with res.checkpoint.as_directory() as d:
            return torch.load(Path(d) / loop.CHECKPOINT_FILE, weights_only=False)

    resumed, uninterrupted = final(result), final(clean)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    # two worker groups: the first from epoch 0, the restarted one from epoch 1, in a new process
    assert [group["from_epoch"] for group in resumed["placement"]] == [0, 1]
    assert resumed["placement"][0]["workers"][0]["pid"] == injected.fired()[0]["pid"]
    assert resumed["placement"][1]["workers"][0]["pid"] != injected.fired()[0]["pid"]
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in uninterrupted["history"]], rel=1e-5)
    for key, tensor in uninterrupted["model"].items():
        assert torch.allclose(resumed["model"][key].float(), tensor.float(), atol=1e-5), key


def test_without_max_failures_a_killed_worker_fails_the_run(tiny_workspace, ray_local):
    import ray.train

    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.epochs": 2}))
    with faults.inject(KILL_AFTER_FIRST_EPOCH), pytest.raises(ray.train.TrainingFailedError, match="worker"):
        trainer.fit(params, tiny_workspace.train_paths("fatal"), run_name="fatal")


def test_object_feature_stats_match_numpy_over_valid_rows(tiny_workspace):
    split_dir = tiny_workspace.data / "objects" / "train"
    mean, std = object_feature_stats(split_dir, chunk=3)
    features = np.load(split_dir / "features.npy").astype(np.float64)
    counts = np.load(split_dir / "counts.npy")
    valid = np.concatenate([features[i, :c] for i, c in enumerate(counts)])
    assert np.allclose(mean, valid.mean(axis=0), atol=1e-4)
    assert np.allclose(std, valid.std(axis=0), atol=1e-3)


def test_missing_stage_outputs_give_a_clear_error(tiny_workspace, tmp_path):
    from core.errors import UserError

    paths = Workspace.at(tmp_path, data_root=tmp_path, manifest_dir=tmp_path / "nope")
    with pytest.raises(UserError, match="run the ingest stage first"):
        worker_config(tiny_workspace.params, paths)


def test_caers_single_label_trains_with_cross_entropy_and_evaluates_accuracy(tmp_path, ray_local):
    import tiny_pipeline

    from core.evaluation import evaluate
    from models import model_from_checkpoint

    workspace = tiny_pipeline.build(tmp_path, fmt="caers")
    paths = workspace.train_paths("caers")
    summary = trainer.run(workspace.params, paths, track=False)
    assert summary["task"] == "multiclass" and 0.0 <= summary["val_accuracy"] <= 1.0
    assert summary["model"] == "rrla"
    package = torch.load(Path(paths.model_dir) / "model.pt", weights_only=False)
    assert package["classes"] == ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert "classifier.weight" in package["state_dict"] and not any(k.startswith("eld.") for k in package["state_dict"])
    # person_view auto: the paper's CAER-S input is the face
    assert model_from_checkpoint(package["spec"], package["state_dict"]).views == ("face", "objects")
    results = evaluate.run(paths, batch_size=4)
    assert results["model"] == "rrla"
    assert 0 <= results["face_fallbacks"]["test"] <= results["num_examples"]
    matrix = np.asarray(results["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == results["num_examples"]
    assert results["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert (paths.plots_dir / "confusion.png").is_file()


def test_frozen_backbone_trains_on_cached_maps_and_the_exported_model_agrees_on_crops(tiny_workspace, ray_local,
                                                                                        tmp_path):
    from core.evaluation import evaluate
    from core.training import body_cache

    params = params_from_dict(apply_overrides(tiny_workspace.params_dict,
                                              {"train.frozen_backbone": True, "train.loader_workers": 0}))
    paths = tiny_workspace.train_paths("frozen")
    summary = trainer.run(params, paths, track=False)

    caches = [p.parent for p in Path(paths.body_cache_root).glob("*/train.body.npy")]
    assert len(caches) == 1
    # built by a Ray Data job (actor processes of the cluster), not in this driver
    # (an earlier test of the session may have built the same maps: this run then reused them)
    built = summary["body_cache"]
    assert built["dir"] == str(caches[0]) and sorted(built["built"] + built["reused"]) == ["train", "val"]
    if built["built"]:
        assert os.getpid() not in built["writer_pids"] and built["writer_pids"]
        assert set(built["written_by"]) <= {n["NodeID"] for n in ray.nodes()}
        assert sum(built["written_by"].values()) == sum(len(read_manifest(s, paths.manifest_dir)) for s in built["built"])
    fingerprint = json.loads((caches[0] / "fingerprint.json").read_text())
    assert fingerprint["format"] == body_cache.FORMAT_VERSION == 3
    assert list(fingerprint["views"]) == ["body"] == list(body_cache.cached_views(params))
    assert fingerprint["views"]["body"]["size"] == params.model.rrla.views["body"].size == 32
    for split in ("train", "val"):
        maps = np.load(caches[0] / f"{split}.body.npy", mmap_mode="r")
        assert maps.dtype == np.float32 and maps.shape[1] == 512  # resnet18's C5 channels

    # the backbone left training exactly as the seeded initialisation built it; the rest trained
    state = torch.load(Path(paths.model_dir) / "model.pt", weights_only=False)["state_dict"]
    initial = body_cache.frozen_model(params, paths.resolved(), 26).backbone.state_dict()
    for name, tensor in initial.items():
        assert torch.equal(state[f"backbone.{name}"], tensor), name
    from models import build_model

    config = worker_config(params, paths)
    torch.manual_seed(params.seed)
    fresh = build_model(params.model.name, params.model.config, num_classes=26, task="multilabel",
                        cooccurrence=config["cooccurrence"], label_embeddings=config["label_embeddings"]).state_dict()
    trained = [k for k in state if not k.startswith("backbone.") and state[k].is_floating_point()
               and k in fresh and state[k].shape == fresh[k].shape and not torch.equal(state[k], fresh[k])]
    assert any(k.startswith("boa.") for k in trained) and any(k.startswith("bpa.") for k in trained)

    # evaluation runs the exported model's backbone on crops: the same val mAP as training
    # measured on the cached maps, so the cache is the model's own view of the data
    results = evaluate.run(paths, batch_size=4)
    assert results["val_mAP"] == pytest.approx(summary["val_map"], abs=1e-5)

    # a second run reuses the maps instead of recomputing them
    before = {p: p.stat().st_mtime_ns for p in caches[0].glob("*.npy")}
    again = trainer.run(params, tiny_workspace.train_paths("frozen-again"), track=False)
    assert {p: p.stat().st_mtime_ns for p in caches[0].glob("*.npy")} == before
    assert again["body_cache"]["built"] == [] and again["body_cache"]["reused"] == ["train", "val"]


def test_the_ray_data_body_cache_is_written_by_actors_and_equals_the_in_process_one(tiny_workspace, ray_local,
                                                                                     tmp_path):
    from core.training import body_cache

    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.batch_size": 4}))
    paths = tiny_workspace.train_paths("frozen-ray").resolved()
    on_ray = body_cache.run_on_ray(params, paths, cache_root=tmp_path / "ray", dtype="float32", log=lambda _: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor (one CPU each)
    try:
        local = body_cache.run(params, paths, cache_root=tmp_path / "local", dtype="float32", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)

    rows = {split: len(read_manifest(split, paths.manifest_dir)) for split in ("train", "val")}
    assert on_ray["built"] == ["train", "val"] and on_ray["fingerprint"] == local["fingerprint"]
    assert os.getpid() not in on_ray["writer_pids"] and local["writer_pids"] == [os.getpid()]
    assert set(on_ray["written_by"]) <= {n["NodeID"] for n in ray.nodes()}
    assert sum(on_ray["written_by"].values()) == sum(rows.values())
    for split in ("train", "val"):
        for key in on_ray["keys"]:
            got = np.load(Path(on_ray["dir"]) / f"{split}.{key}.npy")
            want = np.load(Path(local["dir"]) / f"{split}.{key}.npy")
            assert got.shape[0] == rows[split] and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{split}.{key}")
    assert not list(Path(on_ray["dir"]).glob("*.partial.npy"))


def test_the_loader_workers_start_before_training_writes_the_model_and_change_no_number(tiny_workspace):
    """Forked after the first step, a persistent loader worker keeps the old copy of every page of
    parameters, gradients and momentum that training writes (1.4 GB for the demo model's validation
    worker): EpochLoop forks them when it is built, and they load exactly what the loop would."""
    paths = tiny_workspace.train_paths("loader-fork")

    def first_epoch(loader_workers: int):
        params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.loader_workers": loader_workers}))
        epoch_loop = loop.EpochLoop(worker_config(params, paths))
        workers = [w.pid for data in (epoch_loop.train_loader, epoch_loop.val_loader)
                   for w in getattr(data._iterator, "_workers", [])]
        epoch_loop.prepare()
        record = epoch_loop.run_epoch(0)
        return workers, {k: v for k, v in record.items() if k != "train_samples_per_s"}

    workers, with_workers = first_epoch(1)
    assert len(workers) == 2 and all(pid != os.getpid() for pid in workers)
    assert first_epoch(0) == ([], with_workers)


@pytest.mark.parametrize("loader_workers", [1, 0])
def test_the_loader_workers_fork_before_the_weights_that_train_exist_and_those_start_as_seeded(
        tiny_workspace, monkeypatch, loader_workers):
    """A loader worker keeps every page it was forked with: forked after the model is built, it keeps
    the weights the optimiser then rewrites (the demo's 0.37 GB). The model that trains is built once
    the loaders' workers run, and from the seed alone, as a single build would make it. Without
    loader workers the one build trains, and leaves the random state as a seeded build does."""
    import psutil

    from models import build_model

    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.loader_workers": loader_workers}))
    config = worker_config(params, tiny_workspace.train_paths(f"fork-order-{loader_workers}"))
    children_at_build = []
    build = loop.EpochLoop._build_model

    def counting_build(cfg):
        children_at_build.append(len(psutil.Process().children()))
        return build(cfg)

    monkeypatch.setattr(loop.EpochLoop, "_build_model", staticmethod(counting_build))
    before = len(psutil.Process().children())
    epoch_loop = loop.EpochLoop(config)
    state_after_init = torch.get_rng_state()
    # the train and val loader workers, then the weights; or one build
    assert children_at_build == ([before, before + 2] if loader_workers else [before])

    torch.manual_seed(params.seed)
    seeded = build_model(params.model.name, params.model.config, num_classes=config["num_classes"],
                         task=config["task"], cooccurrence=config["cooccurrence"],
                         label_embeddings=config["label_embeddings"])
    assert torch.equal(state_after_init, torch.get_rng_state())
    seeded.set_object_feature_stats(*config["object_feature_stats"])
    trained, expected = epoch_loop.model.state_dict(), seeded.state_dict()
    assert trained.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(trained[key], value), key


def test_bf16_precision_runs_the_forward_in_bf16_and_keeps_loss_weights_and_gradients_fp32(tiny_workspace):
    paths = tiny_workspace.train_paths("precision")

    def first_step(precision: str):
        params = params_from_dict(apply_overrides(tiny_workspace.params_dict,
                                                  {"train.precision": precision, "train.loader_workers": 0}))
        epoch_loop = loop.EpochLoop(worker_config(params, paths))
        epoch_loop.prepare()
        epoch_loop.model.train()
        conv = next(m for m in epoch_loop.model.modules() if isinstance(m, torch.nn.Conv2d))
        seen = []
        conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        batch = next(iter(epoch_loop.train_loader))
        loss = epoch_loop.train_step(batch)
        weights = {p.dtype for p in epoch_loop.model.parameters()}
        grads = {p.grad.dtype for p in epoch_loop.model.parameters() if p.grad is not None}
        return seen[0], loss, weights, grads

    conv32, loss32, weights32, grads32 = first_step("fp32")
    conv16, loss16, weights16, grads16 = first_step("bf16")
    assert (conv32, conv16) == (torch.float32, torch.bfloat16)
    assert loss32.dtype == loss16.dtype == torch.float32
    assert weights32 == weights16 == grads32 == grads16 == {torch.float32}
    # the same initial weights and batch: bf16's 8-bit mantissa moves the first loss by well under 5 %
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.05)


def test_output_in_fp32_casts_every_floating_tensor_and_keeps_the_rest():
    from models.output import ModelOutput

    out = ModelOutput(logits=torch.ones(2, 3, dtype=torch.bfloat16), attention=None,
                      continuous=torch.ones(2, 3, dtype=torch.bfloat16),
                      auxiliary={"branch": torch.zeros(2, dtype=torch.bfloat16), "index": torch.arange(2)})
    cast = output_in_fp32(out)
    assert isinstance(cast, ModelOutput) and cast.attention is None
    assert cast.logits.dtype == cast.continuous.dtype == cast.auxiliary["branch"].dtype == torch.float32
    assert cast.auxiliary["index"].dtype == torch.int64


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_is_native_on_an_x86_cpu_with_avx512_bf16_or_amx_and_a_warning_says_so_otherwise(
        monkeypatch, avx512_bf16, amx, native):
    from core.training import precision

    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16("cpu") is native
    warning = bf16_warning("cpu")
    assert (warning is None) is native
    if not native:
        assert "without AVX512-BF16 or AMX" in warning and "train.precision: fp32" in warning


def test_bf16_support_is_unknown_and_unwarned_where_torch_cannot_tell(monkeypatch):
    from core.training import precision

    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")  # bf16 via SVE/NEON: no probe
    assert native_bf16("cpu") is None and bf16_warning("cpu") is None
    assert native_bf16("xpu") is None
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_bf16("cpu") is None and bf16_warning("cpu") is None


def test_a_bf16_run_on_a_cpu_without_bf16_prints_the_warning_once_from_rank_0(tiny_workspace, monkeypatch, capsys):
    from core.training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    params = params_from_dict(apply_overrides(tiny_workspace.params_dict,
                                              {"train.precision": "bf16", "train.loader_workers": 0}))
    config = worker_config(params, tiny_workspace.train_paths("bf16-warning"))
    loop.EpochLoop(config)
    loop.EpochLoop(config, rank=1, world=2)
    assert capsys.readouterr().out.count("train.precision is bf16 on a CPU without AVX512-BF16 or AMX") == 1


def test_an_unknown_precision_is_refused_naming_the_key(tiny_workspace):
    from models.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="train.precision"):
        params_from_dict(apply_overrides(tiny_workspace.params_dict, {"train.precision": "fp16"}))
