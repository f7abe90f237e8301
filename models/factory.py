"""The one factory and the checkpoint spec.

`params.yaml: model.name` picks a family registered with `@register_model(name, config=...)`
(models/registry.py) and `model.<name>` is its config; this module imports every built-in
family so that they are registered before `build_model` looks one up. A built model carries
`family`, `config`, `num_classes`, `task` and `embedding_dim`: that is all `model_spec` needs
to rebuild it.

A checkpoint stores `model_spec(model)` (a JSON-able dict) next to `model.state_dict()`;
`model_from_checkpoint(spec, state_dict)` rebuilds the same network without reading any
file or downloading weights (every tensor, the label-graph buffers included, comes from the
state_dict) and returns it in eval mode.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

# the built-in model families: importing one registers it
from models import benet, caernet, dagnet, kosti, rrla, sibnet  # noqa: F401
from models.config import ConfigError, to_dict
from models.losses import LogitsCriterion, build_loss
from models.registry import family_config, model_family, registered_models

TASKS = ("multilabel", "multiclass")
SPEC_FORMAT = "ctxemo.model_spec/2"


def available_models() -> tuple[str, ...]:
    return registered_models()


def build_model(
    name: str,
    cfg: Any,
    *,
    num_classes: int,
    task: str,
    cooccurrence: np.ndarray | torch.Tensor | None = None,
    label_embeddings: np.ndarray | torch.Tensor | None = None,
    load_pretrained: bool = True,
) -> nn.Module:
    """Build the network of family `name` with config `cfg` (typed, or the `model.<name>` dict).

    task: "multilabel" (EMOTIC) or "multiclass" (CAER-S). `load_pretrained=False` skips the
    backbone's pretrained weights (model_from_checkpoint uses it; training leaves it True).
    """
    family = model_family(name)
    cfg = family_config(name, cfg)
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if num_classes < 1 or (task == "multiclass" and num_classes < 2):
        raise ConfigError(f"num_classes={num_classes} is too small for a {task} model")
    model = family.builder(
        cfg,
        num_classes=num_classes,
        task=task,
        cooccurrence=cooccurrence,
        label_embeddings=label_embeddings,
        load_pretrained=load_pretrained,
    )
    model.family = name
    return model


def build_criterion(model: nn.Module, loss_name: str, label_freq: np.ndarray | None, *, seed: int = 0) -> nn.Module:
    """The training loss of `model`: its family's own criterion, else `train.loss` on the logits.

    The returned module's forward takes (ModelOutput, batch) and returns a scalar. `seed` seeds
    whatever randomness a criterion has of its own (SIB-Net's distribution labels).
    """
    model = _unwrap(model)
    family = model_family(model.family)
    if family.criterion is not None:
        return family.criterion(model.config, task=model.task, loss_name=loss_name, label_freq=label_freq,
                                seed=seed)
    return LogitsCriterion(build_loss(loss_name if model.task == "multilabel" else "cross_entropy", model.task,
                                      label_freq))


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel (and DataParallel) keep the real network in `.module`.
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """Everything `model_from_checkpoint` needs besides the state_dict (JSON-able)."""
    model = _unwrap(model)
    for attr in ("family", "config", "num_classes", "task", "embedding_dim"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} was not built by build_model (no .{attr})")
    return {
        "format": SPEC_FORMAT,
        "name": model.family,
        "config": to_dict(model.config),
        "num_classes": int(model.num_classes),
        "task": model.task,
        "embedding_dim": None if model.embedding_dim is None else int(model.embedding_dim),
    }


# Config keys that were added after checkpoints had been written, with the value that rebuilds
# the network those older checkpoints hold (what the code did before the key existed). Only a
# checkpoint's own spec is completed this way; params.yaml must name every key.
KEYS_ADDED_LATER: dict[str, dict[str, Any]] = {
    "rrla": {"standardise_objects": True, "eld.propagation": "as_written", "eld.activation": "between_layers",
             "boa.value_dim": None},
}


def with_keys_added_later(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a checkpoint's `model.<name>`) with the keys of KEYS_ADDED_LATER it lacks."""
    config = copy.deepcopy(config)
    for dotted, value in KEYS_ADDED_LATER.get(name, {}).items():
        *parents, leaf = dotted.split(".")
        section = config
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and leaf not in section:
            section[leaf] = value
    return config


def model_from_checkpoint(spec: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the network described by `spec` and load `state_dict` into it (strict)."""
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ConfigError(f"checkpoint model spec: expected format {SPEC_FORMAT!r}, got {found!r}")
    missing = [k for k in ("name", "config", "num_classes", "task", "embedding_dim") if k not in spec]
    if missing:
        raise ConfigError(f"checkpoint model spec lacks {missing}")
    num_classes, embedding_dim = int(spec["num_classes"]), spec["embedding_dim"]
    cooccurrence = label_embeddings = None
    if embedding_dim is not None:
        # Placeholders of the right shape: the real P, Z and Â come from the state_dict.
        cooccurrence = torch.zeros(num_classes, num_classes)
        label_embeddings = torch.zeros(num_classes, int(embedding_dim))
    model = build_model(
        spec["name"],
        with_keys_added_later(spec["name"], spec["config"]) if isinstance(spec["config"], dict) else spec["config"],
        num_classes=num_classes,
        task=spec["task"],
        cooccurrence=cooccurrence,
        label_embeddings=label_embeddings,
        load_pretrained=False,
    )
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint state_dict does not match its model spec: {exc}") from exc
    return model.eval()
