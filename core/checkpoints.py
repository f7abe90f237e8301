"""Reading ctxemo's checkpoint files without ever running code from them.

`torch.load(..., weights_only=False)` unpickles arbitrary objects, so a crafted `model.pt`
(`ctxemo predict --model <folder>`, a registry download, a checkpoint on shared storage) runs
whatever its `__reduce__` names the moment it is read. ctxemo's files hold only tensors and
plain Python values (dicts, lists, numbers, strings: the state_dicts, the model spec, the
params, the metrics), which is exactly what torch's `weights_only=True` unpickler accepts, so
everything is read with it. A file with anything else is refused before any of it runs.

A file that cannot be read at all (cut short by a full disk or a killed copy, an empty or
zeroed file, a git-lfs pointer, not a PyTorch file) is a UserError too: one line naming the
file, saying it is truncated or corrupt and how to get a good one, never torch's traceback.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

from core.errors import UserError

REMEDY = "get a good copy: retrain (`dvc repro train`) or restore the tracked one (`dvc checkout`)"
# What torch raises on bytes that are no (longer a) checkpoint: the zip reader's RuntimeError
# ("PytorchStreamReader failed ..."), EOFError and OSError(EINVAL) for a file cut short, and the
# legacy-format reader's KeyError, ValueError, UnicodeDecodeError, struct.error on garbage.
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, struct.error, zipfile.BadZipFile)
# Weights-only unpickler errors that mean malformed bytes rather than a forbidden object.
MALFORMED_PICKLE = ("Unsupported operand", "String is too long", "persistent id", "truncated")


def load(path: str | Path, *, what: str = "checkpoint", remedy: str = REMEDY) -> dict[str, Any]:
    """The dict saved at `path`, read with torch's weights-only unpickler (tensors and plain values only).

    Raises UserError when the file holds anything else (refused, nothing run) or cannot be read
    (truncated or corrupt; `remedy` says how to get a good one).
    """
    import torch

    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise EOFError("the file is empty")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(marker in str(exc) for marker in MALFORMED_PICKLE):
            raise _unreadable(path, what, remedy, exc) from None
        raise UserError(f"{what} {path}: refused: it holds objects other than tensors and plain values, which a "
                        f"ctxemo file never does (a tampered or foreign file?); nothing in it was run. "
                        f"torch: {_reason(exc, prefer='GLOBAL')}") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise UserError(f"{what} {path}: cannot be read: {exc.strerror or exc}") from None
    except UNREADABLE as exc:
        raise _unreadable(path, what, remedy, exc) from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path}: expected a dict of tensors and values, found {type(state).__name__}")
    return state


def _unreadable(path: Path, what: str, remedy: str, exc: BaseException) -> UserError:
    return UserError(f"{what} {path}: truncated or corrupt, it cannot be read as a PyTorch checkpoint "
                     f"({_reason(exc)}); nothing in it was run; {remedy}")


def _reason(exc: BaseException, prefer: str = "") -> str:
    """One line of torch's message: the first one holding `prefer`, else the first, else the type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    chosen = next((line for line in lines if prefer and prefer in line), lines[0] if lines else "")
    if len(chosen) > 160:  # torch's zip errors go on about miniz internals
        chosen = chosen[:157] + "..."
    return f"{type(exc).__name__}: {chosen}" if chosen else type(exc).__name__


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
