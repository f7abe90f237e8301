"""SIB-Net (models/sibnet.py): SCM's cells and ICM against hand computations, BCM's distribution
labels, the criterion, full-model shapes and gradients, every ablation of the paper's Table 2
trained one step, the backbone parameter split, input and config errors."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.config import ConfigError, from_dict
from models.factory import build_model, model_from_checkpoint, model_spec
from models.output import ModelOutput
from models.registry import family_config, model_family
from models.sibnet import (
    CorrelatedFusion,
    GRUCell,
    InteractiveContext,
    RNNCell,
    SequentialContext,
    SIBNet,
    SIBNetConfig,
    build_sibnet,
    build_sibnet_criterion,
    distribution_labels,
)

torch.set_num_threads(1)
SIZE, BATCH = 32, 2
VIEWS = ("image_face_masked", "image_body_masked", "image")
BRANCHES = ("face", "body", "scene")
RESNET18_TRUNK_PARAMS = 11_176_512  # torchvision resnet18 without its fc layer


def config_dict(scm: bool = True, icm: bool = True, bcm: bool = True, cell: str = "gru", **overrides) -> dict:
    data = {
        "views": {name: {"size": SIZE, "norm": "symmetric"} for name in VIEWS},
        "backbone": {"name": "resnet18", "pretrained": False, "weights": None},
        "classifier_hidden": 16,
        "dropout": 0.5,
        "scm": {"enabled": scm, "cell": cell},
        "icm": {"enabled": icm, "layers": [2, 4], "reduction": 0.5},
        "bcm": {"enabled": bcm, "mean": 0.4, "variance": 0.1, "weight": 1.0, "head_hidden": None},
        "train": {"optimizer": "adam", "lr": 0.001, "backbone_lr": 0.0001},
    }
    data.update(overrides)
    return data


def make_config(**kwargs) -> SIBNetConfig:
    return from_dict(SIBNetConfig, config_dict(**kwargs), "model.sibnet")


def make_model(task: str = "multilabel", num_classes: int = 26, **kwargs) -> SIBNet:
    torch.manual_seed(0)
    return build_sibnet(make_config(**kwargs), num_classes=num_classes, task=task, load_pretrained=False)


def make_inputs(batch: int = BATCH, seed: int = 0, size: int = SIZE) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for name in VIEWS}


def make_target(task: str, num_classes: int, batch: int = BATCH) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if task == "multilabel":
        target = (torch.rand(batch, num_classes, generator=gen) < 0.3).float()
        target[:, 0] = 1.0  # at least one label each
        return target
    return torch.arange(batch) % num_classes


# --- SCM ---------------------------------------------------------------------------------------

def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _set_linear(linear: torch.nn.Linear, weight: list, bias: list) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _branch_maps(seed: int = 3) -> list[torch.Tensor]:
    """Three [1,2,2,3] maps (face, body, scene); SCM reads their spatial means."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, 2, 3, generator=gen) for _ in BRANCHES]


W_R, B_R = [[0.5, -0.3, 0.2, 0.1], [0.1, 0.4, -0.2, 0.3]], [0.05, -0.1]
W_Z, B_Z = [[-0.2, 0.3, 0.4, -0.1], [0.3, -0.5, 0.1, 0.2]], [0.0, 0.1]
W_H, B_H = [[0.6, 0.1, -0.3, 0.5], [-0.4, 0.2, 0.7, -0.2]], [0.1, -0.05]


def test_scm_gru_gates_match_a_hand_computation_over_face_body_scene():
    scm = SequentialContext(2, "gru")
    cell = scm.cell
    assert isinstance(cell, GRUCell)
    _set_linear(cell.reset, W_R, B_R)
    _set_linear(cell.update, W_Z, B_Z)
    _set_linear(cell.candidate, W_H, B_H)
    maps = _branch_maps()
    with torch.no_grad():
        states = scm(maps)

    h = np.zeros(2)  # h_0 = 0
    wr, wz, wh = np.array(W_R), np.array(W_Z), np.array(W_H)
    for step, feature_map in enumerate(maps):
        x = feature_map.numpy()[0].mean(axis=(1, 2))  # GAP
        r = _sigmoid(wr @ np.concatenate([h, x]) + np.array(B_R))
        z = _sigmoid(wz @ np.concatenate([h, x]) + np.array(B_Z))
        candidate = np.tanh(wh @ np.concatenate([r * h, x]) + np.array(B_H))
        with torch.no_grad():
            gates = cell.gates(torch.tensor(x[None], dtype=torch.float32), torch.tensor(h[None], dtype=torch.float32))
        for got, want in zip(gates, (r, z, candidate)):
            np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-5, atol=1e-6)
        h = z * candidate + (1 - z) * h
        np.testing.assert_allclose(states[step].numpy()[0], h, rtol=1e-5, atol=1e-6)
    assert len(states) == 3 and np.abs(h).max() > 0.05  # the example does move the state


