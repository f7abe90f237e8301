"""Generated demo data set: EMOTIC-format (or CAER-S-format) images whose labels follow
known rules from the cues the relational model uses.

Command (reads the `synth` section of params.yaml)::

    python -m stages.data.synth          # == ctxemo synth --out DIR --images N --seed S --format emotic|caers

Pure entry point: ``generate(out_dir, images, seed, fmt) -> summary dict``.

Generative rules (EMOTIC format; every constant below is also written to synth_meta.json)
------------------------------------------------------------------------------------------
Scene. A 320x240 image of a wall over a floor (random colours, noise, sometimes a window)
with 1-3 people standing side by side (one horizontal slot each; adults, teenagers, kids
scaled 1.0/0.88/0.68) and objects: each person gets 0-2 objects placed right beside them
(gap 0-0.1 of their height) and 0-3 more objects fall anywhere that is free, so distances
vary continuously. 14 emotional object kinds (cake, balloon, gift, trophy, laptop, plant,
pillow, medkit, raincloud, fire, spider, trash, shards, spotlight) and 2 neutral ones
(chair, lamp) differ strongly in colour and texture.

Body cues, drawn independently of the context: mouth (smile / neutral / frown / open),
brows (relaxed / raised / furrowed), arms (down / up / crossed / to_head) and posture
(upright / slumped: head lowered and forward, face looking down).

Influence of an object o on person p: ``proximity * size`` where
``proximity = sigmoid((NEAR_GAP - gap/h_p) / NEAR_SOFTNESS)``, gap = the empty space
between the two boxes (0 when they touch or overlap) and h_p the person's box height
(0.98 when touching, 0.5 at a quarter of the height, ~0 beyond half of it), and
``size = clip(sqrt(area_o/area_p)/SIZE_REFERENCE, *SIZE_FACTOR_RANGE)``. Other people act
through the same rule as kind "person" (social context raises affection). Two people in one
image therefore get different labels when different objects stand beside them.

Labels. 13 latent emotion clusters (CLUSTERS) each hold a few EMOTIC categories with
membership probabilities, so co-occurrence is strong (joy: Happiness+Pleasure+Excitement;
suffering: Suffering+Pain+Sadness; anger: Anger+Annoyance+Disapproval; fear:
Fear+Disquietment+Surprise; ...); every one of the 26 categories belongs to some cluster.
For each person ``logit_c = CLUSTER_BASE[c] + sum(BODY_EFFECTS[cue][value][c]) +
sum_o influence(o) * OBJECT_EFFECTS[kind_o][c]`` and cluster c is active with probability
sigmoid(logit_c) (the highest-logit cluster when none fires). Body cues drive some clusters
(slumped -> tired, sadness; arms up -> pride), objects drive others (medkit -> suffering,
spotlight -> embarrassment, laptop -> work) and both touch most, so neither alone suffices.
Each annotator then picks each member category of each active cluster with its membership
probability, plus label noise: any other category with probability LABEL_NOISE. The train
split has one annotator; val and test have three, and their combined labels are the
categories chosen by a strict majority (the most-voted ones when no category has a majority).
Valence/arousal/dominance (1-10) are the mean of the active clusters' prototypes plus
annotator noise; combined = the rounded mean over annotators.

Splits ~70/15/15 by image (the people of one image share its split). Every image's content
depends on (seed, image index) only; the split assignment on (seed, number of images).

Files (EMOTIC): images/<name>.jpg, Annotations.mat (official layout), annotations_{train,
val,test}.csv (the widely used CSV layout), object_boxes.csv (every object and person box,
as a detector would report them), synth_meta.json (rules and counts) and synth_truth.jsonl
(per person: cues, object influences, cluster logits: the ground truth of the rules).

CAER-S format: 7-class frames train/<Class>/NNNN.png and test/<Class>/NNNN.png (the train
folder of Anger is named `Angry`), one large drawn face whose expression follows its class,
context objects correlated with the class (CAERS_CONTEXT_KINDS with probability
CAERS_CONTEXT_PROBABILITY, plus 0-2 random ones), face_boxes.txt (relpath,label,x1,y1,x2,y2)
and object_boxes.csv. Split ~80/20 per class.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from stages.data import synth_draw as sd
from stages.data.labels import CAERS_CLASSES, EMOTIC_CATEGORIES
from stages.errors import UserError

FORMATS = ("emotic", "caers")
IMAGE_SIZE = (320, 240)                      # width, height
IMAGE_FOLDER = "images"
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
ANNOTATORS = {"train": 1, "val": 3, "test": 3}
JPEG_QUALITY = 90
ORIGINAL_DATABASE = "synthetic"

# ---------------------------------------------------------------------------- the rules

# cluster -> {category: probability that an annotator names it when the cluster is active}
CLUSTERS: dict[str, dict[str, float]] = {
    "joy": {"Happiness": 0.95, "Pleasure": 0.8, "Excitement": 0.45},
    "affection": {"Affection": 0.9, "Happiness": 0.5, "Sympathy": 0.4, "Sensitivity": 0.15},
    "suffering": {"Suffering": 0.9, "Pain": 0.85, "Sadness": 0.55},
    "sadness": {"Sadness": 0.9, "Disconnection": 0.45, "Yearning": 0.4, "Sensitivity": 0.2},
    "anger": {"Anger": 0.85, "Annoyance": 0.8, "Disapproval": 0.6},
    "fear": {"Fear": 0.9, "Disquietment": 0.8, "Surprise": 0.3},
    "calm": {"Peace": 0.9, "Pleasure": 0.4, "Confidence": 0.3},
    "work": {"Engagement": 0.95, "Anticipation": 0.7, "Confidence": 0.2, "Doubt/Confusion": 0.15},
    "pride": {"Confidence": 0.9, "Esteem": 0.75, "Excitement": 0.4, "Happiness": 0.4},
    "surprise": {"Surprise": 0.9, "Excitement": 0.55, "Anticipation": 0.4},
    "disgust": {"Aversion": 0.9, "Disapproval": 0.5, "Annoyance": 0.35},
    "tired": {"Fatigue": 0.9, "Disconnection": 0.5, "Yearning": 0.25, "Peace": 0.2},
    "embarrassed": {"Embarrassment": 0.9, "Doubt/Confusion": 0.6, "Disquietment": 0.3, "Sensitivity": 0.3},
}
CLUSTER_NAMES: tuple[str, ...] = tuple(CLUSTERS)

# prior logit of each cluster: varied so that category frequencies vary (work is common as
# Engagement/Anticipation are in EMOTIC; embarrassment is rare)
CLUSTER_BASE: dict[str, float] = {
    "joy": -6.3, "affection": -6.3, "suffering": -7.0, "sadness": -6.6, "anger": -6.3, "fear": -6.6,
    "calm": -6.0, "work": -3.8, "pride": -6.6, "surprise": -6.6, "disgust": -7.0, "tired": -6.6,
    "embarrassed": -7.4,
}

# valence, arousal, dominance prototypes (1-10)
CLUSTER_VAD: dict[str, tuple[float, float, float]] = {
    "joy": (8, 6, 7), "affection": (8, 4, 6), "suffering": (2, 6, 3), "sadness": (3, 3, 4), "anger": (2, 8, 7),
    "fear": (3, 8, 3), "calm": (7, 2, 6), "work": (6, 5, 6), "pride": (8, 6, 8), "surprise": (6, 8, 5),
    "disgust": (3, 6, 6), "tired": (4, 2, 4), "embarrassed": (4, 6, 3),
}

BODY_CUE_PROBS: dict[str, dict[str, float]] = {
    "mouth": {"smile": 0.3, "neutral": 0.45, "frown": 0.15, "open": 0.1},
    "brows": {"relaxed": 0.6, "raised": 0.2, "furrowed": 0.2},
    "arms": {"down": 0.55, "up": 0.17, "crossed": 0.16, "to_head": 0.12},
    "posture": {"upright": 0.8, "slumped": 0.2},
}

# The main effects (+4.9..+7) against priors of about -6.5 give a cluster odds between
# about 1:5 and 1:1 from one strong cue and near certainty from two agreeing ones, while a
# lone secondary effect leaves it unlikely: labels stay learnable, not a lookup table.
BODY_EFFECTS: dict[str, dict[str, dict[str, float]]] = {
    "mouth": {
        "smile": {"joy": 6.3, "affection": 2.1, "calm": 1.4, "pride": 1.4, "sadness": -2.8, "suffering": -2.8,
                  "anger": -2.8, "disgust": -2.1},
        "neutral": {"work": 2.1, "calm": 1.4},
        "frown": {"sadness": 4.9, "anger": 2.1, "suffering": 2.1, "disgust": 2.1, "joy": -3.5, "calm": -2.1},
        "open": {"surprise": 5.6, "fear": 2.8, "joy": 0.7},
    },
    "brows": {
        "relaxed": {"calm": 2.1, "joy": 0.7},
        "raised": {"surprise": 3.5, "fear": 2.1, "embarrassed": 1.4},
        "furrowed": {"anger": 5.6, "disgust": 2.1, "work": 1.4, "calm": -2.8},
    },
    "arms": {
        "down": {},
        "up": {"pride": 5.6, "joy": 2.1, "surprise": 1.4, "tired": -2.8},
        "crossed": {"anger": 2.8, "disgust": 2.1, "pride": 1.4, "embarrassed": 0.7},
        "to_head": {"suffering": 3.5, "embarrassed": 3.5, "fear": 2.1, "tired": 1.4},
    },
    "posture": {
        "upright": {},
        "slumped": {"tired": 5.6, "sadness": 3.5, "suffering": 2.1, "pride": -4.2, "joy": -2.1},
    },
}

# effect of an object of each kind at full influence (touching, reference size)
OBJECT_EFFECTS: dict[str, dict[str, float]] = {
    "cake": {"joy": 6.3, "affection": 1.4, "sadness": -2.1},
    "balloon": {"joy": 3.5, "surprise": 3.5, "tired": -1.4},
    "gift": {"affection": 6.3, "surprise": 2.8},
    "trophy": {"pride": 6.3, "joy": 2.1, "sadness": -2.1},
    "laptop": {"work": 6.3, "tired": 1.4, "calm": -1.4},
    "plant": {"calm": 6.3, "anger": -2.1, "fear": -1.4},
    "pillow": {"tired": 6.3, "calm": 2.1, "work": -2.1},
    "medkit": {"suffering": 7.0, "joy": -2.8, "fear": 1.4},
    "raincloud": {"sadness": 6.3, "tired": 1.4, "joy": -2.8},
    "fire": {"fear": 7.0, "calm": -3.5, "surprise": 1.4},
    "spider": {"fear": 4.2, "disgust": 4.9},
    "trash": {"disgust": 6.3, "anger": 1.4},
    "shards": {"anger": 5.6, "suffering": 2.1, "calm": -2.1},
    "spotlight": {"embarrassed": 7.0, "surprise": 1.4},
    "chair": {},
    "lamp": {},
}
PERSON_KIND = "person"
SOCIAL_EFFECT: dict[str, float] = {"affection": 2.1}   # another person close by
OBJECT_KINDS: tuple[str, ...] = tuple(OBJECT_EFFECTS)
NEUTRAL_KINDS: tuple[str, ...] = tuple(k for k, v in OBJECT_EFFECTS.items() if not v)
OBJECT_SAMPLING_WEIGHT: dict[str, float] = {k: (0.6 if k in NEUTRAL_KINDS else 1.0) for k in OBJECT_KINDS}
# kinds that stand on the floor; the others may hang, fly or be held anywhere
FLOOR_KINDS: frozenset[str] = frozenset({"gift", "plant", "pillow", "trash", "shards", "fire", "chair", "lamp"})

NEAR_GAP = 0.25          # gap / person height at which the proximity weight is 0.5
NEAR_SOFTNESS = 0.06
SIZE_REFERENCE = 0.4     # sqrt(object area / person area) that counts as full size
SIZE_FACTOR_RANGE = (0.7, 1.3)
LABEL_NOISE = 0.005      # per annotator, per category not otherwise chosen
VAD_NOISE = 0.8

AGE_PROBS = {"Adult": 0.8, "Teenager": 0.1, "Kid": 0.1}
AGE_SCALE = {"Adult": 1.0, "Teenager": 0.88, "Kid": 0.68}
GENDER_PROBS = {"Male": 0.6, "Female": 0.4}
NEAR_OBJECTS_PROBS = (0.3, 0.5, 0.2)        # 0, 1, 2 objects beside each person
FREE_OBJECTS_PROBS = (0.25, 0.35, 0.28, 0.12)  # 0..3 objects anywhere

# CAER-S variant
CAERS_TEST_FRACTION = 0.2
CAERS_TRAIN_FOLDER = {"Anger": "Angry"}      # the CAER-S train tree spells class 0 this way
CAERS_CONTEXT_PROBABILITY = 0.65
CAERS_CONTEXT_KINDS: dict[str, tuple[str, ...]] = {
    "Anger": ("shards", "trash"), "Disgust": ("trash", "spider"), "Fear": ("fire", "spider"),
    "Happy": ("cake", "balloon"), "Neutral": ("laptop", "chair", "lamp"), "Sad": ("raincloud", "medkit"),
    "Surprise": ("gift", "balloon"),
}

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class BodyCues:
    mouth: str
    brows: str
    arms: str
    posture: str

    def __post_init__(self) -> None:
        for cue, value in self.as_dict().items():
            if value not in BODY_CUE_PROBS[cue]:
                raise ValueError(f"unknown {cue} {value!r}; expected one of {sorted(BODY_CUE_PROBS[cue])}")

    def as_dict(self) -> dict[str, str]:
        return {"mouth": self.mouth, "brows": self.brows, "arms": self.arms, "posture": self.posture}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def box_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Empty space between two [x1, y1, x2, y2] boxes (Chebyshev), 0 when they touch or overlap."""
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return float(max(dx, dy))


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def proximity_weight(person_box: Sequence[float], object_box: Sequence[float]) -> float:
    height = max(1.0, person_box[3] - person_box[1])
    gap = box_gap(person_box, object_box) / height
    return _sigmoid((NEAR_GAP - gap) / NEAR_SOFTNESS)


