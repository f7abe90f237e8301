"""The ground of every generated picture: colour helpers the drawers share and the
wall-and-floor background (see core/synth/rules.py for what the pictures mean).

Everything drawn in core/synth is deterministic given its arguments (colours and jitter come
from the numpy Generator passed in), so a seed reproduces every pixel.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]
Point = tuple[float, float]


def jitter(rng: np.random.Generator, colour: RGB, amount: int = 12) -> RGB:
    delta = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(colour, delta))  # type: ignore[return-value]


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def ellipse_box(cx: float, cy: float, rx: float, ry: float) -> list[float]:
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def background(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, int]:
    """A wall over a floor with sensor-like noise; returns the image and the floor line y.

    Wall and floor colours are drawn independently of every label, so the background is a
    nuisance the models must learn to ignore.
    """
    floor_y = int(height * rng.uniform(0.55, 0.72))
    wall = np.array(hsv(rng.uniform(), rng.uniform(0.05, 0.25), rng.uniform(0.6, 0.88)), dtype=np.float32)
    floor = np.array(hsv(rng.uniform(), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.6)), dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    shade = 1.0 - 0.12 * rows / height  # a gentle top-lit gradient
    img = np.where(rows < floor_y, wall, floor) * shade
    img = np.broadcast_to(img, (height, width, 3)).copy()
    img += rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.line([(0, floor_y), (width, floor_y)], fill=jitter(rng, (60, 55, 50)), width=2)
    if rng.uniform() < 0.4:  # a window: context a detector would not report
        ww, wh = rng.uniform(0.12, 0.22) * width, rng.uniform(0.15, 0.3) * height
        wx = rng.uniform(0.02 * width, width - ww - 2)
        wy = rng.uniform(4, max(5.0, floor_y - wh - 10))
        draw.rectangle([wx, wy, wx + ww, wy + wh], fill=jitter(rng, (175, 205, 230)),
                       outline=(240, 240, 235), width=3)
        draw.line([(wx + ww / 2, wy), (wx + ww / 2, wy + wh)], fill=(240, 240, 235), width=2)
    return image, floor_y