def test_scm_rnn_cell_matches_a_hand_computation():
    scm = SequentialContext(2, "rnn")
    assert isinstance(scm.cell, RNNCell)
    _set_linear(scm.cell.linear, W_H, B_H)
    maps = _branch_maps(seed=4)
    with torch.no_grad():
        states = scm(maps)
    h = np.zeros(2)
    for step, feature_map in enumerate(maps):
        x = feature_map.numpy()[0].mean(axis=(1, 2))
        h = np.tanh(np.array(W_H) @ np.concatenate([h, x]) + np.array(B_H))
        np.testing.assert_allclose(states[step].numpy()[0], h, rtol=1e-5, atol=1e-6)


def test_scm_lstm_is_torchs_lstm_cell_from_a_zero_state():
    torch.manual_seed(0)
    scm = SequentialContext(2, "lstm")
    maps = _branch_maps(seed=5)
    with torch.no_grad():
        states = scm(maps)
        h = c = torch.zeros(1, 2)
        for step, feature_map in enumerate(maps):
            h, c = scm.cell.cell(feature_map.mean(dim=(2, 3)), (h, c))
            torch.testing.assert_close(states[step], h)


@pytest.mark.parametrize("cell", ["gru", "rnn", "lstm"])
def test_scm_runs_face_then_body_then_scene(cell):
    torch.manual_seed(0)
    scm = SequentialContext(4, cell)
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 4, 3, 3, generator=gen) for _ in BRANCHES]
    with torch.no_grad():
        base = scm(maps)
        changed_scene = scm([maps[0], maps[1], maps[2] + 1.0])
        changed_face = scm([maps[0] + 1.0, maps[1], maps[2]])
    assert torch.equal(changed_scene[0], base[0]) and torch.equal(changed_scene[1], base[1])  # causal
    assert all(not torch.allclose(new, old) for new, old in zip(changed_face, base))  # face reaches all


# --- ICM ---------------------------------------------------------------------------------------

