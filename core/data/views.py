"""Input views: the images a context model looks at, built from one person of one photo.

Every published context model reads some of the same few views of a target person (#13):

| view | what it is | who reads it |
|---|---|---|
| `body` | the person box, cropped | rrla, Kosti, DAG-Net |
| `face` | the face box, cropped (fallback below) | CAER-Net-S, rrla on CAER-S |
| `image` | the whole image | Kosti, BENet |
| `image_body_masked` | the whole image, the person box zeroed | SIB-Net, DAG-Net |
| `image_face_masked` | the whole image, the face box zeroed | CAER-Net-S, SIB-Net |
| `image_people_masked` | the whole image, every annotated person's box zeroed | BENet's background head |
| `patches` | the whole image cut into an N x N grid | DAG-Net |
| `objects` | top-N object features and boxes (the objects stage) | rrla |

This module builds the pixel views on an RGB array; the loader resizes and normalises each
as the model's params say (`ViewSpec`, models/config.py). Boxes are [x1, y1, x2, y2] in pixels with x2, y2
exclusive edges; `pixel_box` is the one rule that turns a float box into the pixels it covers
(every pixel the box touches, clamped to the image), so a mask and a crop of the same box
cover exactly the same pixels. Masks zero the box region, as the papers do.

A person without a detected face gets `face_fallback(body_box)`: the square at the top of the
body box whose side is the smaller of the box's width and a third of its height, centred
horizontally (where a standing person's head is). `face_box_or_fallback` says when it was used
so that the loader can count and report it; it is never silent.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from models.config import ViewSpec  # noqa: F401  (the loader's spec of a view; re-exported)

PIXEL_VIEWS = ("body", "face", "image", "image_body_masked", "image_face_masked", "image_people_masked", "patches")
VIEWS = (*PIXEL_VIEWS, "objects")

Box = Sequence[float]


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a float box covers, clamped to the image: [x0, x1) x [y0, y1), possibly empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x0 = min(max(math.floor(x1), 0), width)
    y0 = min(max(math.floor(y1), 0), height)
    x3 = min(max(math.ceil(x2), x0), width)
    y3 = min(max(math.ceil(y2), y0), height)
    return x0, y0, x3, y3


def mask_boxes(rgb: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """A copy of `rgb` [H, W, C] with every pixel inside any of `boxes` set to 0."""
    height, width = rgb.shape[:2]
    masked = rgb.copy()
    for box in boxes:
        x0, y0, x1, y1 = pixel_box(box, width, height)
        masked[y0:y1, x0:x1] = 0
    return masked


def crop(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of `box` (at least one pixel, so a degenerate box still gives an image)."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = pixel_box(box, width, height)
    x0, y0 = min(x0, width - 1), min(y0, height - 1)
    return rgb[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]


def grid_edges(length: int, parts: int) -> list[int]:
    """Edges of `parts` near-equal consecutive slices of `length` pixels (the first ones one longer)."""
    if parts < 1 or parts > length:
        raise ValueError(f"cannot cut {length} pixels into {parts} parts")
    base, extra = divmod(length, parts)
    edges = [0]
    for index in range(parts):
        edges.append(edges[-1] + base + (1 if index < extra else 0))
    return edges


def patch_grid(rgb: np.ndarray, n: int) -> list[np.ndarray]:
    """The image cut into n x n patches, row by row; together they tile it exactly."""
    height, width = rgb.shape[:2]
    rows, cols = grid_edges(height, n), grid_edges(width, n)
    return [rgb[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] for r in range(n) for c in range(n)]


def face_fallback(body_box: Box) -> list[float]:
    """Where a face most likely is when none was detected: the top square of the body box."""
    x1, y1, x2, y2 = (float(v) for v in body_box)
    side = max(min(x2 - x1, (y2 - y1) / 3.0), 1.0)
    centre = (x1 + x2) / 2.0
    return [centre - side / 2.0, y1, centre + side / 2.0, y1 + side]


def face_box_or_fallback(face_box: Box | None, body_box: Box) -> tuple[list[float], bool]:
    """(the face box to use, whether it is the fallback): the detected face when there is one."""
    if face_box is not None and len(face_box) == 4 and all(np.isfinite(float(v)) for v in face_box):
        return [float(v) for v in face_box], False
    return face_fallback(body_box), True


def pixel_view(name: str, rgb: np.ndarray, *, body_box: Box, face_box: Box, people_boxes: Iterable[Box] = (),
               grid: int | None = None) -> np.ndarray | list[np.ndarray]:
    """The pixels of view `name` for one person (a list of patches for `patches`)."""
    if name == "body":
        return crop(rgb, body_box)
    if name == "face":
        return crop(rgb, face_box)
    if name == "image":
        return rgb
    if name == "image_body_masked":
        return mask_boxes(rgb, [body_box])
    if name == "image_face_masked":
        return mask_boxes(rgb, [face_box])
    if name == "image_people_masked":
        return mask_boxes(rgb, [body_box, *people_boxes])
    if name == "patches":
        if not grid:
            raise ValueError("the patches view needs its grid size N")
        return patch_grid(rgb, grid)
    raise ValueError(f"unknown view {name!r}; views: {', '.join(VIEWS)}")


def normalise(pixels: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """uint8 [H, W, 3] resized to spec.size (bilinear), scaled to [0, 1], normalised: float32 [3, S, S]."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels)).resize((spec.size, spec.size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))
