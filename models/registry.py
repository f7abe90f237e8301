"""The model registry: names to model families, and nothing else.

A model family registers itself with `@register_model("name", config=ConfigClass)` when its
module is imported; `models/factory.py` imports the families and builds them. This module
imports no model (the register/factory split timm uses), so a model module can import it
without a cycle.

A family is
- a builder `(cfg, *, num_classes, task, cooccurrence, label_embeddings, load_pretrained)`
  returning an nn.Module that carries `config` (its config), `num_classes`, `task`,
  `embedding_dim` (d_z of the label embeddings it holds, None if it holds none), `views` (the
  names of the input views it reads, core/data/views.py lists them), `view_specs` (size and
  normalisation of each pixel view) and `predicts_vad`; its forward takes one mapping of
  input tensors (a view name, or for the `objects` view obj_feats/obj_boxes/obj_mask/
  person_box) and returns a models.output.ModelOutput;
  optional class attributes say how the pipeline feeds it (absent: one annotated person per item):
  `trains_on = "images"` (whole images with all their people, core/data/image_dataset.py),
  `box_view` (the view in whose pixels forward reads `person_box` on person-level items) and
  `finds_people` (it detects people itself, core/bottom_up.py); BENet sets all three;
- `config`: the dataclass of its `model.<name>` params section;
- `criterion` (optional): `(cfg, *, task, loss_name, label_freq, seed)` returning the module whose
  forward(output, batch) is the training loss; without one the family trains with
  `train.loss` on its logits (models/losses.py, `LogitsCriterion`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from models.config import ConfigError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    builder: Builder
    config: type
    criterion: Callable[..., nn.Module] | None


_REGISTRY: dict[str, ModelFamily] = {}


def register_model(name: str, *, config: type, criterion: Callable[..., nn.Module] | None = None
                   ) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        family = ModelFamily(name, builder, config, criterion)
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = family
        return builder

    return decorate


def registered_models() -> tuple[str, ...]:
    """Names registered so far (models/factory.py imports every built-in family first)."""
    return tuple(sorted(_REGISTRY))


def model_family(name: str) -> ModelFamily:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def family_config(name: str, section: Any) -> Any:
    """The typed config of family `name`: `section` as is when already typed, else from its dict."""
    from models.config import from_dict

    family = model_family(name)
    if isinstance(section, family.config):
        return section
    return from_dict(family.config, section, f"model.{name}")