def test_icm_correlated_fusion_matches_a_numpy_computation():
    torch.manual_seed(0)
    channels, inner, height, width = 4, 2, 2, 3
    fusion = CorrelatedFusion(channels, inner)
    x = torch.randn(1, 3 * channels, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = fusion(x).numpy()[0]
        rows = fusion.correlation(x)[0]

    def conv(layer, inp):  # a 1x1 conv: weight [out, in] @ [in, HW] + bias
        return layer.weight.detach().numpy()[:, :, 0, 0] @ inp + layer.bias.detach().numpy()[:, None]

    flat = x.numpy()[0].reshape(3 * channels, height * width)
    query, key, value = conv(fusion.query, flat), conv(fusion.key, flat), conv(fusion.value, flat)
    scores = query @ key.T / math.sqrt(height * width)  # [dC, dC], / sqrt(HW)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    want = conv(fusion.out, weights @ value).reshape(channels, height, width)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert rows.shape == (inner, inner)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(inner))


def test_icm_keeps_each_branch_shape_and_mixes_the_branches():
    torch.manual_seed(0)
    icm = InteractiveContext(8, 4)
    gen = torch.Generator().manual_seed(2)
    maps = [torch.randn(2, 8, 5, 5, generator=gen) for _ in BRANCHES]
    with torch.no_grad():
        base = icm(maps)
        assert [tuple(y.shape) for y in base] == [tuple(m.shape) for m in maps]
        for changed in range(3):
            moved = [m + (1.0 if i == changed else 0.0) for i, m in enumerate(maps)]
            outputs = icm(moved)
            for branch, (new, old) in enumerate(zip(outputs, base)):
                assert not torch.allclose(new, old), (changed, branch)  # every branch sees every branch
    with pytest.raises(ValueError, match="one shape"):
        icm([maps[0], maps[1], maps[2][:, :, :4, :4]])


# --- BCM ---------------------------------------------------------------------------------------

def test_distribution_labels_keep_ones_and_replace_zeros_reproducibly():
    target = (torch.rand(64, 26, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    labels = distribution_labels(target, torch.Generator().manual_seed(7), 0.4, math.sqrt(0.1))
    assert labels.shape == target.shape and labels.dtype == target.dtype
    assert torch.equal(labels[target == 1], target[target == 1])
    zeros = labels[target == 0]
    assert ((zeros >= 0) & (zeros <= 1)).all() and zeros.unique().numel() > 100  # random, clipped
    again = distribution_labels(target, torch.Generator().manual_seed(7), 0.4, math.sqrt(0.1))
    other = distribution_labels(target, torch.Generator().manual_seed(8), 0.4, math.sqrt(0.1))
    assert torch.equal(labels, again) and not torch.equal(labels, other)
    with pytest.raises(ValueError, match="multi-hot"):
        distribution_labels(target * 0.5, torch.Generator(), 0.4, 0.3)


def _clipped_normal_mean(mean: float, std: float) -> float:
    """E[clip(X, 0, 1)] for X ~ N(mean, std²): E[X; 0<X<1] + P(X > 1)."""
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    pdf = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    return mean * (cdf(hi) - cdf(lo)) + std * (pdf(lo) - pdf(hi)) + (1 - cdf(hi))


def test_distribution_labels_follow_the_papers_gaussian():
    std = math.sqrt(0.1)
    zeros = distribution_labels(torch.zeros(2000, 100), torch.Generator().manual_seed(0), 0.4, std).flatten()
    n = zeros.numel()  # 200 000 draws: the sample mean's standard error is < 0.35 / sqrt(n) < 0.001
    # About 10 % of the draws fall below 0 and 3 % above 1: those are clipped, which moves the
    # mean from 0.4 to 0.412 (computed exactly below). 0.005 is over 5 standard errors.
    assert abs(float(zeros.mean()) - _clipped_normal_mean(0.4, std)) < 0.005
    assert abs(float(zeros.mean()) - 0.4) < 0.02
    assert abs(float((zeros == 0).float().mean()) - 0.5 * (1 + math.erf(-0.4 / std / math.sqrt(2)))) < 0.005
    inside = zeros[(zeros > 0) & (zeros < 1)]
    assert inside.numel() > 0.8 * n
    # a narrow Gaussian is never clipped: its draws average to the mean itself
    narrow = distribution_labels(torch.zeros(1000, 100), torch.Generator().manual_seed(1), 0.4, 0.01)
    assert abs(float(narrow.mean()) - 0.4) < 0.001 and float(narrow.std()) == pytest.approx(0.01, rel=0.05)


def test_the_criterion_is_bce_plus_the_branch_l1_with_seeded_labels():
    cfg = make_config()
    target = make_target("multilabel", 5, batch=3)
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, generator=gen)
    auxiliary = {b: torch.randn(3, 5, generator=gen) for b in BRANCHES}
    output = ModelOutput(logits=logits, auxiliary=auxiliary)

    criterion = build_sibnet_criterion(cfg, task="multilabel", loss_name="weighted_mse", seed=5)
    assert criterion.name == "sibnet_bce_l1"
    twin = torch.Generator().manual_seed(5)  # the same draws, in the same order (face, body, scene)
    l1 = [(torch.sigmoid(auxiliary[b]) - distribution_labels(target, twin, 0.4, math.sqrt(0.1))).abs().mean()
          for b in BRANCHES]
    want = F.binary_cross_entropy_with_logits(logits, target) + sum(l1) / 3
    torch.testing.assert_close(criterion(output, {"target": target}), want)

    same = build_sibnet_criterion(cfg, task="multilabel", seed=5)(output, {"target": target})
    other = build_sibnet_criterion(cfg, task="multilabel", seed=6)(output, {"target": target})
    torch.testing.assert_close(same, want)
    assert not torch.allclose(other, want)
    with pytest.raises(ValueError, match="auxiliary"):
        criterion(ModelOutput(logits=logits), {"target": target})


def test_without_bcm_the_criterion_is_bce_on_the_one_hot_target():
    cfg = make_config(bcm=False)
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 6, 3, 3])
    criterion = build_sibnet_criterion(cfg, task="multiclass", seed=0)
    assert criterion.name == "sibnet_bce"
    want = F.binary_cross_entropy_with_logits(logits, F.one_hot(ids, 7).float())
    torch.testing.assert_close(criterion(ModelOutput(logits=logits), {"target": ids}), want)
    with pytest.raises(ValueError, match="class ids"):
        criterion(ModelOutput(logits=logits), {"target": ids.float()})
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 7\)"):
        criterion(ModelOutput(logits=logits), {"target": torch.tensor([0, 7, 1, 1])})


