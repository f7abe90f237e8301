"""DAG-Net's frozen-backbone path (models/frozen.py, models/dagnet.py, core/training/body_cache.py):
the cached trunk outputs give exactly the pixel forward, the trunks do not train and keep their
BatchNorm statistics while BAM, GSAM's branch, LSAM and the classifier do, one cache serves every
module switch and every N, and a frozen sweep over N trains on it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.params import apply_overrides, params_from_dict
from core.training import body_cache
from models.dagnet import BODY_TRUNK, CONTEXT_LAYER3, DAGNet
from models.frozen import frozen_keys, has_frozen_path
from test_dagnet import BATCH, make_inputs, make_model, make_target

SWITCHES = {
    "full": {},
    "no_bam": {"bam__enabled": False},
    "no_gsam": {"gsam__enabled": False},
    "no_lsam": {"lsam__enabled": False},
    "lsam_without_gcn": {"lsam__gcn": False},
    "gsam_not_residual": {"gsam__residual": False},
}


def cached_inputs(model: DAGNet, pixels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the cache holds for these pixels, plus the pixels a frozen model still reads."""
    with torch.no_grad():
        cached = {key: frozen.encode(pixels[frozen.view]) for key, frozen in model.frozen_inputs().items()}
    return cached


def trunk_state(model: DAGNet) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()
            if name.startswith(("body_backbone.", "context.extractor.", "context.perception.", "context.backbone."))}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_the_frozen_forward_on_cached_trunk_outputs_equals_the_pixel_forward(name):
    model = make_model(**SWITCHES[name]).eval()
    pixels = make_inputs(model)
    with torch.no_grad():
        expected = model(pixels)
    cached = cached_inputs(model, pixels)
    assert cached[BODY_TRUNK].shape == (BATCH, 512)  # resnet18's pooled C5
    assert cached[CONTEXT_LAYER3].shape == (BATCH, 256, 2, 2)  # resnet18's layer3 at 32 px: stride 16
    model.freeze_backbone()
    assert model.frozen and has_frozen_path(model)
    still_read = (("body",) if model.bam is not None else ()) + (("patches",) if model.lsam is not None else ())
    assert model.views == still_read and frozen_keys(model) == (BODY_TRUNK, CONTEXT_LAYER3)
    with torch.no_grad():
        got = model({**cached, **{view: pixels[view] for view in model.views}})
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    if expected.attention is None:
        assert got.attention is None
    else:
        torch.testing.assert_close(got.attention, expected.attention, rtol=1e-5, atol=1e-6)


def test_one_seed_builds_the_same_trunks_whatever_the_modules_so_one_cache_serves_every_switch():
    reference = trunk_state(make_model())
    for name, overrides in SWITCHES.items():
        state = trunk_state(make_model(**overrides))
        # GSAM splits the context trunk into extractor + perception, without it the trunk is whole: same tensors
        values = sorted((tuple(v.shape), float(v.double().sum())) for v in state.values())
        assert values == sorted((tuple(v.shape), float(v.double().sum())) for v in reference.values()), name
    assert trunk_state(make_model(lsam__n=3)).keys() == reference.keys()


def test_frozen_training_moves_bam_gsam_branch_lsam_and_classifier_but_not_the_trunks_or_their_statistics():
    model = make_model()
    pixels = make_inputs(model)
    cached = cached_inputs(model.eval(), pixels)
    model.freeze_backbone()
    model.train()
    assert not model.body_backbone.training and not model.context.extractor.training
    assert not model.context.perception.training
    assert model.context.branch.training and model.lsam.training and model.bam.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.backbone_parameters())
    trunks_before = trunk_state(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    criterion_target = make_target("multilabel")
    out = model({**cached, "body": pixels["body"], "patches": pixels["patches"]})
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, criterion_target)
    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out.auxiliary["attention_logits"],
                                                                       criterion_target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert {name.split(".")[0] for name in changed} == {"bam", "context", "lsam", "classifier"}
    assert all(name.startswith("context.branch.") for name in changed if name.startswith("context."))
    after = trunk_state(model)
    assert all(torch.equal(value, after[name]) for name, value in trunks_before.items())  # running stats too


