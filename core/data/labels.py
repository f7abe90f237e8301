"""Class names of the supported data sets, in the order the label indices use."""
from __future__ import annotations

# The 26 EMOTIC categories, alphabetical, exactly as the annotations spell them.
EMOTIC_CATEGORIES: tuple[str, ...] = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence",
    "Disapproval", "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment",
    "Engagement", "Esteem", "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace",
    "Pleasure", "Sadness", "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning",
)

# CAER-S: label ids 0..6 as in the face-box files. The train folder says `Angry`,
# the test folder `Anger`: both are class 0.
CAERS_CLASSES: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
CAERS_FOLDER_ALIASES: dict[str, str] = {"Angry": "Anger"}


def class_names(kind: str) -> tuple[str, ...]:
    if kind == "emotic":
        return EMOTIC_CATEGORIES
    if kind == "caers":
        return CAERS_CLASSES
    raise ValueError(f"unknown dataset kind {kind!r}; expected 'emotic' or 'caers'")


def task_of(kind: str) -> str:
    """'multilabel' (sigmoid scores, mAP) or 'multiclass' (softmax, accuracy)."""
    return "multiclass" if kind == "caers" else "multilabel"
