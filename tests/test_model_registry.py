"""Every registered model, built from params.yaml the way training builds it.

The test is parametrized over the registry, so a model family added later is covered the day it
registers: it must build from params, take the loader's batch (core/data/dataset.py
`model_inputs`), produce [B, C] scores for both tasks, get a gradient in every trainable
parameter, and come back identical from its checkpoint spec.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from support import repo_params

from core.data.dataset import model_inputs
from models import (
    available_models,
    build_loss,
    build_model,
    model_from_checkpoint,
    model_spec,
)
from models.config import replace_path
from models.registry import model_builder, register_model

torch.set_num_threads(1)
BATCH, OBJECTS, INPUT, EMBED_DIM = 2, 3, 64, 50
TASKS = [("multilabel", 26), ("multiclass", 7)]


def tiny_batch(num_classes: int, task: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(BATCH, OBJECTS, 2, generator=gen) * 100
    return {
        "body": torch.randn(BATCH, 3, INPUT, INPUT, generator=gen),
        "obj_feats": torch.rand(BATCH, OBJECTS, 2048, generator=gen).to(torch.float16),
        "obj_boxes": torch.cat([corner, corner + 20], dim=-1),
        "obj_mask": torch.tensor([[True, True, False], [True, False, False]]),
        "person_box": torch.tensor([[10.0, 10.0, 60.0, 120.0]] * BATCH),
        "target": ((torch.rand(BATCH, num_classes, generator=gen) < 0.3).float() if task == "multilabel"
                   else torch.tensor([0, num_classes - 1])),
    }


def build_from_params(name: str, num_classes: int, task: str):
    cfg = replace_path(replace_path(repo_params().model, "name", name), "backbone.input_size", INPUT)
    rng = np.random.default_rng(0)
    cooccurrence = rng.random((num_classes, num_classes)).astype(np.float32)
    np.fill_diagonal(cooccurrence, 0.0)
    torch.manual_seed(0)
    return build_model(cfg, num_classes=num_classes, task=task, cooccurrence=cooccurrence,
                       label_embeddings=rng.standard_normal((num_classes, EMBED_DIM)).astype(np.float32))


def test_the_registry_holds_the_flagship():
    assert "rrla" in available_models()


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_declares_known_views(name):
    from core.data.views import VIEWS

    model = build_from_params(name, 26, "multilabel")
    assert model.views and set(model.views) <= set(VIEWS), model.views


@pytest.mark.parametrize("task,num_classes", TASKS)
@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_builds_trains_and_round_trips(name, task, num_classes):
    model = build_from_params(name, num_classes, task).train()
    batch = tiny_batch(num_classes, task)
    logits = model(*model_inputs(batch)).logits
    assert logits.shape == (BATCH, num_classes) and torch.isfinite(logits).all()

    loss_name = repo_params().train.loss if task == "multilabel" else "cross_entropy"
    loss = build_loss(loss_name, task, np.full(num_classes, 0.1))(logits, batch["target"])
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []

    model.eval()
    again = model_from_checkpoint(model_spec(model), model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(*model_inputs(batch)).logits, model(*model_inputs(batch)).logits)


def test_an_unknown_name_or_a_second_registration_is_an_error():
    from models.config import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        model_builder("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_model("rrla")(lambda cfg, **kwargs: None)