def size_factor(person_box: Sequence[float], object_box: Sequence[float]) -> float:
    ratio = math.sqrt(_area(object_box) / max(1.0, _area(person_box)))
    return float(np.clip(ratio / SIZE_REFERENCE, *SIZE_FACTOR_RANGE))


def influence(person_box: Sequence[float], object_box: Sequence[float]) -> float:
    """How strongly an object acts on a person: nearness times (bounded) relative size."""
    return proximity_weight(person_box, object_box) * size_factor(person_box, object_box)


def person_context(index: int, person_boxes: Sequence[Box], objects: Sequence[tuple[str, Box]]) -> list[tuple[str, float]]:
    """(kind, influence) of every object and every other person on person `index`."""
    own = person_boxes[index]
    context = [(kind, influence(own, box)) for kind, box in objects]
    context += [(PERSON_KIND, influence(own, box)) for j, box in enumerate(person_boxes) if j != index]
    return context


def cluster_logits(cues: BodyCues, context: Iterable[tuple[str, float]]) -> dict[str, float]:
    logits = dict(CLUSTER_BASE)
    for cue, value in cues.as_dict().items():
        for cluster, delta in BODY_EFFECTS[cue][value].items():
            logits[cluster] += delta
    for kind, weight in context:
        effects = SOCIAL_EFFECT if kind == PERSON_KIND else OBJECT_EFFECTS[kind]
        for cluster, delta in effects.items():
            logits[cluster] += weight * delta
    return logits


