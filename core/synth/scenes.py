"""Scene sampling of the generated demo data set: people, their cues and the objects placed
beside them or anywhere free, drawn into one picture; splits and the per-image random streams.

Scene. A 320x240 image of a wall over a floor (random colours, noise, sometimes a window)
with 1-3 people standing side by side (one horizontal slot each; adults, teenagers, kids
scaled 1.0/0.88/0.68) and objects: each person gets 0-2 objects placed right beside them
(gap 0-0.1 of their height) and 0-3 more objects fall anywhere that is free, so distances
vary continuously. 14 emotional object kinds (cake, balloon, gift, trophy, laptop, plant,
pillow, medkit, raincloud, fire, spider, trash, shards, spotlight) and 2 neutral ones
(chair, lamp) differ strongly in colour and texture.

Splits ~70/15/15 by image (the people of one image share its split). Every image's content
depends on (seed, image index) only; the split assignment on (seed, number of images).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.synth.canvas import background
from core.synth.draw_objects import OBJECT_DRAWERS, draw_object
from core.synth.draw_people import (
    PersonLayout,
    PersonLook,
    draw_person,
    person_layout,
    sample_look,
)
from core.synth.rules import (
    ANNOTATORS,
    BODY_CUE_PROBS,
    NEUTRAL_KINDS,
    OBJECT_KINDS,
    BodyCues,
    Box,
    PersonLabels,
    box_area,
    cluster_logits,
    person_context,
    sample_labels,
)

IMAGE_SIZE = (320, 240)                      # width, height
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
OBJECT_SAMPLING_WEIGHT: dict[str, float] = {k: (0.6 if k in NEUTRAL_KINDS else 1.0) for k in OBJECT_KINDS}
# kinds that stand on the floor; the others may hang, fly or be held anywhere
FLOOR_KINDS: frozenset[str] = frozenset({"gift", "plant", "pillow", "trash", "shards", "fire", "chair", "lamp"})

AGE_PROBS = {"Adult": 0.8, "Teenager": 0.1, "Kid": 0.1}
AGE_SCALE = {"Adult": 1.0, "Teenager": 0.88, "Kid": 0.68}
GENDER_PROBS = {"Male": 0.6, "Female": 0.4}
NEAR_OBJECTS_PROBS = (0.3, 0.5, 0.2)        # 0, 1, 2 objects beside each person
FREE_OBJECTS_PROBS = (0.25, 0.35, 0.28, 0.12)  # 0..3 objects anywhere


@dataclass
class PersonSpec:
    box: Box
    cues: BodyCues
    gender: str
    age: str
    layout: PersonLayout
    look: PersonLook


@dataclass
class ObjectSpec:
    kind: str
    box: Box
    score: float


@dataclass
class SceneRecord:
    """One generated image with everything the writers need."""

    name: str
    index: int
    persons: list[PersonSpec]
    objects: list[ObjectSpec]
    labels: list[PersonLabels] = field(default_factory=list)
    contexts: list[list[tuple[str, float]]] = field(default_factory=list)
    logits: list[dict[str, float]] = field(default_factory=list)
    split: str = ""


def choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def int_box(b: Sequence[float], width: int, height: int) -> Box:
    x1 = int(np.clip(math.floor(b[0]), 0, width - 1))
    y1 = int(np.clip(math.floor(b[1]), 0, height - 1))
    x2 = int(np.clip(math.ceil(b[2]), x1 + 1, width))
    y2 = int(np.clip(math.ceil(b[3]), y1 + 1, height))
    return x1, y1, x2, y2


def _overlap_fraction(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / max(1.0, min(box_area(a), box_area(b)))


def fits(box: Box, persons: Sequence[Box], objects: Sequence[Box], width: int, height: int) -> bool:
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        return False
    if any(_overlap_fraction(box, p) > 0.08 for p in persons):
        return False
    return all(_overlap_fraction(box, o) <= 0.15 for o in objects)


def sample_kind(rng: np.random.Generator) -> str:
    return choice(rng, OBJECT_SAMPLING_WEIGHT)


def object_size(kind: str, side: float) -> tuple[float, float]:
    aspect = OBJECT_DRAWERS[kind][1]
    return side * math.sqrt(aspect), side / math.sqrt(aspect)


def _place_near(rng: np.random.Generator, person: Box, kind: str, persons: Sequence[Box],
                objects: Sequence[Box], width: int, height: int) -> Box | None:
    ph = person[3] - person[1]
    for _ in range(12):
        w, h = object_size(kind, rng.uniform(0.28, 0.5) * ph)
        gap = rng.uniform(0.0, 0.1) * ph
        x1 = person[2] + gap if rng.uniform() < 0.5 else person[0] - gap - w
        if kind in FLOOR_KINDS:  # standing on the floor near the person's feet
            y1 = min(person[3] + rng.uniform(-0.06, 0.02) * ph, height - 1) - h
        else:
            low, high = person[1] + 0.15 * ph, person[3] - h
            y1 = rng.uniform(low, max(low, high) + 1e-6)
        box = (int(round(x1)), int(round(y1)), int(round(x1 + w)), int(round(y1 + h)))
        if fits(box, persons, objects, width, height):
            return box
    return None


def _place_free(rng: np.random.Generator, kind: str, persons: Sequence[Box], objects: Sequence[Box],
                width: int, height: int, floor_y: int) -> Box | None:
    for _ in range(12):
        w, h = object_size(kind, rng.uniform(22.0, 64.0))
        x1 = rng.uniform(0, width - w)
        if kind in FLOOR_KINDS:
            y1 = rng.uniform(min(floor_y + 4, height - 2), height - 1) - h
        else:
            y1 = rng.uniform(0, height - h)
        box = (int(round(x1)), int(round(y1)), int(round(x1 + w)), int(round(y1 + h)))
        if fits(box, persons, objects, width, height):
            return box
    return None


def sample_emotic_scene(rng: np.random.Generator, name: str, index: int) -> tuple[Image.Image, SceneRecord]:
    width, height = IMAGE_SIZE
    image, floor_y = background(rng, width, height)
    count = int(rng.integers(1, 4))
    base = {1: (150.0, 200.0), 2: (120.0, 170.0), 3: (100.0, 145.0)}[count]
    slot = width / count
    persons: list[PersonSpec] = []
    for k in range(count):
        age, gender = choice(rng, AGE_PROBS), choice(rng, GENDER_PROBS)
        cues = BodyCues(*(choice(rng, BODY_CUE_PROBS[c]) for c in ("mouth", "brows", "arms", "posture")))
        feet = rng.uniform(floor_y + 8, height - 4)
        stature = min(rng.uniform(*base) * AGE_SCALE[age], (feet - 6) / 1.2)
        cx = slot * (k + 0.5) + rng.uniform(-0.18, 0.18) * slot
        facing = 1 if rng.uniform() < 0.5 else -1
        layout = person_layout(cx, feet, stature, facing, cues.arms, cues.posture, kid=age == "Kid")
        look = sample_look(rng, gender)
        persons.append(PersonSpec(int_box(layout.box, width, height), cues, gender, age, layout, look))

    person_boxes = [p.box for p in persons]
    objects: list[ObjectSpec] = []
    for p in persons:
        for _ in range(int(rng.choice(3, p=NEAR_OBJECTS_PROBS))):
            kind = sample_kind(rng)
            box = _place_near(rng, p.box, kind, person_boxes, [o.box for o in objects], width, height)
            if box is not None:
                objects.append(ObjectSpec(kind, box, round(float(rng.uniform(0.55, 0.99)), 3)))
    for _ in range(int(rng.choice(4, p=FREE_OBJECTS_PROBS))):
        kind = sample_kind(rng)
        box = _place_free(rng, kind, person_boxes, [o.box for o in objects], width, height, floor_y)
        if box is not None:
            objects.append(ObjectSpec(kind, box, round(float(rng.uniform(0.55, 0.99)), 3)))

    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj.kind, obj.box, rng)
    for p in sorted(persons, key=lambda q: q.layout.box[3]):  # people further back first
        draw_person(draw, p.layout, p.look, p.cues.mouth, p.cues.brows)
    return image, SceneRecord(name, index, persons, objects)


def label_scene(rng: np.random.Generator, record: SceneRecord) -> None:
    person_boxes = [p.box for p in record.persons]
    objects = [(o.kind, o.box) for o in record.objects]
    for i, person in enumerate(record.persons):
        context = person_context(i, person_boxes, objects)
        logits = cluster_logits(person.cues, context)
        record.contexts.append(context)
        record.logits.append(logits)
        record.labels.append(sample_labels(rng, logits, ANNOTATORS[record.split]))


def split_counts(images: int) -> dict[str, int]:
    n_val = max(1, int(round(images * SPLIT_FRACTIONS["val"])))
    n_test = max(1, int(round(images * SPLIT_FRACTIONS["test"])))
    return {"train": images - n_val - n_test, "val": n_val, "test": n_test}


def assign_splits(images: int, seed: int) -> list[str]:
    counts = split_counts(images)
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5F117])).permutation(images)
    splits = [""] * images
    bounds = np.cumsum([counts["train"], counts["val"]])
    for rank, idx in enumerate(order):
        splits[idx] = "train" if rank < bounds[0] else ("val" if rank < bounds[1] else "test")
    return splits


def image_rngs(seed: int, images: int) -> tuple[list[np.random.Generator], list[np.random.Generator]]:
    """Two streams per image (pixels, labels), each a function of (seed, image index) only."""
    scene = [np.random.default_rng(np.random.SeedSequence([seed, i, 1])) for i in range(images)]
    label = [np.random.default_rng(np.random.SeedSequence([seed, i, 2])) for i in range(images)]
    return scene, label
