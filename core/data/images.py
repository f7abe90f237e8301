"""Decoding images the same way in every stage (detect, objects, training loader, predict).

Boxes in the manifest refer to the pixels as stored, so EXIF orientation is deliberately
NOT applied: rotating the image would move every annotated box.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import UserError


class ImageReadError(UserError):
    """An image file is missing, truncated or not an image; the message names the file."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode `path` fully into an RGB uint8 array of shape [H, W, 3].

    `Image.load()` forces the whole decode here, so a truncated file fails now with a clear
    message instead of later inside a model or a DataLoader worker.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    array = np.array(rgb, dtype=np.uint8)  # a writable copy: torch.from_numpy refuses read-only memory
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"{path}: decoded to an empty image of shape {array.shape}")
    return array


def as_rgb_array(image: Any) -> np.ndarray:
    """A PIL image or an H x W x 3 uint8 array as a contiguous RGB uint8 array.

    For callers handed an image already in memory (detectors on new photos, tests), so they accept
    what `load_rgb` returns and what PIL opens alike.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {image.shape} {image.dtype}")
        return np.ascontiguousarray(image)
    return np.asarray(image.convert("RGB"))