def test_frozen_input_errors_name_what_is_wrong():
    model = make_model()
    pixels = make_inputs(model)
    cached = cached_inputs(model.eval(), pixels)
    model.freeze_backbone()
    with pytest.raises(ValueError, match=r"missing \['context_layer3'\]"):
        model({BODY_TRUNK: cached[BODY_TRUNK], "body": pixels["body"], "patches": pixels["patches"]})
    with pytest.raises(ValueError, match=r"'body_trunk' must be the body trunk's pooled feature \[B,512\]"):
        model({**cached, BODY_TRUNK: cached[CONTEXT_LAYER3], "body": pixels["body"], "patches": pixels["patches"]})
    with pytest.raises(ValueError, match="different batch sizes"):
        model({**cached, "body": pixels["body"][:1], "patches": pixels["patches"]})


def test_a_non_resnet_context_trunk_has_no_frozen_path_and_says_why():
    model = make_model(gsam__enabled=False, context_backbone__name="mobilenet_v2", lsam__enabled=False)
    with pytest.raises(ValueError, match="need a ResNet trunk"):
        model.frozen_inputs()


# --------------------------------------------------------------------------- the cache and the sweep


def dagnet_params(tiny_workspace, overrides: dict | None = None):
    data = copy.deepcopy(tiny_workspace.params_dict)
    data["model"]["name"] = "dagnet"
    return params_from_dict(apply_overrides(data, overrides or {})), data


