"""People of the generated demo data set: body layout, look, face and the CAER-S close-up face.

Geometry is computed before drawing (`person_layout`) because the scene sampler
(core/synth/scenes.py) needs a person's box to place the objects beside it. The face carries
the mouth and brow cues of core/synth/rules.py, drawn bold enough to survive a 112-pixel body
crop; arms and posture are part of the layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from core.synth.canvas import RGB, Point, ellipse_box, hsv

SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 32),
)
HAIR_COLOURS: tuple[RGB, ...] = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 170, 90), (150, 150, 150))
TROUSER_COLOURS: tuple[RGB, ...] = ((40, 50, 90), (50, 50, 55), (90, 70, 50), (30, 30, 35), (70, 80, 70))
FACE_INK: RGB = (25, 20, 20)
MOUTH_INK: RGB = (190, 30, 50)     # bright enough to read on the darkest skin tone
EYE_WHITE: RGB = (250, 250, 250)


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
    shirt = hsv(rng.uniform(), rng.uniform(0.35, 0.75), rng.uniform(0.45, 0.85))
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
        draw.ellipse(ellipse_box(ex, ey, eye_r * 1.8, eye_r * 1.5), fill=EYE_WHITE)
        draw.ellipse(ellipse_box(ex, ey, eye_r, eye_r), fill=FACE_INK)
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
        draw.ellipse(ellipse_box(foot[0], foot[1], w * 0.9, w * 0.45), fill=(35, 30, 28))
    draw.polygon(list(layout.torso), fill=look.shirt, outline=tuple(int(c * 0.7) for c in look.shirt))
    # upper arms in the shirt colour, forearms bare: the pose reads from the skin-coloured part
    for shoulder, elbow, hand in layout.arms:
        _limb(draw, [shoulder, elbow], look.shirt, w)
    neck_w = 0.35 * r
    draw.rectangle([hx - neck_w, hy + 0.7 * r, hx + neck_w, hy + 1.25 * r], fill=look.skin)
    draw.ellipse(ellipse_box(hx, hy, r, r), fill=look.skin, outline=tuple(int(c * 0.75) for c in look.skin))
    # a hair cap that stops above the brows, so raised brows never vanish into dark hair
    draw.chord(ellipse_box(hx, hy - 0.05 * r, r * 1.04, r * 1.0), 220, 320, fill=look.hair)
    for shoulder, elbow, hand in layout.arms:
        _limb(draw, [elbow, hand], look.skin, w * 0.85)
        draw.ellipse(ellipse_box(hand[0], hand[1], w * 0.6, w * 0.6), fill=look.skin)
    fx, fy = layout.face_shift
    draw_face(draw, hx + fx, hy + fy, r, mouth, brows)


def draw_caers_face(draw: ImageDraw.ImageDraw, hx: float, hy: float, r: float, emotion: str, skin: RGB,
                    hair: RGB) -> None:
    """A large frontal face whose expression follows the usual action-unit descriptions
    (e.g. fear: raised, drawn-together brows + wide eyes + stretched mouth; surprise: arched
    brows + wide eyes + round open mouth)."""
    draw.ellipse(ellipse_box(hx, hy, r * 0.88, r), fill=skin, outline=tuple(int(c * 0.75) for c in skin), width=2)
    draw.chord(ellipse_box(hx, hy - 0.08 * r, r * 0.92, r * 0.98), 220, 320, fill=hair)
    ink = max(2, int(round(0.08 * r)))
    ey = hy - 0.08 * r
    wide = emotion in ("Fear", "Surprise")
    for side in (-1, 1):
        ex = hx + side * 0.34 * r
        inner, outer = ex - side * 0.2 * r, ex + side * 0.22 * r
        if emotion == "Happy":  # smiling eyes: upward crescents
            draw.arc(ellipse_box(ex, ey + 0.05 * r, 0.14 * r, 0.1 * r), 180, 360, fill=FACE_INK, width=ink)
        elif emotion == "Disgust":  # squint
            draw.line([(ex - 0.13 * r, ey), (ex + 0.13 * r, ey + side * 0.02 * r)], fill=FACE_INK, width=ink)
        else:
            if wide:
                draw.ellipse(ellipse_box(ex, ey, 0.14 * r, 0.14 * r), fill=(255, 255, 255), outline=FACE_INK)
            draw.ellipse(ellipse_box(ex, ey + (0.04 * r if emotion == "Sad" else 0), 0.07 * r, 0.07 * r),
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
        draw.ellipse(ellipse_box(hx + 0.4 * r, ey + 0.25 * r, 0.05 * r, 0.09 * r), fill=(80, 150, 255))
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
