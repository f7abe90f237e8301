"""The model registry: names to builders, and nothing else.

A model family registers its builder with `@register_model("name")` when its module is
imported; `models/factory.py` imports the families and builds them. This module imports no
model (the register/factory split timm uses), so a model module can import it without a cycle.

A builder takes `(cfg, *, num_classes, task, cooccurrence, label_embeddings, load_pretrained)`
and returns an nn.Module that carries `config` (its ModelConfig), `num_classes`, `task`,
`embedding_dim` (d_z of the label embeddings it holds, None if it holds none) and `views`, the
names of the input views it reads (core/data/views.py lists them).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.config import ConfigError

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def registered_models() -> tuple[str, ...]:
    """Names registered so far (models/factory.py imports every built-in family first)."""
    return tuple(sorted(_REGISTRY))


def model_builder(name: str) -> Builder:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]
