"""Pure-PyTorch models of ctxemo: the registry and factory, losses, checkpoint specs.

    from models import build_model, build_loss, model_spec, model_from_checkpoint

Names resolve lazily so that `models.config` (imported by every stage to read
params.yaml) does not pull in torch and torchvision.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RRLAConfig": "models.config",
    "build_loss": "models.losses",
    "build_criterion": "models.factory",
    "available_models": "models.factory",
    "build_model": "models.factory",
    "model_from_checkpoint": "models.factory",
    "model_spec": "models.factory",
    "register_model": "models.registry",
    "ModelOutput": "models.output",
    "RelationalRegionLevelNet": "models.rrla",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
