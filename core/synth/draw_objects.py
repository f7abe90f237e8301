"""Drawing primitives of the generated demo data set (see stages/data/synth.py for the rules).

Everything here is deterministic given its arguments (colours and jitter come from the
numpy Generator passed in), so a seed reproduces every pixel. Geometry is computed before
drawing (`person_layout`) because the scene sampler needs a person's box to place the
objects beside it.

Object kinds differ first of all in colour and texture: the downstream object features come
from a randomly initialised ResNet-50, which separates hue and high-frequency texture far
better than shape.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]
Point = tuple[float, float]

SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 32),
)
HAIR_COLOURS: tuple[RGB, ...] = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 170, 90), (150, 150, 150))
TROUSER_COLOURS: tuple[RGB, ...] = ((40, 50, 90), (50, 50, 55), (90, 70, 50), (30, 30, 35), (70, 80, 70))
FACE_INK: RGB = (25, 20, 20)
MOUTH_INK: RGB = (190, 30, 50)     # bright enough to read on the darkest skin tone
EYE_WHITE: RGB = (250, 250, 250)


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 12) -> RGB:
    delta = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(colour, delta))  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _ellipse_box(cx: float, cy: float, rx: float, ry: float) -> list[float]:
    return [cx - rx, cy - ry, cx + rx, cy + ry]


# --------------------------------------------------------------------------- background

def background(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, int]:
    """A wall over a floor with sensor-like noise; returns the image and the floor line y.

    Wall and floor colours are drawn independently of every label, so the background is a
    nuisance the models must learn to ignore.
    """
    floor_y = int(height * rng.uniform(0.55, 0.72))
    wall = np.array(_hsv(rng.uniform(), rng.uniform(0.05, 0.25), rng.uniform(0.6, 0.88)), dtype=np.float32)
    floor = np.array(_hsv(rng.uniform(), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.6)), dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    shade = 1.0 - 0.12 * rows / height  # a gentle top-lit gradient
    img = np.where(rows < floor_y, wall, floor) * shade
    img = np.broadcast_to(img, (height, width, 3)).copy()
    img += rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.line([(0, floor_y), (width, floor_y)], fill=_jitter(rng, (60, 55, 50)), width=2)
    if rng.uniform() < 0.4:  # a window: context a detector would not report
        ww, wh = rng.uniform(0.12, 0.22) * width, rng.uniform(0.15, 0.3) * height
        wx = rng.uniform(0.02 * width, width - ww - 2)
        wy = rng.uniform(4, max(5.0, floor_y - wh - 10))
        draw.rectangle([wx, wy, wx + ww, wy + wh], fill=_jitter(rng, (175, 205, 230)),
                       outline=(240, 240, 235), width=3)
        draw.line([(wx + ww / 2, wy), (wx + ww / 2, wy + wh)], fill=(240, 240, 235), width=2)
    return image, floor_y


# --------------------------------------------------------------------------- people

@dataclass(frozen=True)
class PersonLayout:
    """Where each body part goes, in pixels; `box` is the tight body box [x1, y1, x2, y2]."""

    head: Point
    head_r: float
    torso: tuple[Point, ...]
    legs: tuple[tuple[Point, Point], ...]
    arms: tuple[tuple[Point, Point, Point], ...]   # shoulder, elbow, hand for left, right
    limb_w: float
    face_shift: Point
    box: tuple[float, float, float, float]


def person_layout(cx: float, feet_y: float, height: float, facing: int, arms: str, posture: str,
                  kid: bool = False) -> PersonLayout:
    h = height
    r = (0.14 if kid else 0.12) * h
    lean = 0.14 * h * facing if posture == "slumped" else 0.0
    drop = 0.10 * h if posture == "slumped" else 0.0
    hx, hy = cx + lean, feet_y - h + r + drop
    sy = hy + r + 0.03 * h                     # shoulder line
    py = feet_y - 0.46 * h                     # hip line
    sw, pw = 0.14 * h, 0.11 * h
    tx = cx + 0.7 * lean
    torso = ((tx - sw, sy), (tx + sw, sy), (cx + pw, py), (cx - pw, py))
    limb_w = 0.06 * h
    legs = (((cx - 0.06 * h, py), (cx - 0.09 * h, feet_y)), ((cx + 0.06 * h, py), (cx + 0.09 * h, feet_y)))
    arm_pts = []
    for side in (-1, 1):
        shoulder = (tx + side * (sw - limb_w / 2), sy + limb_w / 2)
        sx = shoulder[0]
        if arms == "down":
            elbow, hand = (sx + side * 0.03 * h, sy + 0.17 * h), (sx + side * 0.02 * h, sy + 0.33 * h)
        elif arms == "up":
            elbow, hand = (sx + side * 0.09 * h, sy - 0.12 * h), (sx + side * 0.14 * h, sy - 0.30 * h)
        elif arms == "crossed":
            other = tx - side * (sw - limb_w / 2)
            elbow, hand = (sx + side * 0.02 * h, sy + 0.17 * h), (other - side * 0.01 * h, sy + 0.10 * h)
        elif arms == "to_head":
            elbow, hand = (sx + side * 0.10 * h, sy - 0.05 * h), (hx + side * (r + 0.01 * h), hy)
        else:
            raise ValueError(f"unknown arm pose {arms!r}")
        arm_pts.append((shoulder, elbow, hand))
    face_shift = (0.15 * r * facing, 0.2 * r) if posture == "slumped" else (0.0, 0.0)

    xs = [hx - r, hx + r] + [p[0] for p in torso]
    ys = [hy - r, hy + r] + [p[1] for p in torso]
    for a, b in legs:
        xs += [a[0] - limb_w / 2, b[0] - limb_w, b[0] + limb_w]
        ys += [b[1] + 0.02 * h]
    for pts in arm_pts:
        for x, y in pts:
            xs += [x - limb_w * 0.7, x + limb_w * 0.7]
            ys += [y - limb_w * 0.7, y + limb_w * 0.7]
    box = (min(xs), min(ys), max(xs), max(ys))
    return PersonLayout((hx, hy), r, torso, legs, tuple(arm_pts), limb_w, face_shift, box)


@dataclass(frozen=True)
class PersonLook:
    skin: RGB
    hair: RGB
    shirt: RGB
    trousers: RGB
    long_hair: bool


def sample_look(rng: np.random.Generator, gender: str) -> PersonLook:
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    shirt = _hsv(rng.uniform(), rng.uniform(0.35, 0.75), rng.uniform(0.45, 0.85))
    trousers = TROUSER_COLOURS[int(rng.integers(len(TROUSER_COLOURS)))]
    long_hair = bool(rng.uniform() < (0.75 if gender == "Female" else 0.1))
    return PersonLook(skin, hair, shirt, trousers, long_hair)


def draw_face(draw: ImageDraw.ImageDraw, hx: float, hy: float, r: float, mouth: str, brows: str) -> None:
    """Eyes, brows and mouth on a head of radius r centred at (hx, hy); bold enough to survive
    a 112-pixel body crop."""
    ink = max(2, int(round(0.14 * r)))
    eye_r = max(1.5, 0.1 * r)
    ey = hy - 0.05 * r
    for side in (-1, 1):
        ex = hx + side * 0.36 * r
        draw.ellipse(_ellipse_box(ex, ey, eye_r * 1.8, eye_r * 1.5), fill=EYE_WHITE)
        draw.ellipse(_ellipse_box(ex, ey, eye_r, eye_r), fill=FACE_INK)
        inner, outer = ex - side * 0.22 * r, ex + side * 0.24 * r
        if brows == "relaxed":
            pts = [(outer, ey - 0.34 * r), (inner, ey - 0.34 * r)]
        elif brows == "raised":
            pts = [(outer, ey - 0.40 * r), (ex, ey - 0.56 * r), (inner, ey - 0.42 * r)]
        elif brows == "furrowed":
            pts = [(outer, ey - 0.48 * r), (inner, ey - 0.20 * r)]
        else:
            raise ValueError(f"unknown brows {brows!r}")
        draw.line(pts, fill=FACE_INK, width=ink, joint="curve")
    mx, my, mw = hx, hy + 0.45 * r, 0.46 * r
    mouth_ink = max(3, int(round(0.18 * r)))
    if mouth == "smile":
        draw.arc([mx - mw, my - 0.42 * r, mx + mw, my + 0.22 * r], 15, 165, fill=MOUTH_INK, width=mouth_ink)
    elif mouth == "frown":
        draw.arc([mx - mw, my - 0.02 * r, mx + mw, my + 0.56 * r], 195, 345, fill=MOUTH_INK, width=mouth_ink)
    elif mouth == "open":
        draw.ellipse([mx - 0.24 * r, my - 0.2 * r, mx + 0.24 * r, my + 0.3 * r], fill=MOUTH_INK)
    elif mouth == "neutral":
        draw.line([(mx - 0.34 * r, my + 0.06 * r), (mx + 0.34 * r, my + 0.06 * r)], fill=MOUTH_INK, width=mouth_ink)
    else:
        raise ValueError(f"unknown mouth {mouth!r}")


def _limb(draw: ImageDraw.ImageDraw, pts: list[Point], colour: RGB, width: float) -> None:
    draw.line(pts, fill=colour, width=max(2, int(round(width))), joint="curve")


def draw_person(draw: ImageDraw.ImageDraw, layout: PersonLayout, look: PersonLook, mouth: str, brows: str) -> None:
    hx, hy = layout.head
    r = layout.head_r
    w = layout.limb_w
    if look.long_hair:  # hair falling behind the shoulders
        draw.rounded_rectangle([hx - 1.1 * r, hy - 0.6 * r, hx + 1.1 * r, hy + 1.5 * r], radius=r * 0.5,
                               fill=look.hair)
    for hip, foot in layout.legs:
        _limb(draw, [hip, foot], look.trousers, w * 1.1)
        draw.ellipse(_ellipse_box(foot[0], foot[1], w * 0.9, w * 0.45), fill=(35, 30, 28))
    draw.polygon(list(layout.torso), fill=look.shirt, outline=tuple(int(c * 0.7) for c in look.shirt))
    # upper arms in the shirt colour, forearms bare: the pose reads from the skin-coloured part
    for shoulder, elbow, hand in layout.arms:
        _limb(draw, [shoulder, elbow], look.shirt, w)
    neck_w = 0.35 * r
    draw.rectangle([hx - neck_w, hy + 0.7 * r, hx + neck_w, hy + 1.25 * r], fill=look.skin)
    draw.ellipse(_ellipse_box(hx, hy, r, r), fill=look.skin, outline=tuple(int(c * 0.75) for c in look.skin))
    # a hair cap that stops above the brows, so raised brows never vanish into dark hair
    draw.chord(_ellipse_box(hx, hy - 0.05 * r, r * 1.04, r * 1.0), 220, 320, fill=look.hair)
    for shoulder, elbow, hand in layout.arms:
        _limb(draw, [elbow, hand], look.skin, w * 0.85)
        draw.ellipse(_ellipse_box(hand[0], hand[1], w * 0.6, w * 0.6), fill=look.skin)
    fx, fy = layout.face_shift
    draw_face(draw, hx + fx, hy + fy, r, mouth, brows)


# --------------------------------------------------------------------------- objects

def _cake(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.ellipse([x1, y2 - 0.16 * h, x2, y2], fill=(245, 245, 245))
    top = y1 + 0.35 * h
    d.rectangle([x1 + 0.08 * w, top, x2 - 0.08 * w, y2 - 0.08 * h], fill=_jitter(rng, (240, 130, 180)))
    for k in range(3):  # white frosting stripes
        yy = top + (k + 1) * (y2 - 0.08 * h - top) / 4
        d.line([(x1 + 0.08 * w, yy), (x2 - 0.08 * w, yy)], fill=(255, 250, 250), width=max(2, int(h * 0.05)))
    d.ellipse([x1 + 0.08 * w, top - 0.08 * h, x2 - 0.08 * w, top + 0.08 * h], fill=(255, 190, 215))
    for k in range(3):
        cx = x1 + w * (0.3 + 0.2 * k)
        d.rectangle([cx - 0.03 * w, y1 + 0.12 * h, cx + 0.03 * w, top], fill=(90, 170, 240))
        d.ellipse(_ellipse_box(cx, y1 + 0.07 * h, 0.05 * w, 0.06 * h), fill=(255, 200, 0))


def _balloon(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    count = int(rng.integers(1, 4))
    for k in range(count):
        cx = x1 + w * (0.5 if count == 1 else 0.28 + 0.44 * k / (count - 1))
        cy = y1 + h * (0.25 + 0.06 * (k % 2))
        rx, ry = w * (0.4 if count == 1 else 0.24), h * 0.24
        d.line([(cx, cy + ry), (x1 + 0.5 * w, y2)], fill=(60, 60, 60), width=1)
        d.ellipse(_ellipse_box(cx, cy, rx, ry), fill=_jitter(rng, (225, 20, 40), 15))
        d.ellipse(_ellipse_box(cx - 0.35 * rx, cy - 0.4 * ry, 0.18 * rx, 0.22 * ry), fill=(255, 200, 200))


def _gift(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    top = y1 + 0.22 * h
    d.rectangle([x1, top, x2, y2], fill=_jitter(rng, (130, 40, 170)))
    band = max(2, int(0.14 * w))
    yellow = (250, 215, 40)
    d.rectangle([x1 + w / 2 - band / 2, top, x1 + w / 2 + band / 2, y2], fill=yellow)
    d.rectangle([x1, top + (y2 - top) * 0.4, x2, top + (y2 - top) * 0.4 + band], fill=yellow)
    d.polygon([(x1 + w / 2, top), (x1 + 0.2 * w, y1), (x1 + 0.3 * w, top)], fill=yellow)
    d.polygon([(x1 + w / 2, top), (x2 - 0.2 * w, y1), (x2 - 0.3 * w, top)], fill=yellow)


def _trophy(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    gold = _jitter(rng, (235, 185, 35))
    d.rectangle([x1 + 0.15 * w, y2 - 0.14 * h, x2 - 0.15 * w, y2], fill=(70, 40, 20))
    d.rectangle([x1 + 0.43 * w, y1 + 0.55 * h, x2 - 0.43 * w, y2 - 0.14 * h], fill=gold)
    d.arc([x1, y1 + 0.08 * h, x1 + 0.4 * w, y1 + 0.4 * h], 90, 270, fill=gold, width=max(2, int(0.07 * w)))
    d.arc([x2 - 0.4 * w, y1 + 0.08 * h, x2, y1 + 0.4 * h], 270, 90, fill=gold, width=max(2, int(0.07 * w)))
    d.polygon([(x1 + 0.18 * w, y1), (x2 - 0.18 * w, y1), (x1 + 0.58 * w, y1 + 0.58 * h),
               (x1 + 0.42 * w, y1 + 0.58 * h)], fill=gold)
    d.ellipse(_ellipse_box(x1 + 0.5 * w, y1 + 0.2 * h, 0.08 * w, 0.08 * h), fill=(255, 245, 180))


def _laptop(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.rectangle([x1 + 0.08 * w, y1, x2 - 0.08 * w, y1 + 0.72 * h], fill=(45, 45, 50))
    d.rectangle([x1 + 0.13 * w, y1 + 0.07 * h, x2 - 0.13 * w, y1 + 0.65 * h], fill=_jitter(rng, (40, 120, 255)))
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
    green = _jitter(rng, (40, 160, 60))
    for k in range(7):
        ang = -np.pi / 2 + (k - 3) * 0.42
        cx = x1 + 0.5 * w + np.cos(ang) * 0.3 * w
        cy = y2 - 0.35 * h + np.sin(ang) * 0.4 * h
        d.ellipse(_ellipse_box(cx, cy, 0.16 * w, 0.14 * h), fill=green, outline=(20, 100, 30))
        d.line([(x1 + 0.5 * w, y2 - 0.35 * h), (cx, cy)], fill=(20, 100, 30), width=1)


def _pillow(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.rounded_rectangle([x1, y1, x2, y2], radius=0.18 * min(w, h), fill=_jitter(rng, (190, 185, 240)))
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
    d.rounded_rectangle([x1, y1 + 0.12 * h, x2, y2], radius=0.1 * min(w, h), fill=_jitter(rng, (245, 245, 245), 6),
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
    grey = _jitter(rng, (85, 88, 100))
    for cx, cy, rr in ((0.3, 0.3, 0.22), (0.55, 0.22, 0.26), (0.75, 0.33, 0.2), (0.5, 0.38, 0.22)):
        d.ellipse(_ellipse_box(x1 + cx * w, y1 + cy * h, rr * w, rr * h * 1.1), fill=grey)


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
        d.ellipse(_ellipse_box(cx, cy, rr * w, rr * h), outline=(235, 235, 235), width=1)
    leg_w = max(2, int(0.04 * w))
    for side in (-1, 1):
        for k in range(4):
            knee = (cx + side * 0.28 * w, cy - 0.22 * h + k * 0.12 * h)
            foot = (cx + side * 0.42 * w, cy - 0.12 * h + k * 0.16 * h)
            d.line([(cx, cy), knee, foot], fill=(10, 10, 10), width=leg_w)
    d.ellipse(_ellipse_box(cx, cy + 0.08 * h, 0.16 * w, 0.18 * h), fill=(15, 15, 15))
    d.ellipse(_ellipse_box(cx, cy - 0.12 * h, 0.09 * w, 0.09 * h), fill=(15, 15, 15))
    d.ellipse(_ellipse_box(cx, cy + 0.08 * h, 0.05 * w, 0.07 * h), fill=(200, 20, 20))


def _trash(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    olive = _jitter(rng, (110, 115, 40))
    d.rectangle([x1 + 0.1 * w, y1 + 0.2 * h, x2 - 0.1 * w, y2], fill=olive)
    for k in range(4):
        xx = x1 + w * (0.25 + 0.17 * k)
        d.line([(xx, y1 + 0.25 * h), (xx, y2 - 0.04 * h)], fill=(70, 75, 20), width=max(1, int(0.04 * w)))
    for _ in range(10):  # overflowing garbage
        gx, gy = x1 + w * rng.uniform(0.12, 0.88), y1 + h * rng.uniform(0.02, 0.24)
        d.ellipse(_ellipse_box(gx, gy, 0.08 * w, 0.06 * h), fill=_jitter(rng, (110, 70, 30), 25))
    for _ in range(5):  # flies
        fx, fy = x1 + w * rng.uniform(0.0, 1.0), y1 + h * rng.uniform(0.0, 0.15)
        d.ellipse(_ellipse_box(fx, fy, 1.5, 1.5), fill=(0, 0, 0))


def _shards(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.ellipse([x1, y1 + 0.45 * h, x2, y2], fill=(60, 60, 70))
    for _ in range(7):
        cx, cy = x1 + w * rng.uniform(0.15, 0.85), y1 + h * rng.uniform(0.2, 0.8)
        pts = [(cx + w * rng.uniform(-0.2, 0.2), cy + h * rng.uniform(-0.25, 0.25)) for _ in range(3)]
        d.polygon(pts, fill=_jitter(rng, (165, 220, 235), 15), outline=(255, 255, 255))


def _spotlight(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    d.polygon([(x1 + 0.42 * w, y1 + 0.15 * h), (x2 - 0.42 * w, y1 + 0.15 * h), (x2, y2 - 0.08 * h),
               (x1, y2 - 0.08 * h)], fill=_jitter(rng, (255, 250, 140), 8))
    d.ellipse([x1, y2 - 0.16 * h, x2, y2], fill=(255, 255, 200))
    d.rectangle([x1 + 0.36 * w, y1, x2 - 0.36 * w, y1 + 0.17 * h], fill=(20, 20, 20))


def _chair(d: ImageDraw.ImageDraw, b: list[float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    wood = _jitter(rng, (140, 90, 50))
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
              fill=_jitter(rng, (230, 215, 180)))


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


# --------------------------------------------------------------------------- CAER-S faces

def draw_caers_face(draw: ImageDraw.ImageDraw, hx: float, hy: float, r: float, emotion: str, skin: RGB,
                    hair: RGB) -> None:
    """A large frontal face whose expression follows the usual action-unit descriptions
    (e.g. fear: raised, drawn-together brows + wide eyes + stretched mouth; surprise: arched
    brows + wide eyes + round open mouth)."""
    draw.ellipse(_ellipse_box(hx, hy, r * 0.88, r), fill=skin, outline=tuple(int(c * 0.75) for c in skin), width=2)
    draw.chord(_ellipse_box(hx, hy - 0.08 * r, r * 0.92, r * 0.98), 220, 320, fill=hair)
    ink = max(2, int(round(0.08 * r)))
    ey = hy - 0.08 * r
    wide = emotion in ("Fear", "Surprise")
    for side in (-1, 1):
        ex = hx + side * 0.34 * r
        inner, outer = ex - side * 0.2 * r, ex + side * 0.22 * r
        if emotion == "Happy":  # smiling eyes: upward crescents
            draw.arc(_ellipse_box(ex, ey + 0.05 * r, 0.14 * r, 0.1 * r), 180, 360, fill=FACE_INK, width=ink)
        elif emotion == "Disgust":  # squint
            draw.line([(ex - 0.13 * r, ey), (ex + 0.13 * r, ey + side * 0.02 * r)], fill=FACE_INK, width=ink)
        else:
            if wide:
                draw.ellipse(_ellipse_box(ex, ey, 0.14 * r, 0.14 * r), fill=(255, 255, 255), outline=FACE_INK)
            draw.ellipse(_ellipse_box(ex, ey + (0.04 * r if emotion == "Sad" else 0), 0.07 * r, 0.07 * r),
                         fill=FACE_INK)
        if emotion == "Anger":
            brow = [(outer, ey - 0.36 * r), (inner, ey - 0.14 * r)]
        elif emotion == "Sad":
            brow = [(outer, ey - 0.2 * r), (inner, ey - 0.36 * r)]
        elif emotion == "Fear":
            brow = [(outer, ey - 0.34 * r), (inner, ey - 0.40 * r), (inner + side * 0.02 * r, ey - 0.3 * r)]
        elif emotion == "Surprise":
            brow = [(outer, ey - 0.34 * r), (ex, ey - 0.5 * r), (inner, ey - 0.36 * r)]
        elif emotion == "Disgust":
            brow = [(outer, ey - 0.22 * r), (inner, ey - (0.16 if side < 0 else 0.28) * r)]
        else:
            brow = [(outer, ey - 0.28 * r), (inner, ey - 0.28 * r)]
        draw.line(brow, fill=FACE_INK, width=ink, joint="curve")
    draw.line([(hx, ey + 0.05 * r), (hx - 0.06 * r, hy + 0.22 * r), (hx + 0.04 * r, hy + 0.24 * r)],
              fill=tuple(int(c * 0.6) for c in skin), width=max(1, ink - 1))
    mx, my = hx, hy + 0.5 * r
    if emotion == "Happy":
        draw.chord([mx - 0.36 * r, my - 0.25 * r, mx + 0.36 * r, my + 0.22 * r], 0, 180, fill=MOUTH_INK)
        draw.rectangle([mx - 0.28 * r, my - 0.02 * r, mx + 0.28 * r, my + 0.05 * r], fill=(250, 250, 250))
    elif emotion == "Sad":
        draw.arc([mx - 0.3 * r, my - 0.02 * r, mx + 0.3 * r, my + 0.35 * r], 200, 340, fill=MOUTH_INK, width=ink)
        draw.ellipse(_ellipse_box(hx + 0.4 * r, ey + 0.25 * r, 0.05 * r, 0.09 * r), fill=(80, 150, 255))
    elif emotion == "Anger":
        draw.rectangle([mx - 0.26 * r, my - 0.06 * r, mx + 0.26 * r, my + 0.1 * r], fill=(250, 250, 250),
                       outline=MOUTH_INK, width=ink)
        draw.line([(mx - 0.26 * r, my + 0.02 * r), (mx + 0.26 * r, my + 0.02 * r)], fill=FACE_INK, width=1)
    elif emotion == "Fear":
        draw.rounded_rectangle([mx - 0.34 * r, my - 0.08 * r, mx + 0.34 * r, my + 0.12 * r], radius=0.06 * r,
                               fill=MOUTH_INK)
    elif emotion == "Surprise":
        draw.ellipse([mx - 0.13 * r, my - 0.16 * r, mx + 0.13 * r, my + 0.24 * r], fill=MOUTH_INK)
    elif emotion == "Disgust":
        draw.line([(mx - 0.28 * r, my + 0.06 * r), (mx - 0.05 * r, my - 0.04 * r), (mx + 0.1 * r, my + 0.02 * r),
                   (mx + 0.3 * r, my - 0.1 * r)], fill=MOUTH_INK, width=ink, joint="curve")
        for k in (-1, 1):  # nose wrinkles
            draw.line([(hx + k * 0.08 * r, ey + 0.1 * r), (hx + k * 0.16 * r, ey + 0.16 * r)], fill=FACE_INK, width=1)
    else:  # Neutral
        draw.line([(mx - 0.26 * r, my), (mx + 0.26 * r, my)], fill=MOUTH_INK, width=ink)

