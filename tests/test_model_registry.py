"""Every registered model, built from params.yaml the way training builds it.

The test is parametrized over the registry, so a model family added later is covered the day it
registers: it must build from its params section, declare known views, take the loader's batch of
exactly those views (core/data/dataset.py `model_inputs`), produce [B, C] scores for both tasks,
train one step through its own criterion (models/factory.py `build_criterion`) with a gradient in
every trainable parameter, and come back identical from its checkpoint spec.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from support import repo_params

from core.data.dataset import input_keys, model_inputs
from core.data.views import VIEWS
from models import available_models, build_criterion, build_model, model_from_checkpoint, model_spec
from models.config import ViewConfig, replace_path
from models.registry import model_family, register_model

torch.set_num_threads(1)
BATCH, OBJECTS, EMBED_DIM = 3, 3, 50
TASKS = [("multilabel", 26), ("multiclass", 7)]


def small_views(cfg):
    """The family's params with every view shrunk to 32 pixels (the test runs in seconds)."""
    return replace_path(cfg, "views", {name: ViewConfig(32, view.norm) for name, view in cfg.views.items()})


def build_from_params(name: str, num_classes: int, task: str):
    cfg = small_views(repo_params().model.family(name))
    rng = np.random.default_rng(0)
    cooccurrence = rng.random((num_classes, num_classes)).astype(np.float32)
    np.fill_diagonal(cooccurrence, 0.0)
    torch.manual_seed(0)
    return build_model(name, cfg, num_classes=num_classes, task=task, cooccurrence=cooccurrence,
                       label_embeddings=rng.standard_normal((num_classes, EMBED_DIM)).astype(np.float32))


def tiny_batch(model, num_classes: int, task: str) -> dict[str, torch.Tensor]:
    """What PersonDataset yields for this model: its views' tensors, the target, VAD."""
    gen = torch.Generator().manual_seed(0)
    batch: dict[str, torch.Tensor] = {}
    for name in model.views:
        if name == "objects":
            corner = torch.rand(BATCH, OBJECTS, 2, generator=gen) * 100
            batch.update({
                "obj_feats": torch.rand(BATCH, OBJECTS, 2048, generator=gen).to(torch.float16),
                "obj_boxes": torch.cat([corner, corner + 20], dim=-1),
                "obj_mask": torch.tensor([[True, True, False], [True, False, False], [True, True, True]]),
                "person_box": torch.tensor([[10.0, 10.0, 60.0, 120.0]] * BATCH),
            })
            continue
        size, grid = model.view_specs[name].size, model.view_specs[name].grid
        shape = (BATCH, grid * grid, 3, size, size) if name == "patches" else (BATCH, 3, size, size)
        batch[name] = torch.randn(*shape, generator=gen)
    if getattr(model, "box_view", None):  # the person box in that view's pixels (BENet)
        size = model.view_specs[model.box_view].size
        batch["person_box"] = torch.tensor([[2.0, 3.0, 20.0, 30.0], [0.0, 0.0, size, size], [16.0, 8.0, 31.0, 31.0]])
    batch["target"] = ((torch.rand(BATCH, num_classes, generator=gen) < 0.3).float() if task == "multilabel"
                       else torch.tensor([0, num_classes - 1, 1]))
    batch["vad"] = torch.rand(BATCH, 3, generator=gen) * 9 + 1
    batch["has_vad"] = torch.tensor([True, False, True])
    return batch


def image_batch(model, num_classes: int) -> dict[str, torch.Tensor]:
    """What core/data/image_dataset.py yields a model that trains on whole images: one image per head."""
    from models.benet_config import HEADS

    gen = torch.Generator().manual_seed(1)
    size = 64  # one image per head: the 1/32 map of a 32-pixel image is one cell, too few for BatchNorm
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [16.0, 8.0, 31.0, 31.0]]).expand(len(HEADS), 2, 4).clone()
    return {"image": torch.randn(len(HEADS), 3, size, size, generator=gen), "head": torch.arange(len(HEADS)),
            "boxes": boxes, "labels": (torch.rand(len(HEADS), 2, num_classes, generator=gen) < 0.3).float(),
            "num_people": torch.tensor([2, 2, 1, 1]), "index": torch.arange(len(HEADS))}


def test_the_registry_holds_the_flagship_and_the_baselines():
    assert {"rrla", "kosti", "caernet"} <= set(available_models())


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_has_a_params_section_and_declares_known_views(name):
    assert isinstance(repo_params().model.family(name), model_family(name).config)
    model = build_from_params(name, 26, "multilabel")
    assert model.views and set(model.views) <= set(VIEWS), model.views
    pixel_views = {v for v in model.views if v != "objects"}
    assert set(model.view_specs) == pixel_views
    batch = tiny_batch(model, 26, "multilabel")
    located = ("person_box",) if getattr(model, "box_view", None) else ()
    assert set(model_inputs(model, batch)) == set(input_keys(model.views) + located)


@pytest.mark.parametrize("task,num_classes", TASKS)
@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_builds_trains_and_round_trips(name, task, num_classes):
    model = build_from_params(name, num_classes, task).train()
    batch = tiny_batch(model, num_classes, task)
    output = model(model_inputs(model, batch))
    assert output.logits.shape == (BATCH, num_classes) and torch.isfinite(output.logits).all()
    if model.predicts_vad:
        assert output.continuous.shape == (BATCH, 3)

    criterion = build_criterion(model, repo_params().train.loss, np.full(num_classes, 0.1))
    if getattr(model, "trains_on", "persons") == "images":  # its training batch is whole images
        model.zero_grad(set_to_none=True)
        batch_images = image_batch(model, num_classes)
        output = model(model_inputs(model, batch_images))
        loss = criterion(output, batch_images)
    else:
        loss = criterion(output, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []

    model.eval()
    spec = model_spec(model)
    assert spec["name"] == name
    again = model_from_checkpoint(spec, model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(model_inputs(model, batch)).logits, model(model_inputs(model, batch)).logits)


def test_the_flagship_reads_the_face_on_single_label_data_and_the_body_otherwise():
    assert build_from_params("rrla", 26, "multilabel").views == ("body", "objects")
    assert build_from_params("rrla", 7, "multiclass").views == ("face", "objects")


def test_an_unknown_name_or_a_second_registration_is_an_error():
    from models.config import ConfigError, RRLAConfig

    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        model_family("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_model("rrla", config=RRLAConfig)(lambda cfg, **kwargs: None)