def test_the_dagnet_cache_holds_the_training_models_trunk_outputs_and_one_epoch_keeps_them_frozen(
        tiny_workspace, tmp_path):
    from core.data.manifest import read_manifest
    from core.training.inputs import worker_config
    from core.training.loop import EpochLoop

    torch.set_num_threads(1)
    params, data = dagnet_params(tiny_workspace)
    paths = tiny_workspace.train_paths("dagnet-cache").resolved()
    summary = body_cache.run(params, paths, cache_root=tmp_path / "cache", dtype="float32", log=lambda _: None)
    assert summary["keys"] == [BODY_TRUNK, CONTEXT_LAYER3] and summary["decoded"] == ["body", "patches"]
    folder = Path(summary["dir"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["fingerprint.json", "train.json", "val.json"]
        + [f"{split}.{key}.npy" for split in ("train", "val") for key in summary["keys"]])
    fingerprint = json.loads((folder / "fingerprint.json").read_text())
    assert fingerprint["model"] == "dagnet" and sorted(fingerprint["views"]) == ["body", "image_body_masked"]
    assert sorted(fingerprint["backbones"]) == ["body_backbone", "context_backbone"]
    manifest = read_manifest("val", paths.manifest_dir)
    trunk = np.load(folder / f"val.{BODY_TRUNK}.npy")
    layer3 = np.load(folder / f"val.{CONTEXT_LAYER3}.npy")
    assert trunk.shape == (len(manifest), 512) and layer3.shape == (len(manifest), 256, 2, 2)

    loop = EpochLoop({**worker_config(params, paths), "body_cache": summary["dir"]})
    model = loop.model
    assert model.frozen and model.views == ("body", "patches")
    item = loop.val_set[1]
    pixel_model = make_pixel_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(item[BODY_TRUNK], pixel_model.body_trunk_feature(item["body"][None])[0],
                                   rtol=1e-5, atol=1e-5)
        pixels = pixel_view(loop, 1, "image_body_masked")
        torch.testing.assert_close(item[CONTEXT_LAYER3], pixel_model.context.layer3(pixels[None])[0],
                                   rtol=1e-5, atol=1e-5)
    trunks_before = trunk_state(model)
    record = loop.run_epoch(0)
    assert 0.0 <= record["val_metric"] <= 1.0
    assert all(torch.equal(value, trunk_state(model)[name]) for name, value in trunks_before.items())

    # one folder for every module switch and every N; the trunks' views and the seed make another
    for same in ({"model.dagnet.lsam.n": 3}, {"model.dagnet.bam.enabled": False}, {"model.dagnet.gsam.enabled": False},
                 {"model.dagnet.views.patches.size": 48}):
        other = params_from_dict(apply_overrides(data, same))
        assert body_cache.fingerprint(body_cache.fingerprint_inputs(other, paths.manifest_dir, paths.data_root,
                                                                    "float32")) == summary["fingerprint"], same
    for change in ({"model.dagnet.views.body.size": 48}, {"model.dagnet.views.image_body_masked.norm": "unit"},
                   {"model.dagnet.context_backbone.name": "resnet50"}, {"seed": 1}):
        other = params_from_dict(apply_overrides(data, change))
        assert body_cache.fingerprint(body_cache.fingerprint_inputs(other, paths.manifest_dir, paths.data_root,
                                                                    "float32")) != summary["fingerprint"], change


def make_pixel_twin(model: DAGNet) -> DAGNet:
    """A pixel-reading model with the frozen model's weights."""
    from models.factory import build_model

    twin = build_model("dagnet", model.config, num_classes=model.num_classes, task=model.task, load_pretrained=False)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def pixel_view(loop, row: int, view: str) -> torch.Tensor:
    from core.data.dataset import open_rgb, view_tensor

    dataset = loop.val_set
    rgb = np.asarray(open_rgb(dataset.data_root / dataset.image_paths[row]))
    spec = loop.model.view_specs[view]
    return view_tensor(view, rgb, spec, body_box=dataset.person_boxes[row], face_box=None, people_boxes=())


def test_a_frozen_sweep_refuses_what_changes_the_dagnet_cache_and_allows_n(tiny_workspace):
    from pipelines.sweep.space import build_space

    _, data = dagnet_params(tiny_workspace)
    data["tune"] = {**data["tune"], "frozen_backbone": True}
    data["tune"]["space"] = {"dagnet": {"model.dagnet.lsam.n": {"choice": [2, 3]},
                                        "model.dagnet.views.patches.size": {"choice": [32, 48]}}}
    assert set(build_space(params_from_dict(data))) == {"model.dagnet.lsam.n", "model.dagnet.views.patches.size"}
    data["tune"]["space"]["dagnet"]["model.dagnet.views.body.size"] = {"choice": [32, 48]}
    with pytest.raises(UserError, match=r"'model.dagnet.views.body.size' changes the cached"):
        build_space(params_from_dict(data))


def test_families_without_the_protocol_are_refused_by_name(tiny_workspace, tmp_path):
    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"model.name": "sibnet"}))
    assert not body_cache.has_frozen_path(params)
    with pytest.raises(UserError, match=r"model 'sibnet' has no frozen-backbone path; rrla, dagnet have"):
        body_cache.run(params, tiny_workspace.train_paths("sib").resolved(), cache_root=tmp_path, log=lambda _: None)


def test_precise_batchnorm_recomputes_the_trained_modules_statistics_and_leaves_the_frozen_trunks_alone():
    from core.training.loop import recompute_batchnorm_statistics

    model = make_model()
    pixels = make_inputs(model)
    cached = cached_inputs(model.eval(), pixels)
    model.freeze_backbone()
    trunks_before = trunk_state(model)
    branch_before = model.context.branch.block[1].running_mean.clone()
    batch = {**cached, "body": pixels["body"], "patches": pixels["patches"]}
    updated = recompute_batchnorm_statistics(model, [batch], "cpu")
    trained_norms = [m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                     and name.startswith(("context.branch.", "lsam."))]
    assert updated == len(trained_norms) > 0
    assert all(torch.equal(value, trunk_state(model)[name]) for name, value in trunks_before.items())
    assert not torch.equal(model.context.branch.block[1].running_mean, branch_before)
