"""The optimiser's parameter groups (train.backbone_lr) and the step schedule (train.lr_steps, lr_gamma)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core.params import apply_overrides, params_from_dict
from core.training.loop import _optimizer, lr_factor, set_learning_rates
from models import build_model
from models.config import ConfigError

SIBNET_STEPS = [0.5, 0.75, 0.875]  # the SIB-Net paper's decays, x0.1 each


@pytest.mark.parametrize("progress, factor", [
    (0.0, 1.0), (0.4999, 1.0), (0.5, 0.1), (0.74, 0.1), (0.75, 0.01), (0.8749, 0.01), (0.875, 0.001), (0.99, 0.001),
])
def test_the_learning_rate_drops_tenfold_at_each_step_fraction(progress, factor):
    assert lr_factor(progress, SIBNET_STEPS, 0.1) == pytest.approx(factor)


def test_no_steps_keep_the_learning_rate():
    assert lr_factor(0.99, [], 0.1) == 1.0


def _caernet_and_params(repo_params_dict, **train):
    params = params_from_dict(apply_overrides(repo_params_dict, {f"train.{k}": v for k, v in train.items()}))
    model = build_model("caernet", params.model.caernet, num_classes=7, task="multiclass", load_pretrained=False)
    return model, params


def test_backbone_lr_gives_the_trunks_their_own_group_and_the_schedule_scales_both(repo_params_dict):
    model, params = _caernet_and_params(repo_params_dict, optimizer="adam", lr=1e-3, backbone_lr=1e-4)
    optimizer = _optimizer(model, params)
    assert isinstance(optimizer, torch.optim.Adam)
    backbone = {id(p) for p in model.backbone_parameters()}
    trunk_group, rest_group = optimizer.param_groups
    assert {id(p) for p in trunk_group["params"]} == backbone and trunk_group["lr"] == 1e-4
    assert not backbone & {id(p) for p in rest_group["params"]} and rest_group["lr"] == 1e-3
    assert len(trunk_group["params"]) + len(rest_group["params"]) == len(list(model.parameters()))

    set_learning_rates(optimizer, 0.8, SIBNET_STEPS, 0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-6, 1e-5])
    # a resumed run reloads the optimiser and continues on the same schedule: base lrs survive the state dict
    fresh = _optimizer(model, params)
    fresh.load_state_dict(optimizer.state_dict())
    set_learning_rates(fresh, 0.9, SIBNET_STEPS, 0.1)
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx([1e-7, 1e-6])


def test_without_backbone_lr_everything_trains_at_lr(repo_params_dict):
    model, params = _caernet_and_params(repo_params_dict, optimizer="sgd", lr=0.01)
    (group,) = _optimizer(model, params).param_groups
    assert group["lr"] == 0.01 and len(group["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("train, message", [
    ({"optimizer": "rmsprop"}, r"optimizer must be one of \['sgd', 'adam', 'adamw'\]"),
    ({"lr_steps": [0.75, 0.5]}, "increasing fractions"),
    ({"lr_steps": [1.0]}, "increasing fractions"),
    ({"lr_gamma": 0.0}, r"lr_gamma must be a number in \(0, 1\]"),
    ({"backbone_lr": -1e-4}, "backbone_lr must be a number > 0"),
])
def test_schedule_mistakes_are_config_errors_before_any_work(repo_params_dict, train, message):
    with pytest.raises(ConfigError, match=message):
        params_from_dict(apply_overrides(repo_params_dict, {f"train.{k}": v for k, v in train.items()}))


def test_a_models_own_train_section_is_checked_too(repo_params_dict):
    data = apply_overrides(repo_params_dict, {"model.caernet.train.lr_steps": [0.9, 0.1]})
    with pytest.raises(ConfigError, match=r"model\.caernet\.train.*increasing fractions"):
        params_from_dict(data).for_model("caernet")
    assert dataclasses.is_dataclass(params_from_dict(repo_params_dict).train)


@pytest.mark.parametrize("optimizer, tolerance", [("sgd", 1e-7), ("adam", 1e-6), ("adamw", 1e-6)])
def test_the_fused_optimiser_makes_the_update_the_per_tensor_one_makes(repo_params_dict, optimizer, tolerance):
    model, params = _caernet_and_params(repo_params_dict, optimizer=optimizer, lr=0.01, weight_decay=5e-4)
    fused = _optimizer(model, params)
    assert all(group["fused"] for group in fused.param_groups)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    reference = type(fused)(twin, lr=0.01, weight_decay=5e-4, **({"momentum": 0.9} if optimizer == "sgd" else {}))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        fused.step()
        reference.step()
    worst = max((p - q).abs().max().item() for p, q in zip(model.parameters(), twin))
    assert worst <= tolerance
