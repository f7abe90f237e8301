"""Torchvision's COCO detector weights, found only where they already are: shared by `ctxemo predict`'s
person finder (core/detection/people.py) and the people stage (core/detection/person_detector.py).

Inference and the demo must run offline, and a silent download would change which model runs, so
looking for the weights never downloads them.
"""
from __future__ import annotations

from pathlib import Path

from core.errors import UserError


def cached_enum_weights(detector: str):
    """The torchvision COCO weight enum of `detector` when its file is already in the torch hub
    cache, else None: looking never downloads."""
    import os
    from urllib.parse import urlparse

    import torch
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(detector).DEFAULT
    except (ValueError, KeyError):
        raise UserError(f"unknown torchvision detector {detector!r}") from None
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return weights if cached.is_file() else None
