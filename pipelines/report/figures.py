"""The report's figures: pure functions, data in, one PNG written, its path out (matplotlib, Agg backend).

The co-occurrence heatmap is the cooccurrence stage's own (core/graph/cooccurrence.py) and the
person image is `ctxemo predict --annotate`'s drawing (pipelines/predict.py), so the report shows
them exactly as those commands do.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_IMAGE_SIDE = 640  # person images are shrunk to this (the page shows them at most this wide)
DPI = 90


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def ap_bars(per_class: Mapping[str, float | None], path: Path, title: str) -> Path:
    """Horizontal bars of per-class AP, best at the top; classes without a value (no test positive) left out."""
    plt = _pyplot()
    items = sorted(((name, value) for name, value in per_class.items() if value is not None), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.26 * len(items) + 1.2)))
    ax.barh([name for name, _ in items], [value for _, value in items], color="#4c72b0")
    for y, (_, value) in enumerate(items):
        ax.text(value + 0.01, y, f"{value:.2f}", va="center", fontsize=7)
    ax.set(xlim=(0, 1.08), xlabel="AP (test)", title=title)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pr_grid(curves: Mapping[str, Mapping[str, np.ndarray]], ap: Mapping[str, float | None], path: Path,
            columns: int = 6) -> Path:
    """One small precision-recall panel per class (sklearn's curve drawn as a step), with its AP."""
    plt = _pyplot()
    names = list(curves)
    rows = max(1, -(-len(names) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 1.9 * rows), squeeze=False,
                             sharex=True, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        curve = curves[name]
        ax.step(curve["recall"], curve["precision"], where="post", lw=1.2, color="#c44e52")
        value = ap.get(name)
        ax.set_title(f"{name}" + ("" if value is None else f" ({value:.2f})"), fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1.05))
        ax.tick_params(labelsize=6)
    fig.supxlabel("recall", fontsize=8)
    fig.supylabel("precision", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def cooccurrence(probabilities: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """The paper's Fig. 6: P(label j | label i) on the training split, as the cooccurrence stage draws it."""
    from core.graph.cooccurrence import plot_cooccurrence

    plot_cooccurrence(np.asarray(probabilities), class_names, Path(path),
                      title="label co-occurrence P(j | i), training split")
    return Path(path)


def confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Counts of test persons, rows the true class, columns the predicted one."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    side = min(12.0, 1.0 + 0.7 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    top = matrix.max() if matrix.size else 0
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, str(value), ha="center", va="center", fontsize=8,
                color="white" if top and value > top / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return _save(fig, path)


def upsample(feature: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [h,w] map stretched bilinearly over height x width pixels (pixel centres aligned, align_corners=False)."""
    import torch
    from torch.nn import functional as F

    tensor = torch.as_tensor(np.asarray(feature, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def channel_heatmaps(crop: np.ndarray, maps: np.ndarray, channels: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The paper's Fig. 11: the person crop, then each channel's map (upsampled) over it, titled with its gate.

    Each map is coloured from its own minimum to its maximum (taken on the map itself, so that
    interpolation's rounding never turns a constant map, e.g. a 1 x 1 one, into noise; a constant
    map shows flat); the title gives its gate and its largest activation, so maps compare in value.
    """
    plt = _pyplot()
    crop = np.asarray(crop)
    height, width = crop.shape[:2]
    fig, axes = plt.subplots(1, len(channels) + 1, figsize=(2.0 * (len(channels) + 1), 2.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(crop)
    axes[0].set_title("person view", fontsize=8)
    for ax, feature, channel in zip(axes[1:], maps, channels):
        low, span = float(feature.min()), float(feature.max() - feature.min())
        heat = upsample(feature, height, width)
        ax.imshow(crop)
        ax.imshow(np.clip((heat - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(heat), cmap="jet",
                  alpha=0.5, vmin=0.0, vmax=1.0)
        ax.set_title(f"ch {channel['channel']}: gate {channel['gate']:.3f}\nmax {float(feature.max()):.2f}",
                     fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def person_image(image: Path, box: Sequence[float], scores: np.ndarray, predicted: list[str] | None,
                 top_objects: list[dict[str, Any]], classes: Sequence[str], path: Path) -> Path:
    """The paper's Fig. 10: the photo with the person's box, their top emotions, the top attended
    objects and their BOA weights (pipelines/predict.py's `annotate`), shrunk to MAX_IMAGE_SIDE."""
    from PIL import Image

    from pipelines.predict import ImagePrediction, PersonPrediction, annotate

    person = PersonPrediction(box=list(box), box_source="manifest", detection_score=None,
                              scores=np.asarray(scores), predicted=predicted, top_objects=top_objects)
    annotate(image, ImagePrediction(str(image), [person], "manifest", "objects stage"), Path(path), classes)
    with Image.open(path) as drawn:
        drawn.load()
        if max(drawn.size) > MAX_IMAGE_SIDE:
            drawn.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
            drawn.save(path)
    return Path(path)
