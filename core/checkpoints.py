"""Reading ctxemo's checkpoint files without ever running code from them.

`torch.load(..., weights_only=False)` unpickles arbitrary objects, so a crafted `model.pt`
(`ctxemo predict --model <folder>`, a registry download, a checkpoint on shared storage) runs
whatever its `__reduce__` names the moment it is read. ctxemo's files hold only tensors and
plain Python values (dicts, lists, numbers, strings: the state_dicts, the model spec, the
params, the metrics), which is exactly what torch's `weights_only=True` unpickler accepts, so
everything is read with it. A file with anything else is refused before any of it runs.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from core.errors import UserError


def load(path: str | Path, *, what: str = "checkpoint") -> dict[str, Any]:
    """The dict saved at `path`, read with torch's weights-only unpickler (tensors and plain values only)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {path}: refused: it holds objects other than tensors and plain values, which a "
                        f"ctxemo file never does (a tampered or foreign file?); nothing in it was run. "
                        f"torch: {reason}") from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path}: expected a dict of tensors and values, found {type(state).__name__}")
    return state


def plain(value: Any) -> Any:
    """`value` with numpy scalars and arrays turned into Python numbers and lists, recursively (tensors kept),
    so that what ctxemo saves always loads with `load`."""
    import numpy as np

    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
