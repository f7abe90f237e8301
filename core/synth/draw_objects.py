"""Objects of the generated demo data set: one drawer per kind and its width/height aspect.

Object kinds differ first of all in colour and texture: the downstream object features come
from a randomly initialised ResNet-50, which separates hue and high-frequency texture far
better than shape. Which kind does what to a person's labels is in core/synth/rules.py.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import ImageDraw

from core.synth.canvas import Box, ellipse_box, jitter


def _cake(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.ellipse([x1, y2 - 0.16 * h, x2, y2], fill=(245, 245, 245))
    top = y1 + 0.35 * h
    d.rectangle([x1 + 0.08 * w, top, x2 - 0.08 * w, y2 - 0.08 * h], fill=jitter(rng, (240, 130, 180)))
    for k in range(3):  # white frosting stripes
        yy = top + (k + 1) * (y2 - 0.08 * h - top) / 4
        d.line([(x1 + 0.08 * w, yy), (x2 - 0.08 * w, yy)], fill=(255, 250, 250), width=max(2, int(h * 0.05)))
    d.ellipse([x1 + 0.08 * w, top - 0.08 * h, x2 - 0.08 * w, top + 0.08 * h], fill=(255, 190, 215))
    for k in range(3):
        cx = x1 + w * (0.3 + 0.2 * k)
        d.rectangle([cx - 0.03 * w, y1 + 0.12 * h, cx + 0.03 * w, top], fill=(90, 170, 240))
        d.ellipse(ellipse_box(cx, y1 + 0.07 * h, 0.05 * w, 0.06 * h), fill=(255, 200, 0))


def _balloon(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    count = int(rng.integers(1, 4))
    for k in range(count):
        cx = x1 + w * (0.5 if count == 1 else 0.28 + 0.44 * k / (count - 1))
        cy = y1 + h * (0.25 + 0.06 * (k % 2))
        rx, ry = w * (0.4 if count == 1 else 0.24), h * 0.24
        d.line([(cx, cy + ry), (x1 + 0.5 * w, y2)], fill=(60, 60, 60), width=1)
        d.ellipse(ellipse_box(cx, cy, rx, ry), fill=jitter(rng, (225, 20, 40), 15))
        d.ellipse(ellipse_box(cx - 0.35 * rx, cy - 0.4 * ry, 0.18 * rx, 0.22 * ry), fill=(255, 200, 200))


def _gift(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    top = y1 + 0.22 * h
    d.rectangle([x1, top, x2, y2], fill=jitter(rng, (130, 40, 170)))
    band = max(2, int(0.14 * w))
    yellow = (250, 215, 40)
    d.rectangle([x1 + w / 2 - band / 2, top, x1 + w / 2 + band / 2, y2], fill=yellow)
    d.rectangle([x1, top + (y2 - top) * 0.4, x2, top + (y2 - top) * 0.4 + band], fill=yellow)
    d.polygon([(x1 + w / 2, top), (x1 + 0.2 * w, y1), (x1 + 0.3 * w, top)], fill=yellow)
    d.polygon([(x1 + w / 2, top), (x2 - 0.2 * w, y1), (x2 - 0.3 * w, top)], fill=yellow)


def _trophy(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    gold = jitter(rng, (235, 185, 35))
    d.rectangle([x1 + 0.15 * w, y2 - 0.14 * h, x2 - 0.15 * w, y2], fill=(70, 40, 20))
    d.rectangle([x1 + 0.43 * w, y1 + 0.55 * h, x2 - 0.43 * w, y2 - 0.14 * h], fill=gold)
    d.arc([x1, y1 + 0.08 * h, x1 + 0.4 * w, y1 + 0.4 * h], 90, 270, fill=gold, width=max(2, int(0.07 * w)))
    d.arc([x2 - 0.4 * w, y1 + 0.08 * h, x2, y1 + 0.4 * h], 270, 90, fill=gold, width=max(2, int(0.07 * w)))
    d.polygon([(x1 + 0.18 * w, y1), (x2 - 0.18 * w, y1), (x1 + 0.58 * w, y1 + 0.58 * h),
               (x1 + 0.42 * w, y1 + 0.58 * h)], fill=gold)
    d.ellipse(ellipse_box(x1 + 0.5 * w, y1 + 0.2 * h, 0.08 * w, 0.08 * h), fill=(255, 245, 180))


def _laptop(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.rectangle([x1 + 0.08 * w, y1, x2 - 0.08 * w, y1 + 0.72 * h], fill=(45, 45, 50))
    d.rectangle([x1 + 0.13 * w, y1 + 0.07 * h, x2 - 0.13 * w, y1 + 0.65 * h], fill=jitter(rng, (40, 120, 255)))
    for k in range(4):
        yy = y1 + 0.14 * h + k * 0.12 * h
        d.line([(x1 + 0.2 * w, yy), (x2 - (0.2 + 0.12 * (k % 2)) * w, yy)], fill=(240, 245, 255),
               width=max(1, int(0.03 * h)))
    d.polygon([(x1 + 0.08 * w, y1 + 0.74 * h), (x2 - 0.08 * w, y1 + 0.74 * h), (x2, y2), (x1, y2)],
              fill=(150, 150, 160))


def _plant(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.polygon([(x1 + 0.2 * w, y2 - 0.35 * h), (x2 - 0.2 * w, y2 - 0.35 * h), (x2 - 0.3 * w, y2),
               (x1 + 0.3 * w, y2)], fill=(190, 95, 55))
    green = jitter(rng, (40, 160, 60))
    for k in range(7):
        ang = -np.pi / 2 + (k - 3) * 0.42
        cx = x1 + 0.5 * w + np.cos(ang) * 0.3 * w
        cy = y2 - 0.35 * h + np.sin(ang) * 0.4 * h
        d.ellipse(ellipse_box(cx, cy, 0.16 * w, 0.14 * h), fill=green, outline=(20, 100, 30))
        d.line([(x1 + 0.5 * w, y2 - 0.35 * h), (cx, cy)], fill=(20, 100, 30), width=1)


def _pillow(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.rounded_rectangle([x1, y1, x2, y2], radius=0.18 * min(w, h), fill=jitter(rng, (190, 185, 240)))
    step = max(4.0, min(w, h) / 5)
    yy = y1 + step / 2
    row = 0
    while yy < y2 - step / 2:  # quilt checker texture
        xx = x1 + step / 2 + (row % 2) * step
        while xx < x2 - step / 2:
            d.rectangle([xx - step / 3, yy - step / 3, xx + step / 3, yy + step / 3], fill=(250, 250, 255))
            xx += 2 * step
        yy += step
        row += 1


def _medkit(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.rectangle([x1 + 0.35 * w, y1, x2 - 0.35 * w, y1 + 0.14 * h], outline=(40, 40, 40), width=max(2, int(0.05 * h)))
    d.rounded_rectangle([x1, y1 + 0.12 * h, x2, y2], radius=0.1 * min(w, h), fill=jitter(rng, (245, 245, 245), 6),
                        outline=(160, 160, 160), width=1)
    cx, cy, arm = x1 + 0.5 * w, y1 + 0.56 * h, 0.12 * min(w, h)
    red = (220, 20, 30)
    d.rectangle([cx - arm, cy - 3 * arm, cx + arm, cy + 3 * arm], fill=red)
    d.rectangle([cx - 3 * arm, cy - arm, cx + 3 * arm, cy + arm], fill=red)


def _raincloud(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    for k in range(9):  # rain streaks under the cloud
        xx = x1 + w * (0.12 + 0.09 * k)
        d.line([(xx, y1 + 0.5 * h), (xx - 0.08 * w, y2)], fill=(40, 90, 220), width=max(1, int(0.025 * w)))
    grey = jitter(rng, (85, 88, 100))
    for cx, cy, rr in ((0.3, 0.3, 0.22), (0.55, 0.22, 0.26), (0.75, 0.33, 0.2), (0.5, 0.38, 0.22)):
        d.ellipse(ellipse_box(x1 + cx * w, y1 + cy * h, rr * w, rr * h * 1.1), fill=grey)


def _fire(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.line([(x1 + 0.1 * w, y2 - 0.04 * h), (x2 - 0.1 * w, y2 - 0.14 * h)], fill=(80, 45, 20), width=max(2, int(0.08 * h)))
    d.line([(x1 + 0.1 * w, y2 - 0.14 * h), (x2 - 0.1 * w, y2 - 0.04 * h)], fill=(80, 45, 20), width=max(2, int(0.08 * h)))
    for colour, scale in (((230, 40, 10), 1.0), ((255, 140, 0), 0.72), ((255, 230, 60), 0.42)):
        tips = 4
        pts = [(x1 + 0.5 * w - 0.45 * w * scale, y2 - 0.12 * h)]
        for k in range(tips):
            frac = (k + 0.5) / tips
            tip_h = h * scale * (0.75 + 0.25 * rng.uniform())
            pts.append((x1 + 0.5 * w + (frac - 0.5) * 0.9 * w * scale, y2 - 0.12 * h - tip_h * 0.95))
            pts.append((x1 + 0.5 * w + (frac - 0.5 + 0.5 / tips) * 0.9 * w * scale, y2 - 0.12 * h - tip_h * 0.45))
        pts[-1] = (x1 + 0.5 * w + 0.45 * w * scale, y2 - 0.12 * h)
        d.polygon(pts, fill=colour)


def _spider(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + 0.5 * w, y1 + 0.5 * h
    for k in range(8):  # web
        ang = k * np.pi / 4
        d.line([(cx, cy), (cx + np.cos(ang) * 0.5 * w, cy + np.sin(ang) * 0.5 * h)], fill=(235, 235, 235), width=1)
    for rr in (0.2, 0.35, 0.48):
        d.ellipse(ellipse_box(cx, cy, rr * w, rr * h), outline=(235, 235, 235), width=1)
    leg_w = max(2, int(0.04 * w))
    for side in (-1, 1):
        for k in range(4):
            knee = (cx + side * 0.28 * w, cy - 0.22 * h + k * 0.12 * h)
            foot = (cx + side * 0.42 * w, cy - 0.12 * h + k * 0.16 * h)
            d.line([(cx, cy), knee, foot], fill=(10, 10, 10), width=leg_w)
    d.ellipse(ellipse_box(cx, cy + 0.08 * h, 0.16 * w, 0.18 * h), fill=(15, 15, 15))
    d.ellipse(ellipse_box(cx, cy - 0.12 * h, 0.09 * w, 0.09 * h), fill=(15, 15, 15))
    d.ellipse(ellipse_box(cx, cy + 0.08 * h, 0.05 * w, 0.07 * h), fill=(200, 20, 20))


def _trash(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    olive = jitter(rng, (110, 115, 40))
    d.rectangle([x1 + 0.1 * w, y1 + 0.2 * h, x2 - 0.1 * w, y2], fill=olive)
    for k in range(4):
        xx = x1 + w * (0.25 + 0.17 * k)
        d.line([(xx, y1 + 0.25 * h), (xx, y2 - 0.04 * h)], fill=(70, 75, 20), width=max(1, int(0.04 * w)))
    for _ in range(10):  # overflowing garbage
        gx, gy = x1 + w * rng.uniform(0.12, 0.88), y1 + h * rng.uniform(0.02, 0.24)
        d.ellipse(ellipse_box(gx, gy, 0.08 * w, 0.06 * h), fill=jitter(rng, (110, 70, 30), 25))
    for _ in range(5):  # flies
        fx, fy = x1 + w * rng.uniform(0.0, 1.0), y1 + h * rng.uniform(0.0, 0.15)
        d.ellipse(ellipse_box(fx, fy, 1.5, 1.5), fill=(0, 0, 0))


def _shards(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.ellipse([x1, y1 + 0.45 * h, x2, y2], fill=(60, 60, 70))
    for _ in range(7):
        cx, cy = x1 + w * rng.uniform(0.15, 0.85), y1 + h * rng.uniform(0.2, 0.8)
        pts = [(cx + w * rng.uniform(-0.2, 0.2), cy + h * rng.uniform(-0.25, 0.25)) for _ in range(3)]
        d.polygon(pts, fill=jitter(rng, (165, 220, 235), 15), outline=(255, 255, 255))


def _spotlight(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.polygon([(x1 + 0.42 * w, y1 + 0.15 * h), (x2 - 0.42 * w, y1 + 0.15 * h), (x2, y2 - 0.08 * h),
               (x1, y2 - 0.08 * h)], fill=jitter(rng, (255, 250, 140), 8))
    d.ellipse([x1, y2 - 0.16 * h, x2, y2], fill=(255, 255, 200))
    d.rectangle([x1 + 0.36 * w, y1, x2 - 0.36 * w, y1 + 0.17 * h], fill=(20, 20, 20))


def _chair(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    wood = jitter(rng, (140, 90, 50))
    lw = max(2, int(0.09 * w))
    d.rectangle([x1 + 0.1 * w, y1, x1 + 0.1 * w + lw, y2], fill=wood)
    d.rectangle([x1 + 0.1 * w, y1 + 0.05 * h, x2 - 0.2 * w, y1 + 0.15 * h], fill=wood)
    d.rectangle([x1 + 0.1 * w, y1 + 0.5 * h, x2, y1 + 0.6 * h], fill=wood)
    d.rectangle([x2 - lw, y1 + 0.5 * h, x2, y2], fill=wood)


def _lamp(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.rectangle([x1 + 0.46 * w, y1 + 0.3 * h, x2 - 0.46 * w, y2], fill=(110, 110, 115))
    d.ellipse([x1 + 0.2 * w, y2 - 0.06 * h, x2 - 0.2 * w, y2], fill=(80, 80, 85))
    d.polygon([(x1 + 0.25 * w, y1), (x2 - 0.25 * w, y1), (x2, y1 + 0.32 * h), (x1, y1 + 0.32 * h)],
              fill=jitter(rng, (230, 215, 180)))


# kind -> (drawer, width/height aspect)
OBJECT_DRAWERS: dict[str, tuple[Callable[[ImageDraw.ImageDraw, list[float], np.random.Generator], None], float]] = {
    "cake": (_cake, 1.0),
    "balloon": (_balloon, 0.75),
    "gift": (_gift, 1.0),
    "trophy": (_trophy, 0.75),
    "laptop": (_laptop, 1.3),
    "plant": (_plant, 0.8),
    "pillow": (_pillow, 1.4),
    "medkit": (_medkit, 1.2),
    "raincloud": (_raincloud, 1.3),
    "fire": (_fire, 0.9),
    "spider": (_spider, 1.0),
    "trash": (_trash, 0.75),
    "shards": (_shards, 1.4),
    "spotlight": (_spotlight, 0.7),
    "chair": (_chair, 0.7),
    "lamp": (_lamp, 0.45),
}


def draw_object(draw: ImageDraw.ImageDraw, kind: str, box: Box, rng: np.random.Generator) -> None:
    drawer, _ = OBJECT_DRAWERS[kind]
    x1, y1, x2, y2 = box
    drawer(draw, [float(x1), float(y1), float(x2 - 1), float(y2 - 1)], rng)
