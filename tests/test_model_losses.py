"""Losses: eq. 9 weights and value, BCE, focal, cross-entropy, and the factory's errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.config import ConfigError
from models.losses import build_loss, emotic_class_weights


def test_alpha_matches_hand_computation_sums_to_one_and_falls_with_frequency():
    alpha = emotic_class_weights(np.array([0.1, 0.5, 0.9]))
    # 1/ln(1.3), 1/ln(1.7), 1/ln(2.1), normalised
    assert np.allclose(alpha, [0.54110758, 0.26754567, 0.19134674], atol=1e-8)
    freq = np.random.default_rng(0).random(26)
    alpha = emotic_class_weights(freq)
    assert math.isclose(alpha.sum(), 1.0, abs_tol=1e-12)
    by_frequency = alpha[np.argsort(freq)]
    assert (np.diff(by_frequency) < 0).all()


def test_weighted_mse_equals_equation_9():
    freq = np.array([0.1, 0.5, 0.9])
    alpha = [0.54110758, 0.26754567, 0.19134674]
    loss_fn = build_loss("weighted_mse", "multilabel", freq)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 1.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    first = alpha[0] * 1.0 + alpha[2] * 1.0
    second = alpha[0] * 0.25 + alpha[1] * 1.0
    loss = loss_fn(logits, targets)
    assert math.isclose(loss.item(), (first + second) / 2, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(logits.grad[0], torch.tensor([alpha[0], 0.0, -alpha[2]]), atol=1e-6)
    assert loss_fn.name == "weighted_mse"


def test_bce_and_focal_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=gen)
    targets = (torch.rand(4, 5, generator=gen) < 0.4).float()
    bce = build_loss("bce", "multilabel", None)(logits, targets)
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(logits, targets))

    prob = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, prob, 1 - prob)
    expected = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert torch.allclose(build_loss("focal", "multilabel", None)(logits, targets), expected, atol=1e-6)
    balanced = build_loss("focal", "multilabel", None, focal_alpha=0.25, focal_gamma=1.0)(logits, targets)
    alpha_t = torch.where(targets == 1, 0.25, 0.75)
    assert torch.allclose(balanced, (-alpha_t * (1 - p_t) * torch.log(p_t)).mean(), atol=1e-6)


@pytest.mark.parametrize("name", ["cross_entropy", "weighted_mse", "bce", "focal"])
def test_multiclass_always_uses_cross_entropy(name):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    loss_fn = build_loss(name, "multiclass", None)
    assert loss_fn.name == "cross_entropy"
    assert torch.allclose(loss_fn(logits, targets), F.cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="integer class ids"):
        loss_fn(logits, F.one_hot(targets, 3).float())


def test_factory_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        build_loss("hinge", "multilabel", None)
    with pytest.raises(ConfigError, match="single-label"):
        build_loss("cross_entropy", "multilabel", None)
    with pytest.raises(ConfigError, match="needs label_freq"):
        build_loss("weighted_mse", "multilabel", None)
    with pytest.raises(ValueError, match="divide counts"):
        build_loss("weighted_mse", "multilabel", np.array([3.0, 10.0]))
    with pytest.raises(ValueError, match="built for 2 classes"):
        build_loss("weighted_mse", "multilabel", np.array([0.3, 0.1]))(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="task must be"):
        build_loss("bce", "regression", None)


# --- the factory's criterion: how training calls the loss -----------------------------


def _rrla(task: str, num_classes: int):
    import dataclasses

    from support import repo_params

    from models.factory import build_model

    cfg = dataclasses.replace(repo_params().model.rrla, eld=dataclasses.replace(repo_params().model.rrla.eld,
                                                                                enabled=False))
    return build_model("rrla", cfg, num_classes=num_classes, task=task)


@pytest.mark.parametrize("name", ["weighted_mse", "bce", "focal"])
def test_rrla_criterion_is_train_loss_on_the_logits(name):
    from models.factory import build_criterion
    from models.output import ModelOutput

    freq = np.array([0.1, 0.5, 0.9])
    criterion = build_criterion(_rrla("multilabel", 3), name, freq)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=gen)
    targets = (torch.rand(4, 3, generator=gen) < 0.4).float()
    expected = build_loss(name, "multilabel", freq)(logits, targets)
    got = criterion(ModelOutput(logits=logits), {"target": targets, "index": torch.arange(4)})
    assert torch.allclose(got, expected, atol=1e-7) and got.dim() == 0
    assert criterion.name == name


def test_rrla_criterion_on_single_label_data_is_cross_entropy_and_unwraps_ddp():
    from models.factory import build_criterion
    from models.output import ModelOutput

    class Wrapped(torch.nn.Module):  # what DistributedDataParallel looks like to the factory
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = _rrla("multiclass", 3)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    for criterion in (build_criterion(model, "weighted_mse", None), build_criterion(Wrapped(model), "bce", None)):
        assert criterion.name == "cross_entropy"
        assert torch.allclose(criterion(ModelOutput(logits=logits), {"target": targets}),
                              F.cross_entropy(logits, targets))