# --- the network -------------------------------------------------------------------------------

@pytest.mark.parametrize("task,num_classes", [("multilabel", 26), ("multiclass", 7)])
def test_full_model_shapes_loss_and_gradients(task, num_classes):
    model = make_model(task, num_classes).train()
    assert model.views == VIEWS and model.task == task and model.num_classes == num_classes
    assert model.embedding_dim is None and model.predicts_vad is False
    assert {name: spec.size for name, spec in model.view_specs.items()} == dict.fromkeys(VIEWS, SIZE)
    assert model.view_specs["image"].mean == (0.5, 0.5, 0.5)  # [-1, 1], as the paper
    output = model(make_inputs())
    assert isinstance(output, ModelOutput) and output.attention is None and output.continuous is None
    assert output.logits.shape == (BATCH, num_classes)
    assert sorted(output.auxiliary) == sorted(BRANCHES)
    assert all(output.auxiliary[b].shape == (BATCH, num_classes) for b in BRANCHES)

    criterion = build_sibnet_criterion(model.config, task=task, seed=0)
    loss = criterion(output, {"target": make_target(task, num_classes)})
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert without == []
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero == []


ABLATIONS = {  # Table 2: S, I, B = SCM, ICM, BCM; the cell of S
    "baseline": (False, False, False, "gru"),
    "+S": (True, False, False, "gru"),
    "+S(rnn)": (True, False, False, "rnn"),
    "+S(lstm)": (True, False, False, "lstm"),
    "+I": (False, True, False, "gru"),
    "+B": (False, False, True, "gru"),
    "S+I": (True, True, False, "gru"),
    "S+B": (True, False, True, "gru"),
    "I+B": (False, True, True, "gru"),
    "S+I+B": (True, True, True, "gru"),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_builds_and_trains_one_step(name):
    scm, icm, bcm, cell = ABLATIONS[name]
    model = make_model(scm=scm, icm=icm, bcm=bcm, cell=cell, classifier_hidden=None).train()
    assert (model.scm is not None) == scm and (model.icm is not None) == icm and (model.heads is not None) == bcm
    if scm:
        assert sorted(model.scm) == ["layer1", "layer2", "layer3", "layer4"]
        assert all(type(m.cell).__name__.lower() == f"{cell}cell" for m in model.scm.values())
    if icm:
        assert sorted(model.icm) == ["layer2", "layer4"]
    criterion = build_sibnet_criterion(model.config, task="multilabel", seed=0)
    assert criterion.name == ("sibnet_bce_l1" if bcm else "sibnet_bce")
    before = copy.deepcopy(model.state_dict())
    output = model(make_inputs())
    assert (output.auxiliary is None) == (not bcm)
    loss = criterion(output, {"target": make_target("multilabel", 26)})
    assert torch.isfinite(loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("classifier") for k in changed) and any(k.startswith("trunks.scene") for k in changed)
    if scm:
        assert any(k.startswith("scm.layer1") for k in changed)
    if icm:
        assert any(k.startswith("icm.layer2.fusions.face.query") for k in changed)
    if bcm:
        assert any(k.startswith("heads.body") for k in changed)


def test_backbone_parameters_are_exactly_the_three_trunks():
    model = make_model()
    backbone = {id(p) for p in model.backbone_parameters()}
    trunks = {id(p) for b in BRANCHES for p in model.trunks[b].parameters()}
    everything = {id(p) for p in model.parameters()}
    assert backbone == trunks and len(backbone) == len(model.backbone_parameters())
    rest = {id(p) for name, p in model.named_parameters() if not name.startswith("trunks.")}
    assert backbone.isdisjoint(rest) and backbone | rest == everything
    assert sum(p.numel() for p in model.backbone_parameters()) == 3 * RESNET18_TRUNK_PARAMS
    faces = {id(p) for p in model.trunks["face"].parameters()}
    assert faces.isdisjoint({id(p) for p in model.trunks["scene"].parameters()})  # separate weights


def test_registered_and_rebuilt_from_its_spec():
    family = model_family("sibnet")
    assert family.builder is build_sibnet and family.config is SIBNetConfig
    assert family.criterion is build_sibnet_criterion
    assert family_config("sibnet", config_dict()) == make_config()
    torch.manual_seed(0)
    model = build_model("sibnet", config_dict(bcm=False), num_classes=7, task="multiclass").eval()
    again = model_from_checkpoint(model_spec(model), model.state_dict())
    with torch.no_grad():
        inputs = make_inputs()
        assert torch.equal(again(inputs).logits, model(inputs).logits)
        assert model(inputs).auxiliary is None


def test_input_errors_are_clear():
    model = make_model(icm=False, bcm=False).eval()
    inputs = make_inputs()
    with pytest.raises(ValueError, match="missing input view"):
        model({k: v for k, v in inputs.items() if k != "image_body_masked"})
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        model({**inputs, "image": inputs["image"][:, :1]})
    with pytest.raises(ValueError, match="batch sizes differ"):
        model({**inputs, "image": inputs["image"][:1]})
    with pytest.raises(TypeError, match="mapping"):
        model(inputs["image"])
    with torch.no_grad():  # without ICM the views may differ in size
        assert model({**inputs, "image": make_inputs(size=48)["image"]}).logits.shape == (BATCH, 26)
    with_icm = make_model(scm=False, bcm=False).eval()
    with pytest.raises(ValueError, match="one shape"), torch.no_grad():
        with_icm({**inputs, "image": make_inputs(size=64)["image"]})


@pytest.mark.parametrize("change,key", [
    ({"scm": {"enabled": True, "cell": "transformer"}}, r"model\.sibnet\.scm\.cell must be one of"),
    ({"scm": {"enabled": "yes", "cell": "gru"}}, r"model\.sibnet\.scm\.enabled"),
    ({"views": {"image_face_masked": {"size": 32, "norm": "symmetric"}, "image": {"size": 32, "norm": "symmetric"}}},
     r"model\.sibnet\.views: no size/norm for view\(s\) \['image_body_masked'\]"),
    ({"views": {**{v: {"size": 32, "norm": "symmetric"} for v in VIEWS}, "body": {"size": 32, "norm": "unit"}}},
     r"model\.sibnet\.views: unknown view"),
    ({"views": {**{v: {"size": 32, "norm": "symmetric"} for v in VIEWS}, "image": {"size": 48, "norm": "symmetric"}}},
     r"model\.sibnet\.views: ICM"),
    ({"bcm": {"enabled": True, "mean": 0.4, "variance": -0.1, "weight": 1.0, "head_hidden": None}},
     r"model\.sibnet\.bcm\.variance"),
    ({"bcm": {"enabled": True, "mean": 0.4, "variance": "0.1", "weight": 1.0, "head_hidden": None}},
     r"model\.sibnet\.bcm\.variance"),
    ({"bcm": {"enabled": True, "mean": 1.4, "variance": 0.1, "weight": 1.0, "head_hidden": None}},
     r"model\.sibnet\.bcm\.mean"),
    ({"bcm": {"enabled": True, "mean": 0.4, "variance": 0.1, "weight": -1, "head_hidden": None}},
     r"model\.sibnet\.bcm\.weight"),
    ({"bcm": {"enabled": True, "mean": 0.4, "variance": 0.1, "weight": 1.0, "head_hidden": 0}},
     r"model\.sibnet\.bcm\.head_hidden"),
    ({"bcm": {"enabled": True, "variance": 0.1, "weight": 1.0, "head_hidden": None}},
     r"missing key\(s\) \['model\.sibnet\.bcm\.mean'\]"),
    ({"icm": {"enabled": True, "layers": [2, 5], "reduction": 0.5}}, r"model\.sibnet\.icm\.layers"),
    ({"icm": {"enabled": True, "layers": [], "reduction": 0.5}}, r"model\.sibnet\.icm\.layers"),
    ({"icm": {"enabled": True, "layers": [2, 4], "reduction": 0}}, r"model\.sibnet\.icm\.reduction"),
    ({"backbone": {"name": "mobilenet_v2", "pretrained": False, "weights": None}}, r"model\.sibnet\.backbone\.name"),
    ({"dropout": 1.0}, r"model\.sibnet\.dropout"),
    ({"classifier_hidden": 0}, r"model\.sibnet\.classifier_hidden"),
    ({"train": None}, r"model\.sibnet\.train"),
    ({"extra": 1}, r"model\.sibnet: unknown key"),
])
def test_config_errors_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(SIBNetConfig, {**config_dict(), **change}, "model.sibnet")


def test_different_view_sizes_are_fine_without_icm():
    views = {**{v: {"size": 32, "norm": "symmetric"} for v in VIEWS}, "image": {"size": 48, "norm": "imagenet"}}
    cfg = make_config(icm=False, views=views)
    assert cfg.views["image"].size == 48 and cfg.bcm.std == pytest.approx(math.sqrt(0.1))
