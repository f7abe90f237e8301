"""The rules of the generated demo data set: which labels a person gets from the cues the
relational model uses (body cues, nearby objects, other people) and how annotators name them.

core/synth/scenes.py samples the scenes these rules read (who stands where, which object is
beside whom); core/synth/emotic.py and core/synth/caers.py write the files. The rules stay
apart from the drawing so that tests (and anyone checking the demo's numbers) can apply them
to boxes without drawing a pixel.

Generative rules (EMOTIC format; every constant below is also written to synth_meta.json)
------------------------------------------------------------------------------------------
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
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from core.data.labels import EMOTIC_CATEGORIES

ANNOTATORS = {"train": 1, "val": 3, "test": 3}  # annotators per person, by split (val/test: majority vote)

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

NEAR_GAP = 0.25          # gap / person height at which the proximity weight is 0.5
NEAR_SOFTNESS = 0.06
SIZE_REFERENCE = 0.4     # sqrt(object area / person area) that counts as full size
SIZE_FACTOR_RANGE = (0.7, 1.3)
LABEL_NOISE = 0.005      # per annotator, per category not otherwise chosen
VAD_NOISE = 0.8

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


def box_area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def proximity_weight(person_box: Sequence[float], object_box: Sequence[float]) -> float:
    height = max(1.0, person_box[3] - person_box[1])
    gap = box_gap(person_box, object_box) / height
    return _sigmoid((NEAR_GAP - gap) / NEAR_SOFTNESS)


def size_factor(person_box: Sequence[float], object_box: Sequence[float]) -> float:
    ratio = math.sqrt(box_area(object_box) / max(1.0, box_area(person_box)))
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
