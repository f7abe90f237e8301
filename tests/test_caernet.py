"""CAER-Net-S (models/caernet.py): shapes, the spatial and fusion attentions against hand
computations, the encoders' structure, the default loss, one SGD step, config errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.caernet import (
    CAERNetConfig,
    CAERNetS,
    ContextAttention,
    Encoder,
    build_caernet,
)
from models.config import ConfigError, from_dict, to_dict
from models.losses import LogitsCriterion, build_loss
from models.output import ModelOutput
from models.registry import model_family

torch.set_num_threads(1)
BATCH, FACE, CONTEXT, CLASSES = 3, 32, 48, 7
SMALL = [4, 8, 8, 16, 16]
PAPER = [32, 64, 128, 256, 256]


def config_dict(**overrides) -> dict:
    data = {
        "views": {"face": {"size": FACE, "norm": "imagenet"}, "image_face_masked": {"size": CONTEXT, "norm": "imagenet"}},
        "channels": SMALL,
        "attention_hidden": 8,
        "fusion_hidden": 8,
        "classifier_hidden": 8,
        "dropout": 0.5,
        "train": {"optimizer": "sgd", "lr": 0.005, "batch_size": 32},
    }
    data.update(overrides)
    return data


def make_model(task: str = "multiclass", num_classes: int = CLASSES, **overrides) -> CAERNetS:
    torch.manual_seed(0)
    cfg = from_dict(CAERNetConfig, config_dict(**overrides))
    return build_caernet(cfg, num_classes=num_classes, task=task, cooccurrence=np.zeros((2, 2)),
                         label_embeddings=np.zeros((2, 3)), load_pretrained=True)


def make_inputs(batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"face": torch.randn(batch, 3, FACE, FACE, generator=gen),
            "image_face_masked": torch.randn(batch, 3, CONTEXT, CONTEXT, generator=gen)}


@pytest.mark.parametrize("task,num_classes", [("multiclass", 7), ("multilabel", 26)])
def test_output_shapes_and_fusion_weights(task, num_classes):
    model = make_model(task, num_classes, channels=PAPER, attention_hidden=128, fusion_hidden=128,
                       classifier_hidden=128)
    out = model(make_inputs())
    assert isinstance(out, ModelOutput) and out.continuous is None
    assert out.logits.shape == (BATCH, num_classes) and torch.isfinite(out.logits).all()
    weights = out.attention
    assert weights.shape == (BATCH, 2)
    assert ((weights > 0) & (weights < 1)).all()
    assert torch.allclose(weights.sum(dim=1), torch.ones(BATCH), atol=1e-6)
    assert model.views == ("face", "image_face_masked") and model.task == task
    assert model.num_classes == num_classes and model.embedding_dim is None and model.predicts_vad is False
    assert {k: v.size for k, v in model.view_specs.items()} == {"face": FACE, "image_face_masked": CONTEXT}
    assert model.view_specs["face"].mean == (0.485, 0.456, 0.406)


def test_parts_agree_with_forward_and_the_spatial_map_sums_to_one():
    model = make_model().eval()
    inputs = make_inputs()
    with torch.no_grad():
        parts, out = model.parts(inputs), model(inputs)
    assert torch.equal(parts.logits, out.logits) and torch.equal(parts.fusion_weights, out.attention)
    side = CONTEXT // 16
    assert parts.spatial_attention.shape == (BATCH, side, side)
    assert (parts.spatial_attention > 0).all()
    np.testing.assert_allclose(parts.spatial_attention.sum(dim=(1, 2)).numpy(), np.ones(BATCH), atol=1e-6)
    assert parts.face_feature.shape == parts.context_feature.shape == (BATCH, SMALL[-1])
    # the classifier's input is [λ_F X_F ; λ_C X̄_C]
    lam = parts.fusion_weights
    fused = torch.cat([lam[:, :1] * parts.face_feature, lam[:, 1:] * parts.context_feature], dim=1)
    with torch.no_grad():
        assert torch.allclose(model.classifier(fused), out.logits, atol=1e-6)


def test_context_attention_matches_a_hand_computation():
    module = ContextAttention(channels=2, hidden=1).eval()  # eval: BN uses running mean 0, var 1
    with torch.no_grad():
        module.conv1.weight.zero_()
        module.conv1.weight[0, 0, 1, 1] = 1.0  # centre tap reads channel 0
        module.conv2.weight.zero_()
        module.conv2.weight[0, 0, 1, 1] = 2.0
    features = np.array([[[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]],     # channel 0 (drives the map)
                         [[3.0, 1.0, -2.0], [0.0, 4.0, 1.0]]],     # channel 1
                        dtype=np.float32)[None]  # [1,2,2,3]
    with torch.no_grad():
        attended, weights = module(torch.from_numpy(features))

    scores = 2.0 * np.maximum(features[0, 0] / np.sqrt(1.0 + module.bn1.eps), 0.0)
    expected_map = np.exp(scores) / np.exp(scores).sum()
    expected = (features[0] * expected_map).sum(axis=(1, 2))  # sum, i.e. attention-weighted mean
    np.testing.assert_allclose(weights[0].numpy(), expected_map, rtol=1e-5)
    np.testing.assert_allclose(attended[0].numpy(), expected, rtol=1e-5)
    # a constant map (all scores equal) gives the plain spatial mean
    with torch.no_grad():
        module.conv2.weight.zero_()
        attended, weights = module(torch.from_numpy(features))
    np.testing.assert_allclose(weights[0].numpy(), np.full((2, 3), 1 / 6), rtol=1e-6)
    np.testing.assert_allclose(attended[0].numpy(), features[0].mean(axis=(1, 2)), rtol=1e-5)


def test_the_encoders_follow_the_paper():
    model = make_model(channels=PAPER)
    for encoder in (model.face_encoder, model.context_encoder):
        convs = [m for m in encoder if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == PAPER
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in encoder) == 5
        assert sum(isinstance(m, nn.ReLU) for m in encoder) == 5
        pools = [m for m in encoder if isinstance(m, nn.MaxPool2d)]
        assert len(pools) == 4 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
        assert not isinstance(list(encoder)[-1], nn.MaxPool2d)  # no pool after the fifth conv
        with torch.no_grad():
            assert encoder.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 256, 2, 2)
    assert model.face_encoder[0].weight.data_ptr() != model.context_encoder[0].weight.data_ptr()
    assert [model.context_attention.conv1.out_channels, model.context_attention.conv2.out_channels] == [8, 1]
    assert model.classifier[0].in_features == 2 * 256 and model.classifier[2].p == 0.5
    assert Encoder((1, 2, 3, 4, 5)).out_channels == 5


def test_the_default_loss_is_cross_entropy_on_the_logits():
    family = model_family("caernet")
    assert family.criterion is None and family.config is CAERNetConfig
    model = make_model().eval()
    inputs = make_inputs()
    target = torch.tensor([0, 3, 6])
    criterion = LogitsCriterion(build_loss("cross_entropy", "multiclass"))
    out = model(inputs)
    loss = criterion(out, {"target": target})
    logits = out.logits.detach().numpy().astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(BATCH), target.numpy()].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_one_sgd_step_moves_both_streams_the_attention_and_the_fusion():
    model = make_model("multilabel", 5).train()
    criterion = LogitsCriterion(build_loss("bce", "multilabel"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = (torch.rand(BATCH, 5, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    loss = criterion(model(make_inputs()), {"target": target})
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p.detach(), before[name])]
    assert unchanged == []
    prefixes = {name.split(".")[0] for name in before}
    assert prefixes == {"face_encoder", "context_encoder", "context_attention", "fusion", "classifier"}


def test_inputs_are_checked_and_cast():
    model = make_model().eval()
    inputs = make_inputs()
    with pytest.raises(ValueError, match="image_face_masked"):
        model({"face": inputs["face"]})
    with pytest.raises(ValueError, match="'face'"):
        model({"face": inputs["face"][:, :1], "image_face_masked": inputs["image_face_masked"]})
    with pytest.raises(ValueError, match="'image_face_masked'"):
        model({"face": inputs["face"], "image_face_masked": torch.zeros(BATCH, 3, 8, 8)})
    with pytest.raises(ValueError, match="batch sizes"):
        model({"face": inputs["face"][:2], "image_face_masked": inputs["image_face_masked"]})
    with torch.no_grad():
        as_double = model({k: v.double() for k, v in inputs.items()}).logits
        assert as_double.dtype == torch.float32
        assert torch.allclose(as_double, model(inputs).logits)


@pytest.mark.parametrize("overrides,key", [
    ({"channels": [32, 64, 128, 256]}, "model.caernet.channels"),
    ({"channels": [32, 64, 0, 256, 256]}, "model.caernet.channels"),
    ({"channels": [32, 64, 128.5, 256, 256]}, "model.caernet.channels"),
    ({"dropout": 1.0}, "model.caernet.dropout"),
    ({"dropout": -0.1}, "model.caernet.dropout"),
    ({"attention_hidden": 0}, "model.caernet.attention_hidden"),
    ({"fusion_hidden": -1}, "model.caernet.fusion_hidden"),
    ({"classifier_hidden": True}, "model.caernet.classifier_hidden"),
    ({"views": {"face": {"size": 32, "norm": "imagenet"}}}, "model.caernet.views"),
    ({"views": {"face": {"size": 32, "norm": "imagenet"}, "image_face_masked": {"size": 48, "norm": "imagenet"},
                "body": {"size": 48, "norm": "imagenet"}}}, "model.caernet.views"),
    ({"views": {"face": {"size": 12, "norm": "imagenet"}, "image_face_masked": {"size": 48, "norm": "imagenet"}}},
     "model.caernet.views.face.size"),
    ({"train": None}, "model.caernet.train"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(CAERNetConfig, config_dict(**overrides), "model.caernet")


def test_config_is_strict_and_round_trips():
    data = config_dict()
    del data["dropout"]
    with pytest.raises(ConfigError, match="model.caernet.dropout"):
        from_dict(CAERNetConfig, data, "model.caernet")
    cfg = from_dict(CAERNetConfig, config_dict())
    assert cfg.channels == tuple(SMALL)
    assert from_dict(CAERNetConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="task"):
        CAERNetS(cfg, num_classes=3, task="regression")
