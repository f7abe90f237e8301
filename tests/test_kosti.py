"""The Kosti et al. two-stream baseline (models/kosti.py): shapes, the fusion input, the loss
against hand computations, one training step, and the config errors."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models.config import ConfigError, from_dict
from models.kosti import KostiConfig, KostiLoss, KostiTwoStream, build_kosti, build_kosti_criterion
from models.output import ModelOutput
from models.registry import family_config, model_family

BODY, IMAGE, BATCH = 32, 48, 4


def config_dict(**loss_overrides) -> dict:
    loss = {"discrete_weights": "dynamic", "c": 1.2, "continuous": "smooth_l1", "margin": 1.0,
            "discrete_weight": 0.5, "continuous_weight": 0.5}
    loss.update(loss_overrides)
    backbone = {"name": "resnet18", "pretrained": False, "weights": None}
    return {
        "views": {"body": {"size": BODY, "norm": "imagenet"}, "image": {"size": IMAGE, "norm": "imagenet"}},
        "body_backbone": dict(backbone),
        "context_backbone": dict(backbone),
        "fusion_dim": 16,
        "dropout": 0.5,
        "loss": loss,
        "train": {"batch_size": 52},
    }


def make_config(**loss_overrides) -> KostiConfig:
    return from_dict(KostiConfig, config_dict(**loss_overrides), "model.kosti")


def make_inputs(batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"body": torch.randn(batch, 3, BODY, BODY, generator=gen),
            "image": torch.randn(batch, 3, IMAGE, IMAGE, generator=gen)}


def test_registered_with_its_config_and_criterion():
    family = model_family("kosti")
    assert family.builder is build_kosti
    assert family.config is KostiConfig
    assert family.criterion is build_kosti_criterion
    assert family_config("kosti", config_dict()) == make_config()


def test_multilabel_output_shapes_and_attributes():
    torch.manual_seed(0)
    model = build_kosti(make_config(), num_classes=26, task="multilabel").eval()
    assert model.views == ("body", "image")
    assert {name: spec.size for name, spec in model.view_specs.items()} == {"body": BODY, "image": IMAGE}
    assert model.view_specs["body"].mean == (0.485, 0.456, 0.406)
    assert (model.num_classes, model.task, model.embedding_dim, model.predicts_vad) == (26, "multilabel", None, True)
    with torch.no_grad():
        out = model(make_inputs())
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (BATCH, 26)
    assert out.continuous.shape == (BATCH, 3)
    assert out.attention is None
    # the VAD head starts at the middle of the 1..10 scale
    assert torch.equal(model.continuous_head.bias.detach(), torch.full((3,), 5.5))
    # inputs are cast to the parameters' dtype
    with torch.no_grad():
        half = model({k: v.half() for k, v in make_inputs().items()})
    torch.testing.assert_close(half.logits, out.logits, atol=1e-2, rtol=1e-2)


def test_multiclass_has_no_continuous_head():
    model = build_kosti(make_config(), num_classes=7, task="multiclass").eval()
    assert model.predicts_vad is False and model.continuous_head is None
    assert not [key for key in model.state_dict() if key.startswith("continuous_head")]
    assert "classifier.weight" in model.state_dict()
    with torch.no_grad():
        out = model(make_inputs())
    assert out.logits.shape == (BATCH, 7)
    assert out.continuous is None


class _Probe(nn.Module):
    """A deterministic stand-in trunk: map[b, k] = scale * mean_c(x[b]) + k, so GAP gives
    scale * mean(x[b]) + k per channel k."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.channels, self.scale = channels, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.channels, dtype=x.dtype).view(1, -1, 1, 1)
        return self.scale * x.mean(dim=1, keepdim=True).expand(-1, self.channels, -1, -1) + offsets