def cluster_probabilities(cues: BodyCues, context: Iterable[tuple[str, float]]) -> dict[str, float]:
    return {c: _sigmoid(v) for c, v in cluster_logits(cues, context).items()}


def category_probabilities(cues: BodyCues, context: Iterable[tuple[str, float]]) -> dict[str, float]:
    """P(one annotator names each category) under the rules (ignoring the rare fallback and
    the label noise): 1 - prod_c (1 - P(c active) * membership(c, category))."""
    probs = cluster_probabilities(cues, context)
    out = {}
    for cat in EMOTIC_CATEGORIES:
        miss = 1.0
        for cluster, members in CLUSTERS.items():
            miss *= 1.0 - probs[cluster] * members.get(cat, 0.0)
        out[cat] = 1.0 - miss
    return out


@dataclass
class PersonLabels:
    active: list[str]
    annotators: list[list[str]]
    annotator_vad: list[tuple[int, int, int]]
    combined: list[str]
    combined_vad: tuple[int, int, int]


def _canonical(cats: Iterable[str]) -> list[str]:
    chosen = set(cats)
    return [c for c in EMOTIC_CATEGORIES if c in chosen]


def sample_labels(rng: np.random.Generator, logits: dict[str, float], annotators: int) -> PersonLabels:
    """Active clusters (shared by all annotators: they look at the same person), then each
    annotator's categories, valence/arousal/dominance and the majority-combined labels."""
    active = [c for c in CLUSTER_NAMES if rng.uniform() < _sigmoid(logits[c])]
    if not active:
        active = [max(CLUSTER_NAMES, key=lambda c: logits[c])]
    strongest = max(active, key=lambda c: logits[c])
    sets, vads = [], []
    proto = np.mean([CLUSTER_VAD[c] for c in active], axis=0)
    for _ in range(annotators):
        chosen = {cat for c in active for cat, q in CLUSTERS[c].items() if rng.uniform() < q}
        noise = rng.uniform(size=len(EMOTIC_CATEGORIES)) < LABEL_NOISE
        chosen |= {cat for cat, flip in zip(EMOTIC_CATEGORIES, noise) if flip}
        if not chosen:
            chosen = {next(iter(CLUSTERS[strongest]))}
        sets.append(_canonical(chosen))
        vad = np.clip(np.rint(proto + rng.normal(0.0, VAD_NOISE, size=3)), 1, 10)
        vads.append(tuple(int(v) for v in vad))
    votes = Counter(cat for s in sets for cat in s)
    combined = [c for c, n in votes.items() if n * 2 > annotators]
    if not combined:
        top = max(votes.values())
        combined = [c for c, n in votes.items() if n == top]
    combined_vad = tuple(int(v) for v in np.clip(np.rint(np.mean(vads, axis=0)), 1, 10))
    return PersonLabels(active, sets, vads, _canonical(combined), combined_vad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- scenes

@dataclass
class PersonSpec:
    box: Box
    cues: BodyCues
    gender: str
    age: str
    layout: sd.PersonLayout
    look: sd.PersonLook


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


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _int_box(b: Sequence[float], width: int, height: int) -> Box:
    x1 = int(np.clip(math.floor(b[0]), 0, width - 1))
    y1 = int(np.clip(math.floor(b[1]), 0, height - 1))
    x2 = int(np.clip(math.ceil(b[2]), x1 + 1, width))
    y2 = int(np.clip(math.ceil(b[3]), y1 + 1, height))
    return x1, y1, x2, y2


def _overlap_fraction(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / max(1.0, min(_area(a), _area(b)))


def _fits(box: Box, persons: Sequence[Box], objects: Sequence[Box], width: int, height: int) -> bool:
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        return False
    if any(_overlap_fraction(box, p) > 0.08 for p in persons):
        return False
    return all(_overlap_fraction(box, o) <= 0.15 for o in objects)


def _sample_kind(rng: np.random.Generator) -> str:
    return _choice(rng, OBJECT_SAMPLING_WEIGHT)


def _object_size(kind: str, side: float) -> tuple[float, float]:
    aspect = sd.OBJECT_DRAWERS[kind][1]
    return side * math.sqrt(aspect), side / math.sqrt(aspect)


def _place_near(rng: np.random.Generator, person: Box, kind: str, persons: Sequence[Box],
                objects: Sequence[Box], width: int, height: int) -> Box | None:
    ph = person[3] - person[1]
    for _ in range(12):
        w, h = _object_size(kind, rng.uniform(0.28, 0.5) * ph)
        gap = rng.uniform(0.0, 0.1) * ph
        x1 = person[2] + gap if rng.uniform() < 0.5 else person[0] - gap - w
        if kind in FLOOR_KINDS:  # standing on the floor near the person's feet
            y1 = min(person[3] + rng.uniform(-0.06, 0.02) * ph, height - 1) - h
        else:
            low, high = person[1] + 0.15 * ph, person[3] - h
            y1 = rng.uniform(low, max(low, high) + 1e-6)
        box = (int(round(x1)), int(round(y1)), int(round(x1 + w)), int(round(y1 + h)))
        if _fits(box, persons, objects, width, height):
            return box
    return None


def _place_free(rng: np.random.Generator, kind: str, persons: Sequence[Box], objects: Sequence[Box],
                width: int, height: int, floor_y: int) -> Box | None:
    for _ in range(12):
        w, h = _object_size(kind, rng.uniform(22.0, 64.0))
        x1 = rng.uniform(0, width - w)
        if kind in FLOOR_KINDS:
            y1 = rng.uniform(min(floor_y + 4, height - 2), height - 1) - h
        else:
            y1 = rng.uniform(0, height - h)
        box = (int(round(x1)), int(round(y1)), int(round(x1 + w)), int(round(y1 + h)))
        if _fits(box, persons, objects, width, height):
            return box
    return None


def sample_emotic_scene(rng: np.random.Generator, name: str, index: int) -> tuple[Image.Image, SceneRecord]:
    width, height = IMAGE_SIZE
    image, floor_y = sd.background(rng, width, height)
    count = int(rng.integers(1, 4))
    base = {1: (150.0, 200.0), 2: (120.0, 170.0), 3: (100.0, 145.0)}[count]
    slot = width / count
    persons: list[PersonSpec] = []
    for k in range(count):
        age, gender = _choice(rng, AGE_PROBS), _choice(rng, GENDER_PROBS)
        cues = BodyCues(*(_choice(rng, BODY_CUE_PROBS[c]) for c in ("mouth", "brows", "arms", "posture")))
        feet = rng.uniform(floor_y + 8, height - 4)
        stature = min(rng.uniform(*base) * AGE_SCALE[age], (feet - 6) / 1.2)
        cx = slot * (k + 0.5) + rng.uniform(-0.18, 0.18) * slot
        facing = 1 if rng.uniform() < 0.5 else -1
        layout = sd.person_layout(cx, feet, stature, facing, cues.arms, cues.posture, kid=age == "Kid")
        look = sd.sample_look(rng, gender)
        persons.append(PersonSpec(_int_box(layout.box, width, height), cues, gender, age, layout, look))

    person_boxes = [p.box for p in persons]
    objects: list[ObjectSpec] = []
    for p in persons:
        for _ in range(int(rng.choice(3, p=NEAR_OBJECTS_PROBS))):
            kind = _sample_kind(rng)
            box = _place_near(rng, p.box, kind, person_boxes, [o.box for o in objects], width, height)
            if box is not None:
                objects.append(ObjectSpec(kind, box, round(float(rng.uniform(0.55, 0.99)), 3)))
    for _ in range(int(rng.choice(4, p=FREE_OBJECTS_PROBS))):
        kind = _sample_kind(rng)
        box = _place_free(rng, kind, person_boxes, [o.box for o in objects], width, height, floor_y)
        if box is not None:
            objects.append(ObjectSpec(kind, box, round(float(rng.uniform(0.55, 0.99)), 3)))

    draw = ImageDraw.Draw(image)
    for obj in objects:
        sd.draw_object(draw, obj.kind, obj.box, rng)
    for p in sorted(persons, key=lambda q: q.layout.box[3]):  # people further back first
        sd.draw_person(draw, p.layout, p.look, p.cues.mouth, p.cues.brows)
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


def _image_rngs(seed: int, images: int) -> tuple[list[np.random.Generator], list[np.random.Generator]]:
    """Two streams per image (pixels, labels), each a function of (seed, image index) only."""
    scene = [np.random.default_rng(np.random.SeedSequence([seed, i, 1])) for i in range(images)]
    label = [np.random.default_rng(np.random.SeedSequence([seed, i, 2])) for i in range(images)]
    return scene, label


# ---------------------------------------------------------------------------- writers

def _struct_array(records: Sequence[dict[str, Any]], fields: Sequence[str]) -> np.ndarray:
    """A 1xN MATLAB struct array (savemat writes a structured object array as one)."""
    arr = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        for f in fields:
            arr[0, i][f] = rec[f]
    return arr


def _cell_row(strings: Sequence[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


def _vad_struct(vads: Sequence[Sequence[int]]) -> np.ndarray:
    return _struct_array([{"valence": float(v[0]), "arousal": float(v[1]), "dominance": float(v[2])} for v in vads],
                         ("valence", "arousal", "dominance"))


TRAIN_PERSON_FIELDS = ("body_bbox", "annotations_categories", "annotations_continuous", "gender", "age")
EVAL_PERSON_FIELDS = ("body_bbox", "annotations_categories", "combined_categories", "annotations_continuous",
                      "combined_continuous", "gender", "age")
IMAGE_FIELDS = ("filename", "folder", "image_size", "original_database", "person")


def _mat_person(person: PersonSpec, labels: PersonLabels, split: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "body_bbox": np.asarray(person.box, dtype=np.float64).reshape(1, 4),
        "annotations_categories": _struct_array([{"categories": _cell_row(s)} for s in labels.annotators],
                                                ("categories",)),
        "annotations_continuous": _vad_struct(labels.annotator_vad),
        "gender": person.gender,
        "age": person.age,
    }
    if split != "train":
        rec["combined_categories"] = _cell_row(labels.combined)
        rec["combined_continuous"] = _vad_struct([labels.combined_vad])
    return rec


def mat_bytes(records_by_split: dict[str, list[SceneRecord]], seed: int) -> bytes:
    """Annotations.mat in the official EMOTIC layout (keys train/val/test), byte-reproducible."""
    width, height = IMAGE_SIZE
    content = {}
    for split, records in records_by_split.items():
        fields = TRAIN_PERSON_FIELDS if split == "train" else EVAL_PERSON_FIELDS
        images = []
        for rec in records:
            persons = [_mat_person(p, lab, split) for p, lab in zip(rec.persons, rec.labels)]
            images.append({
                "filename": rec.name,
                "folder": IMAGE_FOLDER,
                "image_size": _struct_array([{"n_col": float(width), "n_row": float(height)}], ("n_col", "n_row")),
                "original_database": _struct_array([{"name": ORIGINAL_DATABASE, "info": np.zeros((0, 0))}],
                                                   ("name", "info")),
                "person": _struct_array(persons, fields),
            })
        content[split] = _struct_array(images, IMAGE_FIELDS)
    buf = io.BytesIO()
    scipy.io.savemat(buf, content, format="5", long_field_names=False, do_compression=False)
    data = bytearray(buf.getvalue())
    # the 116-byte text header carries a creation time; a fixed text keeps the file reproducible
    header = f"MATLAB 5.0 MAT-file, Platform: posix, Created by: ctxemo synth (seed {seed})".encode("ascii")
    data[:116] = header.ljust(116, b" ")
    return bytes(data)


CSV_HEADER = ["Index", "Folder", "Filename", "Image Size", "BBox", "Categorical_Labels", "Continuous_Labels",
              "Gender", "Age"]


def csv_text(records: Sequence[SceneRecord], split: str) -> str:
    """The widely used CSV layout (one row per person; val/test carry the combined labels)."""
    width, height = IMAGE_SIZE
    buf = io.StringIO()
    writer = csv.writer(buf, dialect="excel")
    writer.writerow(CSV_HEADER)
    index = 0
    for rec in records:
        for person, labels in zip(rec.persons, rec.labels):
            cats = labels.annotators[0] if split == "train" else labels.combined
            vad = labels.annotator_vad[0] if split == "train" else labels.combined_vad
            writer.writerow([index, IMAGE_FOLDER, rec.name, str([width, height]), str(list(person.box)),
                             str(list(cats)), str(list(vad)), person.gender, person.age])
            index += 1
    return buf.getvalue()


def final_labels(labels: PersonLabels, split: str) -> list[str]:
    return labels.annotators[0] if split == "train" else labels.combined


def _object_rows(image_path: str, objects: Sequence[ObjectSpec], persons: Sequence[tuple[Box, float]]) -> list[list]:
    rows = [[image_path, *o.box, o.kind, f"{o.score:.3f}"] for o in objects]
    rows += [[image_path, *box, PERSON_KIND, f"{score:.3f}"] for box, score in persons]
    return rows


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _rules_meta() -> dict[str, Any]:
    return {
        "image_size": list(IMAGE_SIZE),
        "clusters": {c: {"members": CLUSTERS[c], "base_logit": CLUSTER_BASE[c], "vad": list(CLUSTER_VAD[c])}
                     for c in CLUSTER_NAMES},
        "body_cue_probabilities": BODY_CUE_PROBS,
        "body_effects": BODY_EFFECTS,
        "object_kinds": {k: {"effects": OBJECT_EFFECTS[k], "sampling_weight": OBJECT_SAMPLING_WEIGHT[k],
                             "aspect": sd.OBJECT_DRAWERS[k][1]} for k in OBJECT_KINDS},
        "social_effect": SOCIAL_EFFECT,
        "influence": {
            "formula": "sigmoid((near_gap - gap/person_height)/softness) * clip(sqrt(area_o/area_p)/size_reference, *size_factor_range)",
            "near_gap": NEAR_GAP, "softness": NEAR_SOFTNESS, "size_reference": SIZE_REFERENCE,
            "size_factor_range": list(SIZE_FACTOR_RANGE),
        },
        "labels": {
            "cluster_activation": "Bernoulli(sigmoid(base + body effects + sum influence * object effects)); "
                                  "the highest-logit cluster when none fires",
            "annotator": "each member of each active cluster with its membership probability, plus label_noise "
                         "per other category",
            "label_noise": LABEL_NOISE, "annotators": ANNOTATORS,
            "combined": "categories named by a strict majority of annotators (most-voted when none)",
            "vad": "mean of active cluster prototypes + N(0, vad_noise) per annotator, rounded, clipped to 1..10",
            "vad_noise": VAD_NOISE,
        },
        "people": {"per_image": [1, 3], "age": AGE_PROBS, "gender": GENDER_PROBS,
                   "near_objects": list(NEAR_OBJECTS_PROBS), "free_objects": list(FREE_OBJECTS_PROBS)},
    }


def _truth_row(rec: SceneRecord, i: int) -> dict[str, Any]:
    person, labels = rec.persons[i], rec.labels[i]
    n_obj = len(rec.objects)
    context = [{"object": k if k < n_obj else None, "kind": kind, "influence": round(w, 5)}
               for k, (kind, w) in enumerate(rec.contexts[i]) if w >= 1e-3]
    return {
        "split": rec.split, "filename": rec.name, "person": i, "body_bbox": list(person.box),
        "cues": person.cues.as_dict(), "gender": person.gender, "age": person.age,
        "context": context, "cluster_logits": {c: round(v, 5) for c, v in rec.logits[i].items()},
        "active_clusters": labels.active, "annotators": labels.annotators,
        "labels": final_labels(labels, rec.split),
    }


# ---------------------------------------------------------------------------- output directory

KNOWN_OUTPUTS = {"images", "train", "test", "Annotations.mat", "annotations_train.csv", "annotations_val.csv",
                 "annotations_test.csv", "object_boxes.csv", "face_boxes.txt", "synth_meta.json",
                 "synth_truth.jsonl"}


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.resolve() == Path(out_dir.resolve().anchor):
        raise UserError(f"synth: --out {out_dir} is a filesystem root; give a directory for the data set")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"synth: --out {out_dir} exists and is not a directory")
    if out_dir.is_dir():
        entries = {p.name for p in out_dir.iterdir()}
        if entries and ("synth_meta.json" not in entries or not entries <= KNOWN_OUTPUTS):
            raise UserError(f"synth: --out {out_dir} is not empty and is not a generated data set "
                            f"(found {sorted(entries)[:5]}); choose an empty or new directory")


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging directory in, so a killed run never leaves half a data set."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _validate(images: int, seed: int, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"synth: unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)):
        raise UserError(f"synth: --images must be an integer, got {images!r}")
    minimum = 3 if fmt == "emotic" else 2 * len(CAERS_CLASSES)
    if images < minimum:
        raise UserError(f"synth: --images {images} is too small for format {fmt}: at least {minimum} "
                        f"(one image per split{' and class' if fmt == 'caers' else ''})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"synth: --seed must be a non-negative integer, got {seed!r}")


def generate(out_dir: Path, images: int, seed: int, fmt: str = "emotic") -> dict[str, Any]:
    """Write a generated data set of `images` images under `out_dir`; return a summary.

    The same (images, seed, fmt) gives byte-identical files. An existing `out_dir` must be
    empty or an earlier generated data set (it is replaced).
    """
    _validate(images, seed, fmt)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.synth-partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if fmt == "emotic":
            summary = _generate_emotic(staging, int(images), int(seed))
        else:
            summary = _generate_caers(staging, int(images), int(seed))
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["out_dir"] = str(out_dir)
    return summary


def _generate_emotic(root: Path, images: int, seed: int) -> dict[str, Any]:
    (root / IMAGE_FOLDER).mkdir()
    splits = assign_splits(images, seed)
    scene_rngs, label_rngs = _image_rngs(seed, images)
    records: list[SceneRecord] = []
    box_rows: list[list] = []
    for i in range(images):
        name = f"synth_{i:05d}.jpg"
        image, rec = sample_emotic_scene(scene_rngs[i], name, i)
        rec.split = splits[i]
        label_scene(label_rngs[i], rec)
        image.save(root / IMAGE_FOLDER / name, format="JPEG", quality=JPEG_QUALITY)
        person_scores = [(p.box, round(float(scene_rngs[i].uniform(0.9, 0.999)), 3)) for p in rec.persons]
        box_rows += _object_rows(f"{IMAGE_FOLDER}/{name}", rec.objects, person_scores)
        records.append(rec)

    by_split = {s: [r for r in records if r.split == s] for s in SPLIT_FRACTIONS}
    (root / "Annotations.mat").write_bytes(mat_bytes(by_split, seed))
    for split, recs in by_split.items():
        with (root / f"annotations_{split}.csv").open("w", newline="") as fh:
            fh.write(csv_text(recs, split))
    _write_csv(root / "object_boxes.csv", ["image_path", "x1", "y1", "x2", "y2", "label", "score"], box_rows)
    with (root / "synth_truth.jsonl").open("w") as fh:
        for rec in records:
            for i in range(len(rec.persons)):
                fh.write(json.dumps(_truth_row(rec, i), sort_keys=True) + "\n")

    label_counts = Counter(c for r in records for lab in r.labels for c in final_labels(lab, r.split))
    summary: dict[str, Any] = {
        "format": "emotic", "seed": seed,
        "images": {s: len(by_split[s]) for s in SPLIT_FRACTIONS},
        "persons": {s: sum(len(r.persons) for r in by_split[s]) for s in SPLIT_FRACTIONS},
        "objects": {s: sum(len(r.objects) for r in by_split[s]) for s in SPLIT_FRACTIONS},
        "label_counts": {c: label_counts.get(c, 0) for c in EMOTIC_CATEGORIES},
        "object_kind_counts": dict(sorted(Counter(o.kind for r in records for o in r.objects).items())),
        "mean_labels_per_person": round(sum(label_counts.values()) / max(1, sum(len(r.persons) for r in records)), 3),
        "files": ["Annotations.mat", "annotations_test.csv", "annotations_train.csv", "annotations_val.csv",
                  "object_boxes.csv", "synth_meta.json", "synth_truth.jsonl"],
        "image_files": images,
    }
    meta = {"generator": "stages.data.synth", "format": "emotic", "seed": seed, "images_requested": images,
            "summary": summary, "categories": list(EMOTIC_CATEGORIES), "rules": _rules_meta()}
    (root / "synth_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return summary


# ---------------------------------------------------------------------------- CAER-S

def caers_folder(split: str, cls: str) -> str:
    return CAERS_TRAIN_FOLDER.get(cls, cls) if split == "train" else cls


def sample_caers_frame(rng: np.random.Generator, emotion: str) -> tuple[Image.Image, Box, Box, list[ObjectSpec]]:
    width, height = IMAGE_SIZE
    image, _ = sd.background(rng, width, height)
    r = rng.uniform(34.0, 48.0)
    hx, hy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.42) * height
    look = sd.sample_look(rng, _choice(rng, GENDER_PROBS))
    torso = (hx - 1.7 * r, hy + 0.85 * r, hx + 1.7 * r, float(height + 10))
    person_box = _int_box((torso[0], hy - r, torso[2], torso[3]), width, height)
    face_box = _int_box((hx - 0.88 * r, hy - r, hx + 0.88 * r, hy + r), width, height)

    kinds = []
    if rng.uniform() < CAERS_CONTEXT_PROBABILITY:
        options = CAERS_CONTEXT_KINDS[emotion]
        kinds.append(options[int(rng.integers(len(options)))])
    kinds += [_sample_kind(rng) for _ in range(int(rng.integers(0, 3)))]
    objects: list[ObjectSpec] = []
    for kind in kinds:
        for _ in range(12):
            w, h = _object_size(kind, rng.uniform(45.0, 85.0))
            x1 = rng.uniform(0, width - w)
            y1 = rng.uniform(0.25 * height, height - h)
            box = (int(round(x1)), int(round(y1)), int(round(x1 + w)), int(round(y1 + h)))
            if _fits(box, [person_box], [o.box for o in objects], width, height):
                objects.append(ObjectSpec(kind, box, round(float(rng.uniform(0.55, 0.99)), 3)))
                break

    draw = ImageDraw.Draw(image)
    for obj in objects:
        sd.draw_object(draw, obj.kind, obj.box, rng)
    draw.rounded_rectangle(torso, radius=0.6 * r, fill=look.shirt)
    draw.rectangle([hx - 0.35 * r, hy + 0.6 * r, hx + 0.35 * r, hy + 1.0 * r], fill=look.skin)
    sd.draw_caers_face(draw, hx, hy, r, emotion, look.skin, look.hair)
    return image, face_box, person_box, objects


def _generate_caers(root: Path, images: int, seed: int) -> dict[str, Any]:
    n_classes = len(CAERS_CLASSES)
    order_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCAE75]))
    classes = order_rng.permutation(np.arange(images) % n_classes)
    per_class = Counter(int(c) for c in classes)
    n_test = {c: max(1, int(round(per_class[c] * CAERS_TEST_FRACTION))) for c in per_class}
    seen: Counter = Counter()
    numbering: Counter = Counter()
    scene_rngs, _ = _image_rngs(seed, images)
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
        box_rows += _object_rows(rel, objects, [(person, 0.99)])
        counts[split][cls] += 1
    face_lines.sort()
    box_rows.sort(key=lambda row: row[0])  # stable: keeps each frame's rows in their order
    (root / "face_boxes.txt").write_text("".join(face_lines))
    _write_csv(root / "object_boxes.csv", ["image_path", "x1", "y1", "x2", "y2", "label", "score"], box_rows)
    summary: dict[str, Any] = {
        "format": "caers", "seed": seed,
        "images": {s: sum(counts[s].values()) for s in counts},
        "persons": {s: sum(counts[s].values()) for s in counts},
        "label_counts": {c: counts["train"][c] + counts["test"][c] for c in CAERS_CLASSES},
        "label_counts_by_split": {s: {c: counts[s][c] for c in CAERS_CLASSES} for s in counts},
        "files": ["face_boxes.txt", "object_boxes.csv", "synth_meta.json"],
        "image_files": images,
    }
    meta = {"generator": "stages.data.synth", "format": "caers", "seed": seed, "images_requested": images,
            "summary": summary, "classes": list(CAERS_CLASSES),
            "rules": {"image_size": list(IMAGE_SIZE), "test_fraction": CAERS_TEST_FRACTION,
                      "train_folder_aliases": CAERS_TRAIN_FOLDER, "context_probability": CAERS_CONTEXT_PROBABILITY,
                      "context_kinds": {k: list(v) for k, v in CAERS_CONTEXT_KINDS.items()},
                      "face": "one frontal face per frame, expression drawn from the class "
                              "(see stages/data/synth_draw.draw_caers_face)"}}
    (root / "synth_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return summary


def main() -> None:
    from stages.params import load_params

    cfg = load_params().synth
    try:
        summary = generate(Path(cfg.out), cfg.images, cfg.seed, cfg.format)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({k: summary[k] for k in ("format", "out_dir", "images", "persons")}))


if __name__ == "__main__":
    main()
