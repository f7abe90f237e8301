"""CAER-S-format writer of the generated demo data set (`ctxemo synth --format caers`).

CAER-S format: 7-class frames train/<Class>/NNNN.png and test/<Class>/NNNN.png (the train
folder of Anger is named `Angry`), one large drawn face whose expression follows its class,
context objects correlated with the class (CAERS_CONTEXT_KINDS with probability
CAERS_CONTEXT_PROBABILITY, plus 0-2 random ones), face_boxes.txt (relpath,label,x1,y1,x2,y2)
and object_boxes.csv. Split ~80/20 per class.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core.data.labels import CAERS_CLASSES
from core.synth.canvas import background
from core.synth.draw_objects import draw_object
from core.synth.draw_people import draw_caers_face, sample_look
from core.synth.emotic import GENERATOR, object_rows, write_object_boxes
from core.synth.rules import Box
from core.synth.scenes import (
    GENDER_PROBS,
    IMAGE_SIZE,
    ObjectSpec,
    choice,
    fits,
    image_rngs,
    int_box,
    object_size,
    sample_kind,
)

CAERS_TEST_FRACTION = 0.2
CAERS_TRAIN_FOLDER = {"Anger": "Angry"}      # the CAER-S train tree spells class 0 this way
CAERS_CONTEXT_PROBABILITY = 0.65
CAERS_CONTEXT_KINDS: dict[str, tuple[str, ...]] = {
    "Anger": ("shards", "trash"), "Disgust": ("trash", "spider"), "Fear": ("fire", "spider"),
    "Happy": ("cake", "balloon"), "Neutral": ("laptop", "chair", "lamp"), "Sad": ("raincloud", "medkit"),
    "Surprise": ("gift", "balloon"),
}


def caers_folder(split: str, cls: str) -> str:
    return CAERS_TRAIN_FOLDER.get(cls, cls) if split == "train" else cls


def sample_caers_frame(rng: np.random.Generator, emotion: str) -> tuple[Image.Image, Box, Box, list[ObjectSpec]]:
    width, height = IMAGE_SIZE
    image, _ = background(rng, width, height)
    r = rng.uniform(34.0, 48.0)
    hx, hy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.42) * height
    look = sample_look(rng, choice(rng, GENDER_PROBS))
    torso = (hx - 1.7 * r, hy + 0.85 * r, hx + 1.7 * r, float(height + 10))
    person_box = int_box((torso[0], hy - r, torso[2], torso[3]), width, height)
    face_box = int_box((hx - 0.88 * r, hy - r, hx + 0.88 * r, hy + r), width, height)

    kinds = []
    if rng.uniform() < CAERS_CONTEXT_PROBABILITY:
        options = CAERS_CONTEXT_KINDS[emotion]
        kinds.append(options[int(rng.integers(len(options)))])
    kinds += [sample_kind(rng) for _ in range(int(rng.integers(0, 3)))]
    objects: list[ObjectSpec] = []
    for kind in kinds:
        for _ in range(12):
            w, h = object_size(kind, rng.uniform(45.0, 85.0))
            x1 = rng.uniform(0, width - w)
            y1 = rng.uniform(0.25 * height, height - h)
            box = (int(round(x1)), int(round(y1)), int(round(x1 + w)), int(round(y1 + h)))
            if fits(box, [person_box], [o.box for o in objects], width, height):
                objects.append(ObjectSpec(kind, box, round(float(rng.uniform(0.55, 0.99)), 3)))
                break

    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj.kind, obj.box, rng)
    draw.rounded_rectangle(torso, radius=0.6 * r, fill=look.shirt)
    draw.rectangle([hx - 0.35 * r, hy + 0.6 * r, hx + 0.35 * r, hy + 1.0 * r], fill=look.skin)
    draw_caers_face(draw, hx, hy, r, emotion, look.skin, look.hair)
    return image, face_box, person_box, objects


def generate_caers(root: Path, images: int, seed: int) -> dict[str, Any]:
    """Write a CAER-S tree of `images` frames into the (empty) folder `root`; return its summary."""
    n_classes = len(CAERS_CLASSES)
    order_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCAE75]))
    classes = order_rng.permutation(np.arange(images) % n_classes)
    per_class = Counter(int(c) for c in classes)
    n_test = {c: max(1, int(round(per_class[c] * CAERS_TEST_FRACTION))) for c in per_class}
    seen: Counter = Counter()
    numbering: Counter = Counter()
    scene_rngs, _ = image_rngs(seed, images)
    face_lines, box_rows = [], []
    counts = {"train": Counter(), "test": Counter()}
    for i, label in enumerate(int(c) for c in classes):
        cls = CAERS_CLASSES[label]
        split = "test" if seen[label] < n_test[label] else "train"
        seen[label] += 1
        numbering[(split, label)] += 1
        rel = f"{split}/{caers_folder(split, cls)}/{numbering[(split, label)]:04d}.png"
        image, face, person, objects = sample_caers_frame(scene_rngs[i], cls)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
        face_lines.append(f"{rel},{label},{face[0]},{face[1]},{face[2]},{face[3]}\n")
        box_rows += object_rows(rel, objects, [(person, 0.99)])
        counts[split][cls] += 1
    face_lines.sort()
    box_rows.sort(key=lambda row: row[0])  # stable: keeps each frame's rows in their order
    (root / "face_boxes.txt").write_text("".join(face_lines))
    write_object_boxes(root / "object_boxes.csv", box_rows)
    summary: dict[str, Any] = {
        "format": "caers", "seed": seed,
        "images": {s: sum(counts[s].values()) for s in counts},
        "persons": {s: sum(counts[s].values()) for s in counts},
        "label_counts": {c: counts["train"][c] + counts["test"][c] for c in CAERS_CLASSES},
        "label_counts_by_split": {s: {c: counts[s][c] for c in CAERS_CLASSES} for s in counts},
        "files": ["face_boxes.txt", "object_boxes.csv", "synth_meta.json"],
        "image_files": images,
    }
    meta = {"generator": GENERATOR, "format": "caers", "seed": seed, "images_requested": images,
            "summary": summary, "classes": list(CAERS_CLASSES),
            "rules": {"image_size": list(IMAGE_SIZE), "test_fraction": CAERS_TEST_FRACTION,
                      "train_folder_aliases": CAERS_TRAIN_FOLDER, "context_probability": CAERS_CONTEXT_PROBABILITY,
                      "context_kinds": {k: list(v) for k, v in CAERS_CONTEXT_KINDS.items()},
                      "face": "one frontal face per frame, expression drawn from the class "
                              "(see core/synth/draw_people.draw_caers_face)"}}
    (root / "synth_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return summary