def _fusion_input(model: KostiTwoStream, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    seen = []
    handle = model.fusion.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_fusion_reads_the_concatenated_pooled_features():
    torch.manual_seed(0)
    model = build_kosti(make_config(), num_classes=5, task="multilabel").eval()
    inputs = make_inputs()

    # real trunks: the fusion input is [GAP(body map) ; GAP(context map)]
    with torch.no_grad():
        expected = torch.cat([model.body_backbone(inputs["body"]).mean(dim=(2, 3)),
                              model.context_backbone(inputs["image"]).mean(dim=(2, 3))], dim=1)
    got = _fusion_input(model, inputs)
    assert got.shape == (BATCH, 1024)
    torch.testing.assert_close(got, expected)

    # probe trunks: body goes to the body stream, image to the context stream, body first
    model.body_backbone.trunk = _Probe(512, 2.0)
    model.context_backbone.trunk = _Probe(512, -3.0)
    got = _fusion_input(model, inputs)
    channels = torch.arange(512, dtype=torch.float32)
    for b in range(BATCH):
        body_mean = inputs["body"][b].mean().item()
        image_mean = inputs["image"][b].mean().item()
        torch.testing.assert_close(got[b, :512], 2.0 * body_mean + channels, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[b, 512:], -3.0 * image_mean + channels, atol=1e-5, rtol=1e-5)


def test_forward_rejects_missing_views_and_bad_shapes():
    model = build_kosti(make_config(), num_classes=5, task="multilabel").eval()
    inputs = make_inputs()
    with pytest.raises(ValueError, match="missing input view 'image'"):
        model({"body": inputs["body"]})
    with pytest.raises(ValueError, match="input 'body' must be"):
        model({"body": inputs["body"][:, :1], "image": inputs["image"]})
    with pytest.raises(ValueError, match="input 'image' must be"):
        model({"body": inputs["body"], "image": inputs["image"][0]})
    with pytest.raises(ValueError, match="batch sizes differ"):
        model({"body": inputs["body"], "image": inputs["image"][:2]})


# --- the loss against hand computations ---------------------------------------------------

# 3 persons, 3 classes; class 2 is absent from the batch; person 1 has no VAD.
LOGITS = [[0.8, 0.1, 0.3], [0.2, 0.9, -0.1], [1.5, -0.4, 0.6]]
TARGET = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
CONTINUOUS = [[5.0, 6.0, 2.0], [9.0, 9.0, 9.0], [3.0, 7.0, 5.0]]
VAD = [[5.5, 4.0, 2.2], [0.0, 0.0, 0.0], [3.0, 6.1, 8.0]]
HAS_VAD = [True, False, True]
FREQ = [0.3, 0.1, 0.05]


def _hand_discrete(weights: list[float]) -> float:
    per_person = [sum(w * (p - t) ** 2 for w, p, t in zip(weights, logit, target))
                  for logit, target in zip(LOGITS, TARGET)]
    return sum(per_person) / len(per_person)


def _hand_continuous(kind: str, margin: float) -> float:
    def element(x: float) -> float:
        if kind == "smooth_l1":
            return 0.5 * x * x / margin if abs(x) < margin else abs(x) - 0.5 * margin
        return x * x if abs(x) >= margin else 0.0

    per_person = [sum(element(p - v) for p, v in zip(pred, vad))
                  for pred, vad, keep in zip(CONTINUOUS, VAD, HAS_VAD) if keep]
    return sum(per_person) / len(per_person)


def _batch() -> dict[str, torch.Tensor]:
    return {"target": torch.tensor(TARGET), "vad": torch.tensor(VAD), "has_vad": torch.tensor(HAS_VAD)}


def _output() -> ModelOutput:
    return ModelOutput(logits=torch.tensor(LOGITS, requires_grad=True),
                       continuous=torch.tensor(CONTINUOUS, requires_grad=True))


def _loss(task: str = "multilabel", label_freq=None, **overrides) -> KostiLoss:
    return build_kosti_criterion(make_config(**overrides), task=task, loss_name="weighted_mse", label_freq=label_freq)


def test_hand_example_numbers():
    # written out once, so that the helpers above are themselves checked
    dynamic = [1 / math.log(2.2), 1 / math.log(1.2 + 1 / 3), 1 / math.log(1.2)]
    person0 = dynamic[0] * 0.04 + dynamic[1] * 0.01 + dynamic[2] * 0.09
    person1 = dynamic[0] * 0.64 + dynamic[1] * 0.01 + dynamic[2] * 0.01
    person2 = dynamic[0] * 0.25 + dynamic[1] * 0.16 + dynamic[2] * 0.36
    assert _hand_discrete(dynamic) == pytest.approx((person0 + person1 + person2) / 3)
    # errors with VAD: person 0 (-0.5, 2.0, -0.2), person 2 (0.0, 0.9, -3.0)
    assert _hand_continuous("smooth_l1", 1.0) == pytest.approx(((0.125 + 1.5 + 0.02) + (0.0 + 0.405 + 2.5)) / 2)
    assert _hand_continuous("margin_l2", 1.0) == pytest.approx((4.0 + 9.0) / 2)
    assert _hand_continuous("margin_l2", 0.5) == pytest.approx((0.25 + 4.0 + 0.81 + 9.0) / 2)


def test_dynamic_discrete_loss_uses_batch_fractions_and_absent_class_gets_one_over_ln_c():
    loss = _loss()
    weights = loss.class_weights(torch.tensor(TARGET))
    expected = [1 / math.log(1.2 + 1.0), 1 / math.log(1.2 + 1 / 3), 1 / math.log(1.2)]
    torch.testing.assert_close(weights, torch.tensor(expected))
    got = loss.discrete_loss(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert got.item() == pytest.approx(_hand_discrete(expected), rel=1e-6)


def test_static_discrete_loss_uses_train_frequencies_unnormalised():
    loss = _loss(label_freq=np.array(FREQ), discrete_weights="static", c=1.5)
    expected = [1 / math.log(1.5 + p) for p in FREQ]
    torch.testing.assert_close(loss.class_weights(torch.tensor(TARGET)), torch.tensor(expected))
    got = loss.discrete_loss(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert got.item() == pytest.approx(_hand_discrete(expected), rel=1e-6)
    # the same weights for any batch
    torch.testing.assert_close(loss.class_weights(torch.zeros(5, 3)), torch.tensor(expected))


@pytest.mark.parametrize("kind,margin", [("smooth_l1", 1.0), ("smooth_l1", 2.0), ("margin_l2", 1.0),
                                         ("margin_l2", 0.5)])
def test_continuous_loss_skips_persons_without_vad(kind, margin):
    loss = _loss(continuous=kind, margin=margin)
    got = loss.continuous_loss(torch.tensor(CONTINUOUS), torch.tensor(VAD), torch.tensor(HAS_VAD))
    assert got.item() == pytest.approx(_hand_continuous(kind, margin), rel=1e-6)
    # whatever sits in the VAD of a person without VAD (NaN included) changes nothing
    vad = torch.tensor(VAD)
    vad[1] = float("nan")
    again = loss.continuous_loss(torch.tensor(CONTINUOUS), vad, torch.tensor(HAS_VAD))
    assert again.item() == pytest.approx(got.item(), rel=1e-7)


def test_total_loss_is_the_weighted_sum_and_its_gradient_matches():
    loss = _loss(label_freq=np.array(FREQ), discrete_weights="static", continuous="margin_l2",
                 discrete_weight=0.7, continuous_weight=0.3)
    weights = [1 / math.log(1.2 + p) for p in FREQ]
    expected = 0.7 * _hand_discrete(weights) + 0.3 * _hand_continuous("margin_l2", 1.0)
    output = _output()
    total = loss(output, _batch())
    assert loss.name == "kosti"
    assert total.dim() == 0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/dŷ of 0.7 * mean_b sum_j w_j (ŷ - y)^2 = 0.7 * 2 w_j (ŷ - y) / 3
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    torch.testing.assert_close(output.logits.grad, 0.7 * 2 * torch.tensor(weights) * (logits - target) / 3)
    # margin_l2: only errors >= 1 (person 0 arousal 2.0, person 2 dominance -3.0); mean over 2 persons
    expected_grad = torch.zeros(3, 3)
    expected_grad[0, 1] = 0.3 * 2 * 2.0 / 2
    expected_grad[2, 2] = 0.3 * 2 * -3.0 / 2
    torch.testing.assert_close(output.continuous.grad, expected_grad)


def test_batch_without_vad_has_zero_continuous_loss_kept_in_the_graph():
    loss = _loss(discrete_weight=1.0, continuous_weight=1.0)
    output = _output()
    batch = _batch()
    batch["has_vad"] = torch.zeros(3, dtype=torch.bool)
    total = loss(output, batch)
    assert total.item() == pytest.approx(_hand_discrete([1 / math.log(2.2), 1 / math.log(1.2 + 1 / 3),
                                                         1 / math.log(1.2)]), rel=1e-6)
    total.backward()
    assert output.continuous.grad is not None
    assert torch.equal(output.continuous.grad, torch.zeros(3, 3))


def test_multiclass_loss_is_cross_entropy():
    loss = _loss(task="multiclass")
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    got = loss(ModelOutput(logits=logits), {"target": target})
    torch.testing.assert_close(got, F.cross_entropy(logits, target))
    # static weights need no label frequencies on single-label data
    _loss(task="multiclass", discrete_weights="static")


def test_loss_errors_name_what_is_missing():
    loss = _loss()
    batch = _batch()
    del batch["has_vad"]
    with pytest.raises(ValueError, match="no 'has_vad'"):
        loss(_output(), batch)
    with pytest.raises(ValueError, match="continuous"):
        loss(ModelOutput(logits=torch.tensor(LOGITS)), _batch())
    with pytest.raises(ConfigError, match="model.kosti.loss.discrete_weights.*label_freq"):
        _loss(discrete_weights="static")
    with pytest.raises(ValueError, match="divide counts"):
        _loss(discrete_weights="static", label_freq=np.array([3.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="built for 2 classes"):
        _loss(discrete_weights="static", label_freq=np.array([0.1, 0.2]))(_output(), _batch())


# --- training ------------------------------------------------------------------------------

def test_one_sgd_step_moves_both_streams_and_all_heads():
    torch.manual_seed(0)
    model = build_kosti(make_config(), num_classes=5, task="multilabel").train()
    criterion = build_kosti_criterion(model.config, task="multilabel", loss_name="weighted_mse", label_freq=None)
    gen = torch.Generator().manual_seed(1)
    batch = {"target": (torch.rand(BATCH, 5, generator=gen) < 0.4).float(),
             "vad": 1 + 9 * torch.rand(BATCH, 3, generator=gen),
             "has_vad": torch.tensor([True, False, True, True])}
    watched = {
        "body stream": model.body_backbone.trunk[0].weight,
        "body stream, last block": model.body_backbone.trunk[7][1].conv2.weight,
        "context stream": model.context_backbone.trunk[0].weight,
        "context stream, last block": model.context_backbone.trunk[7][1].conv2.weight,
        "fusion": model.fusion[0].weight,
        "classifier": model.classifier.weight,
        "continuous head": model.continuous_head.weight,
        "continuous head bias": model.continuous_head.bias,
    }
    before = {name: p.detach().clone() for name, p in watched.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = criterion(model(make_inputs()), batch)
    assert torch.isfinite(loss)
    assert loss.item() > 0
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    unchanged = [name for name, p in watched.items() if torch.equal(p.detach(), before[name])]
    assert not unchanged
    after = criterion(model(make_inputs()), batch)
    assert torch.isfinite(after)


# --- config errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,match", [
    ("continuous", "l3", r"model\.kosti\.loss\.continuous"),
    ("discrete_weights", "mean", r"model\.kosti\.loss\.discrete_weights"),
    ("c", 1.0, r"model\.kosti\.loss\.c\b"),
    ("c", 0.5, r"model\.kosti\.loss\.c\b"),
    ("discrete_weight", -0.1, r"model\.kosti\.loss\.discrete_weight\b"),
    ("continuous_weight", -1.0, r"model\.kosti\.loss\.continuous_weight"),
    ("margin", 0.0, r"model\.kosti\.loss\.margin"),
])
def test_bad_loss_config_is_a_config_error_naming_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):  # on load, before any work
        make_config(**{key: value})
    cfg = make_config()
    object.__setattr__(cfg.loss, key, value)  # a config made in code, past the load-time checks
    with pytest.raises(ConfigError, match=match):
        build_kosti_criterion(cfg, task="multilabel", loss_name="weighted_mse", label_freq=None)
    with pytest.raises(ConfigError, match=match):
        build_kosti(cfg, num_classes=5, task="multilabel")


def test_margin_l2_accepts_a_zero_margin():
    loss = _loss(continuous="margin_l2", margin=0.0)
    got = loss.continuous_loss(torch.tensor(CONTINUOUS), torch.tensor(VAD), torch.tensor(HAS_VAD))
    assert got.item() == pytest.approx(_hand_continuous("margin_l2", 0.0), rel=1e-6)


def test_missing_view_and_missing_key_are_config_errors():
    data = config_dict()
    del data["views"]["image"]
    with pytest.raises(ConfigError, match=r"model\.kosti\.views.*'image'"):
        build_kosti(from_dict(KostiConfig, data, "model.kosti"), num_classes=5, task="multilabel")
    data = copy.deepcopy(config_dict())
    del data["loss"]["margin"]
    with pytest.raises(ConfigError, match=r"model\.kosti\.loss\.margin"):
        from_dict(KostiConfig, data, "model.kosti")
    with pytest.raises(ConfigError, match=r"model\.kosti\.dropout"):
        build_kosti(from_dict(KostiConfig, {**config_dict(), "dropout": 1.0}, "model.kosti"),
                    num_classes=5, task="multilabel")
    with pytest.raises(ConfigError, match=r"model\.kosti\.fusion_dim"):
        build_kosti(from_dict(KostiConfig, {**config_dict(), "fusion_dim": 0}, "model.kosti"),
                    num_classes=5, task="multilabel")
